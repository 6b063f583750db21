"""Job control: Idempotency-Key on both submit routes, cancel, and the task list."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import openai
import pytest
from sqlalchemy import func, select, update

from openimagine.store.models import IdempotencyKey, LedgerEntry, Task
from openimagine.timeutil import utcnow

from conftest import Server, auth

CREDITS = 1000
PRICE = 40


def balance(server: Server, key: str) -> int:
    return server.client.get("/v1/account", headers=auth(key)).json()["data"]["balance"]


def tasks_of(server: Server) -> int:
    with server.db.read() as session:
        return session.scalar(select(func.count()).select_from(Task)) or 0


def ledger_kinds(server: Server, task_id: str) -> list[str]:
    with server.db.read() as session:
        return sorted(
            session.scalars(select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id))
        )


# -- Idempotency-Key -------------------------------------------------------------


def test_eight_concurrent_submits_with_one_key_create_one_task_and_one_debit(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    headers = {**auth(key), "Idempotency-Key": "order-4711"}
    body = {"prompt": "a red fox", "ratio": "16:9"}

    def send(_: int) -> httpx.Response:
        return httpx.post(f"{server.base_url}/v1/generate", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    ok = [a for a in answers if a.status_code == 200]
    assert ok and all(a.status_code in (200, 409) for a in answers), [
        (a.status_code, a.text) for a in answers
    ]
    assert len({a.json()["data"]["task_id"] for a in ok}) == 1
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"] == "CONFLICT"  # still being handled: retry
    assert tasks_of(server) == 1 and balance(server, key) == CREDITS - PRICE

    # Retried after the first finished: the same task again, marked as a replay.
    again = send(0)
    assert again.status_code == 200
    assert again.json()["data"]["task_id"] == ok[0].json()["data"]["task_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # Exactly one answer created the task; any other 200 was a replay of it.
    assert sum("Idempotent-Replayed" not in a.headers for a in ok) == 1
    # The same fields in another order and spacing are the same request.
    reordered = httpx.post(
        f"{server.base_url}/v1/generate",
        headers={**headers, "content-type": "application/json"},
        content=b'{ "ratio": "16:9",  "prompt": "a red fox" }',
    )
    assert reordered.json()["data"]["task_id"] == ok[0].json()["data"]["task_id"]

    other = httpx.post(
        f"{server.base_url}/v1/generate", json={"prompt": "a blue fox"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert tasks_of(server) == 1 and balance(server, key) == CREDITS - PRICE


def test_a_key_is_per_account_and_a_failed_request_gives_it_back(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    poor = server.account(credits=10)
    rich = server.account(credits=CREDITS)
    headers = {"Idempotency-Key": "shared-name"}
    refused = server.client.post(
        "/v1/generate", json={"prompt": "x"}, headers={**auth(poor), **headers}
    )
    assert refused.status_code == 402
    # The other account's use of the same key is its own.
    assert (
        server.client.post(
            "/v1/generate", json={"prompt": "x"}, headers={**auth(rich), **headers}
        ).status_code
        == 200
    )
    # The refused request created nothing: with credits, the same key works.
    with server.db.write() as session:
        from openimagine.store.models import Account

        session.execute(Account.__table__.update().values(balance=CREDITS))
    retried = server.client.post(
        "/v1/generate", json={"prompt": "x"}, headers={**auth(poor), **headers}
    )
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers


def test_a_bad_key_is_refused(server: Server) -> None:
    key = server.account(credits=CREDITS)
    answer = server.client.post(
        "/v1/generate", json={"prompt": "x"}, headers={**auth(key), "Idempotency-Key": "x" * 256}
    )
    assert answer.status_code == 400 and "Idempotency-Key" in answer.json()["message"]
    assert balance(server, key) == CREDITS


def test_the_openai_face_replays_a_keyed_create(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        first = client.videos.with_raw_response.create(
            prompt="a kite", seconds="1", extra_headers={"Idempotency-Key": "kite-1"}
        )
        second = client.videos.with_raw_response.create(
            prompt="a kite", seconds="1", extra_headers={"Idempotency-Key": "kite-1"}
        )
        with pytest.raises(openai.UnprocessableEntityError):
            client.videos.create(
                prompt="a kite at night", seconds="1", extra_headers={"Idempotency-Key": "kite-1"}
            )
    assert first.parse().id == second.parse().id
    assert second.headers["idempotent-replayed"] == "true"
    assert tasks_of(server) == 1 and balance(server, key) == CREDITS - PRICE // 2


# -- cancel ----------------------------------------------------------------------


def test_cancelling_a_pending_task_refunds_it_once_and_a_second_cancel_changes_nothing(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    task_id = server.generate(key).json()["data"]["task_id"]
    cancelled = server.client.post("/v1/cancel", json={"task_id": task_id}, headers=auth(key))
    assert cancelled.status_code == 200
    data = cancelled.json()["data"]
    assert (data["status"], data["error_message"], data["consumed_credits"]) == (
        "failed",
        "Task cancelled",
        0,
    )
    assert balance(server, key) == CREDITS
    again = server.client.post("/v1/cancel", json={"task_id": task_id}, headers=auth(key))
    assert again.status_code == 200 and again.json()["data"] == data
    assert balance(server, key) == CREDITS and ledger_kinds(server, task_id) == ["debit", "refund"]


def test_cancelling_a_running_task_stops_it_and_refunds_it(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        engine="test-sleep", test_sleep_seconds=30, heartbeat_seconds=0.2, lease_seconds=5
    )
    key = server.account(credits=CREDITS)
    task_id = server.generate(key).json()["data"]["task_id"]
    server.wait(key, task_id, until=("processing",))
    answer = server.client.post("/v1/cancel", json={"task_id": task_id}, headers=auth(key))
    assert answer.json()["data"]["error_message"] == "Task cancelled"
    # The engine stops at its next step: the worker takes the next task soon after.
    following = server.generate(key).json()["data"]["task_id"]
    server.wait(key, following, until=("processing",), timeout=10)
    assert balance(server, key) == CREDITS - PRICE  # only the second task is charged
    assert ledger_kinds(server, task_id) == ["debit", "refund"]
    status = server.wait(key, task_id)
    assert (status["status"], status["error_message"]) == ("failed", "Task cancelled")


def test_a_finished_task_cannot_be_cancelled(server: Server) -> None:
    key = server.account(credits=CREDITS)
    task_id = server.generate(key).json()["data"]["task_id"]
    server.wait(key, task_id)
    answer = server.client.post("/v1/cancel", json={"task_id": task_id}, headers=auth(key))
    assert answer.status_code == 409 and answer.json()["error"] == "CONFLICT"
    assert balance(server, key) == CREDITS - PRICE
    other = server.account(credits=CREDITS)
    assert (
        server.client.post("/v1/cancel", json={"task_id": task_id}, headers=auth(other)).status_code
        == 404
    )
    assert server.client.post("/v1/cancel", json={}, headers=auth(key)).status_code == 400


def test_the_openai_face_cancels_a_queued_video(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    created = server.client.post(
        "/v1/videos", json={"prompt": "a kite", "seconds": 1}, headers=auth(key)
    ).json()
    answer = server.client.post(f"/v1/videos/{created['id']}/cancel", headers=auth(key))
    assert answer.status_code == 200
    assert answer.json()["status"] == "failed"
    assert answer.json()["error"] == {"code": "cancelled", "message": "Task cancelled"}
    assert balance(server, key) == CREDITS


# -- the task list ---------------------------------------------------------------


def test_the_task_list_pages_through_own_tasks_newest_first(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    made = [server.generate(key, prompt=f"clip {n}").json()["data"]["task_id"] for n in range(5)]
    server.generate(server.account(credits=CREDITS), prompt="someone else's")
    server.client.post("/v1/cancel", json={"task_id": made[1]}, headers=auth(key))
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = server.client.get("/v1/tasks", params=params, headers=auth(key)).json()["data"]
        seen += [task["task_id"] for task in page["tasks"]]
        if not page["has_more"]:
            assert page["next"] is None
            break
        after = page["next"]
    assert seen == made[::-1]
    failed = server.client.get("/v1/tasks", params={"status": "failed"}, headers=auth(key)).json()[
        "data"
    ]["tasks"]
    assert [task["task_id"] for task in failed] == [made[1]]
    assert failed[0]["error_message"] == "Task cancelled"
    # "\u00b2" passes str.isdigit() and fails int(): it was a 500 (make fuzz).
    for limit in (500, 0, "\u00b2", "x"):
        bad = server.client.get("/v1/tasks", params={"limit": limit}, headers=auth(key))
        assert bad.status_code == 400, limit
    assert (
        server.client.get("/v1/tasks", params={"after": "task_nope"}, headers=auth(key)).status_code
        == 404
    )


def test_keys_older_than_a_day_are_forgotten_by_the_workers(server: Server) -> None:
    key = server.account(credits=CREDITS)
    headers = {**auth(key), "Idempotency-Key": "yesterday"}
    first = server.client.post("/v1/generate", json={"prompt": "x"}, headers=headers)
    with server.db.write() as session:
        session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
    # The worker's reaper forgets it within a round; then the key is new again.
    deadline = time.monotonic() + 15
    while tasks_of_keys(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tasks_of_keys(server) == 0
    again = server.client.post("/v1/generate", json={"prompt": "x"}, headers=headers)
    assert again.json()["data"]["task_id"] != first.json()["data"]["task_id"]
    assert "Idempotent-Replayed" not in again.headers


def tasks_of_keys(server: Server) -> int:
    with server.db.read() as session:
        return session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tasks?limit=0",
        "/v1/tasks?status=nope",
        "/v1/tasks?limit=1&limit=2",
        "/v1/videos?limit=101",
        "/v1/videos?order=up",
        "/v1/webhooks/default/deliveries?limit=0",
        "/v1/webhooks/default/deliveries?after=x",
    ],
)
def test_a_lists_bad_query_is_401_without_a_key_and_400_with_one(server: Server, path: str) -> None:
    # The key (and the rate limit) come first on every call, as for bodies.
    assert server.client.get(path).status_code == 401
    key = server.account()
    assert server.client.get(path, headers=auth(key)).status_code == 400
