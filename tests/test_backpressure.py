"""Backpressure: an account cannot have more unfinished tasks than its plan
allows (429 TOO_MANY_TASKS), and a model's queue cannot grow past its cap
(503 SERVICE_UNAVAILABLE); either way with Retry-After and nothing debited,
and exactly the cap admitted however many submissions race.

The checks live in the service layer (``tasks.submit``), so every face that
submits through it gets them; the PostgreSQL races are in ``test_postgres.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from openimagine.catalog import CatalogError, load_catalog
from openimagine.errors import InsufficientCredits
from openimagine.services import accounts, lifecycle, tasks
from openimagine.services.accounts import Principal
from openimagine.settings import Settings
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import LedgerEntry, Task

from conftest import TASK_ENGINE, Server, auth, make_principal, make_settings, race_submissions

PRICE = 40


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(make_settings(tmp_path).resolved_database_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


def submit(db: Database, principal: Principal, **caps: int | None) -> str:
    return tasks.submit(
        db,
        principal,
        tasks.NewTask("a fox", "normal", "1:1", []),
        task_id=tasks.new_task_id(),
        model=TASK_ENGINE,
        engine=TASK_ENGINE,
        price=PRICE,
        **caps,
    )


def finish_one(db: Database) -> None:
    """A worker claims the oldest pending task and completes it."""
    claim = lifecycle.claim_next(db, owner="w", model=TASK_ENGINE, lease_seconds=60)
    assert claim is not None
    assert lifecycle.complete(db, claim, outputs=[], seeds=[])


def task_and_debit_counts(db: Database) -> tuple[int, int]:
    with db.read() as session:
        return (
            session.scalar(select(func.count()).select_from(Task)) or 0,
            session.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "debit")
            )
            or 0,
        )


# --- the in-flight cap ---------------------------------------------------------------------


def test_the_plan_caps_unfinished_tasks_and_a_finished_one_frees_a_place(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account(name="small", plan="free", credits=1000)
    assert [server.generate(key).status_code for _ in range(2)] == [200, 200]

    refused = server.generate(key)
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == 429 and body["error"] == "TOO_MANY_TASKS"
    assert "free plan allows 2 unfinished tasks" in body["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    # Nothing was debited and no task was made.
    info = accounts.summary(server.db, name="small")
    assert info["balance"] == 1000 - 2 * PRICE
    assert info["usage"]["tasks"]["pending"] == 2
    assert info["usage"]["credits_spent"] == 2 * PRICE

    finish_one(server.db)
    assert server.generate(key).status_code == 200
    assert server.generate(key).status_code == 429


def test_the_cap_counts_running_tasks_and_is_per_account(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False, max_in_flight="pro=2")
    first, second = server.account(plan="pro"), server.account(plan="pro")
    assert server.generate(first).status_code == 200
    # Running still counts: a claimed task is unfinished.
    assert (
        lifecycle.claim_next(server.db, owner="w", model=TASK_ENGINE, lease_seconds=60) is not None
    )
    assert server.generate(first).status_code == 200
    assert server.generate(first).status_code == 429
    # Another account of the same plan has its own places.
    assert [server.generate(second).status_code for _ in range(3)] == [200, 200, 429]
    account = server.client.get("/v1/account", headers=auth(first)).json()["data"]
    assert account["max_in_flight"] == 2


def test_no_credits_is_402_even_when_the_cap_is_also_reached(db: Database) -> None:
    principal = make_principal(db, credits=PRICE)
    submit(db, principal, max_in_flight=1)
    with pytest.raises(InsufficientCredits):
        submit(db, principal, max_in_flight=1)


def test_racing_submissions_admit_exactly_the_cap(db: Database) -> None:
    principal = make_principal(db, credits=100 * PRICE)
    outcomes = race_submissions(db, [principal], 40, max_in_flight=5)
    assert outcomes == {"ok": 5, "429": 35}
    assert task_and_debit_counts(db) == (5, 5)
    assert accounts.summary(db, account_id=principal.account_id)["balance"] == 95 * PRICE


def test_max_in_flight_is_set_per_plan_in_the_environment_form() -> None:
    settings = Settings(max_in_flight="free=1, enterprise=500")
    assert settings.max_in_flight == {"free": 1, "pro": 20, "enterprise": 500}
    assert Settings().max_in_flight == {"free": 2, "pro": 20, "enterprise": 100}
    for bad in ("gold=3", "free=0", "free"):
        with pytest.raises(ValidationError):
            Settings(max_in_flight=bad)


# --- the queue cap -------------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_and_debits_nothing(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False, max_queue=2)
    keys = [server.account(name=f"q{n}") for n in range(3)]
    assert [server.generate(key).status_code for key in keys[:2]] == [200, 200]

    refused = server.generate(keys[2])
    assert refused.status_code == 503
    body = refused.json()
    assert body["error"] == "SERVICE_UNAVAILABLE" and "2 tasks waiting" in body["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert accounts.summary(server.db, name="q2")["balance"] == 1000
    assert task_and_debit_counts(server.db) == (2, 2)

    # Running tasks are not waiting: a claim makes room.
    assert (
        lifecycle.claim_next(server.db, owner="w", model=TASK_ENGINE, lease_seconds=60) is not None
    )
    assert server.generate(keys[2]).status_code == 200


def test_each_model_of_a_models_file_has_its_own_queue_cap(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        'default = "small"\n'
        '[models.small]\nengine = "preview"\nmax_queue = 1\n'
        '[models.big]\nengine = "preview"\n'
    )
    server = start_server(run_workers=False, models_file=path)
    key = server.account()
    assert server.generate(key).status_code == 200
    assert server.generate(key).status_code == 503
    assert server.generate(key, model="big").status_code == 200
    assert server.generate(key, model="big").status_code == 200


def test_racing_submissions_fill_the_queue_exactly(db: Database) -> None:
    principals = [make_principal(db, credits=10 * PRICE) for _ in range(8)]
    outcomes = race_submissions(db, principals, 40, max_queue=6)
    assert outcomes == {"ok": 6, "503": 34}
    assert task_and_debit_counts(db) == (6, 6)


def test_max_queue_in_the_models_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models.a]\nengine = "preview"\nmax_queue = 0\n')
    with pytest.raises(CatalogError, match="max_queue"):
        load_catalog(make_settings(tmp_path, models_file=path))
    path.write_text('[models.a]\nengine = "preview"\nmax_queue = 50\n')
    catalog = load_catalog(make_settings(tmp_path, models_file=path, max_queue=7))
    assert catalog.get("a").max_queue == 50
    assert catalog.get("a").describe()["max_queue"] == 50
    assert load_catalog(make_settings(tmp_path, max_queue=7)).get("preview").max_queue == 7


def test_the_openai_face_answers_the_caps_in_its_own_error_shape(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account(plan="free")

    def create() -> httpx.Response:
        return server.client.post(
            "/v1/videos", json={"prompt": "a fox in the snow"}, headers=auth(key)
        )

    assert [create().status_code for _ in range(2)] == [200, 200]
    refused = create()
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert "free plan allows 2 unfinished tasks" in error["message"]
    assert error["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1
