"""GET /metrics (Prometheus), X-Request-Id and the JSON access log (``api/observe.py``,
``services/metrics.py``), on real servers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from openimagine.api.app import create_app
from openimagine.api.observe import Accounting
from openimagine.services import accounts, lifecycle
from openimagine.services.metrics import FinishedTotals
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import Task
from openimagine.timeutil import utcnow

from conftest import (
    TASK_PRICE,
    Server,
    Spawned,
    auth,
    make_principal,
    make_settings,
    submit_task,
)
from scaleout import pg_url  # noqa: F401 - fixture (the PostgreSQL case)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str, **headers: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.preview]\nengine = "preview"\nprice = 40\n'
        '[models.broken]\nengine = "test-fail"\nprice = 10\n'
    )
    return path


def test_metrics_count_tasks_credits_webhooks_and_requests(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(
        models_file=models_file(tmp_path), allow_private_urls=True, webhook_retry_schedule="0"
    )
    key = server.account(credits=1000)
    done = [server.generate(key, model="preview").json()["data"]["task_id"] for _ in range(2)]
    # Its one webhook try goes to a closed port: a failed delivery.
    broken = server.generate(key, model="broken", callback_url="http://127.0.0.1:9/hook").json()[
        "data"
    ]["task_id"]
    for task_id in done:
        assert server.wait(key, task_id)["status"] == "completed"
    assert server.wait(key, broken)["status"] == "failed"
    # A model no worker serves (not in the models file): its task waits.
    principal = accounts.authenticate(server.db, key)
    assert principal is not None
    submit_task(server.db, principal, engine="nobody", price=5)

    deadline = time.monotonic() + 30
    while True:
        before = scrape(server.base_url)
        if value(before, "openimagine_webhook_deliveries_total", outcome="failed") == 1:
            break
        assert time.monotonic() < deadline, "the webhook delivery never failed"
        time.sleep(0.2)

    finished = "openimagine_tasks_finished_total"
    assert value(before, finished, model="preview", status="completed") == 2
    assert value(before, finished, model="broken", status="failed") == 1
    assert value(before, finished, model="preview", status="failed") == 0
    engine = "openimagine_task_engine_seconds"
    assert value(before, f"{engine}_count", model="preview", status="completed") == 2
    assert value(before, f"{engine}_sum", model="preview", status="completed") > 0
    assert value(before, f"{engine}_bucket", model="preview", status="completed", le="+Inf") == 2
    assert value(before, "openimagine_queue_depth", model="nobody") == 1
    assert value(before, "openimagine_queue_depth", model="preview") == 0
    assert ("openimagine_queue_depth", (("model", "broken"),)) in before  # 0, not absent
    assert value(before, "openimagine_queue_oldest_age_seconds", model="nobody") > 0
    assert value(before, "openimagine_queue_oldest_age_seconds", model="preview") == 0
    assert value(before, "openimagine_tasks_running", model="preview") == 0
    debited, refunded = "openimagine_credits_debited_total", "openimagine_credits_refunded_total"
    assert value(before, debited, model="preview") == 2 * 40
    assert value(before, debited, model="broken") == 10
    assert value(before, debited, model="nobody") == 5  # charged, still waiting
    assert value(before, refunded, model="broken") == 10
    assert value(before, refunded, model="preview") == 0
    assert value(before, "openimagine_webhook_deliveries_total", outcome="delivered") == 0
    assert value(before, "openimagine_webhook_deliveries_pending") == 0
    assert value(before, "openimagine_database_up") == 1

    # Requests by route template, both through the fast path and FastAPI's stack.
    client = server.client
    for _ in range(3):
        assert (
            client.get("/v1/status", params={"task_id": done[0]}, headers=auth(key)).status_code
            == 200
        )
    assert (
        client.get("/v1/status", params={"task_id": "task_nope"}, headers=auth(key)).status_code
        == 404
    )
    assert client.get(f"/v1/videos/{done[1]}", headers=auth(key)).status_code == 200
    assert client.get(f"/v1/videos/{done[1]}/content", headers=auth(key)).status_code == 200
    assert client.get("/v1/tasks", headers=auth("oi_wrong")).status_code == 401
    assert client.get(f"/nothing/{done[0]}").status_code == 404
    assert client.request("PROPFIND", "/v1/status").status_code == 405
    after = scrape(server.base_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "openimagine_http_requests_total"
    assert delta(requests, method="GET", route="/v1/status", status="200") == 3
    assert delta(requests, method="GET", route="/v1/status", status="404") == 1
    assert delta(requests, method="GET", route="/v1/videos/{video_id}", status="200") == 1
    assert delta(requests, method="GET", route="/v1/videos/{video_id}/content", status="200") == 1
    assert delta(requests, method="GET", route="/v1/tasks", status="401") == 1
    assert delta(requests, method="GET", route="unmatched", status="404") == 1
    assert delta(requests, method="other", route="/v1/status", status="405") == 1  # any token
    assert delta(requests, method="GET", route="/metrics", status="200") == 1  # ``before``
    latency = "openimagine_http_request_duration_seconds"
    assert delta(f"{latency}_count", method="GET", route="/v1/status") == 4
    assert delta(f"{latency}_bucket", method="GET", route="/v1/status", le="+Inf") == 4
    assert delta(f"{latency}_sum", method="GET", route="/v1/status") > 0
    # Route templates only: no task id (nor any raw path) in a label.
    labels = {label for _, pairs in after for _, label in pairs}
    assert not [label for label in labels if "task_" in label or "nothing" in label]


def _finish(db: Database, task_id: str, *, ok: bool) -> None:
    claim = lifecycle.claim_next(
        db, owner="test", model="preview", lease_seconds=60, task_id=task_id
    )
    assert claim is not None
    if ok:
        lifecycle.complete(db, claim, outputs=[], seeds=[])
    else:
        lifecycle.fail(db, claim, message="Generation failed", detail="test")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_finished_totals_read_incrementally_equal_a_full_read(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    db = Database(
        make_settings(tmp_path).resolved_database_url
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    migrate.upgrade(db)
    principal = make_principal(db, credits=100_000)

    def aged(task_id: str, hours: float) -> str:
        with db.write() as session:
            session.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(created_at=utcnow() - timedelta(hours=hours))
            )
        return task_id

    def same(one: dict, other: dict) -> bool:  # the sums, up to their order of addition
        return one.keys() == other.keys() and all(
            one[key] == pytest.approx(other[key]) for key in one
        )

    def totals(incremental: FinishedTotals, now: datetime) -> tuple[dict, dict]:
        with db.read() as session:
            return (incremental.read(session, db, now), FinishedTotals().read(session, db, now))

    try:
        old_done = [aged(submit_task(db, principal), 3) for _ in range(3)]
        old_waiting = aged(submit_task(db, principal), 2)
        for task_id in old_done:
            _finish(db, task_id, ok=task_id != old_done[0])
        _finish(db, submit_task(db, principal), ok=True)  # recent
        incremental = FinishedTotals()
        now = utcnow()
        first, full = totals(incremental, now)
        assert same(first, full)
        assert first[("preview", "completed")][0] == 3 and first[("preview", "failed")][0] == 1
        assert incremental.waiting == {old_waiting}
        # The old task ends, more arrive and end, the horizon moves past the recent ones.
        _finish(db, old_waiting, ok=False)
        for n in range(2):
            _finish(db, submit_task(db, principal), ok=n == 0)
        later, full = totals(incremental, now + timedelta(hours=1))
        assert same(later, full)
        assert later[("preview", "completed")][0] == 4 and later[("preview", "failed")][0] == 3
        assert later[("preview", "failed")][4] == 3 * TASK_PRICE  # refunded
        assert incremental.waiting == set()
        again, full = totals(incremental, now + timedelta(hours=1))
        assert same(again, later) and same(again, full)
    finally:
        db.dispose()


def test_metrics_answer_loopback_only_without_a_token(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), run_workers=False)

    async def get(client_host: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 50000))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/metrics")

    try:
        assert asyncio.run(get("127.0.0.1")).status_code == 200
        assert asyncio.run(get("::1")).status_code == 200
        refused = asyncio.run(get("203.0.113.9"))
    finally:
        app.state.ctx.executor.shutdown(wait=False)
        app.state.ctx.db.dispose()
    assert refused.status_code == 403
    assert refused.json() == {
        "code": 403,
        "error": "FORBIDDEN",
        "message": (
            "Forbidden: /metrics answers loopback clients only, unless "
            "OPENIMAGINE_METRICS_TOKEN is set"
        ),
    }


def test_metrics_with_a_token_want_it_from_everyone(start_server: Callable[..., Server]) -> None:
    server = start_server(metrics_token="scrape-me-0123")
    for headers in ({}, auth("wrong"), {"Authorization": "Basic scrape-me-0123"}):
        refused = server.client.get("/metrics", headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error"] == "FORBIDDEN"
    assert value(scrape(server.base_url, **auth("scrape-me-0123")), "openimagine_database_up") == 1
    # Outside the API's document.
    assert "/metrics" not in server.client.get("/openapi.json").json()["paths"]


def _access_lines(spawned: Spawned) -> list[dict]:
    return [
        json.loads(line) for line in spawned.log.read_text().splitlines() if line.startswith("{")
    ]


def test_request_ids_and_one_json_access_line_per_request(
    spawn_server: Callable[..., Spawned],
) -> None:
    spawned = spawn_server(forwarded_allow_ips="127.0.0.1")
    key = re.search(r"\boi_[A-Za-z0-9_-]{20,}", spawned.log.read_text())
    assert key is not None, spawned.log.read_text()
    with httpx.Client(base_url=spawned.base_url, timeout=30) as client:
        task_id = client.post(
            "/v1/generate", headers=auth(key.group()), json={"prompt": "a lighthouse"}
        ).json()["data"]["task_id"]
        # The fast path keeps a sane id the client sent.
        polled = client.get(
            "/v1/status",
            params={"task_id": task_id},
            headers={**auth(key.group()), "X-Request-Id": "poll-1.a_b"},
        )
        assert polled.status_code == 200
        assert polled.headers["x-request-id"] == "poll-1.a_b"
        # FastAPI's stack makes one when the client sent none or a bad one.
        made = client.get("/v1/account", headers=auth(key.group()))
        assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
        for bad in ("has space", "x" * 129, "caf\u00e9"):
            answer = client.get("/v1/models", headers={"X-Request-Id": bad.encode()})
            assert answer.status_code == 401
            assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"]), bad
        refused = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert refused.status_code == 403 and refused.json()["error"] == "FORBIDDEN"
        assert client.get("/metrics").status_code == 200
    deadline = time.monotonic() + 10
    while len(_access_lines(spawned)) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = {line["request_id"]: line for line in _access_lines(spawned)}
    poll = lines["poll-1.a_b"]
    assert poll["method"] == "GET" and poll["route"] == "/v1/status"
    assert poll["path"] == "/v1/status" and poll["status"] == 200
    assert poll["client"] == "127.0.0.1" and 0 < poll["duration_ms"] < 10_000
    assert poll["time"].endswith("Z")
    account = lines[made.headers["x-request-id"]]
    assert (account["route"], account["status"]) == ("/v1/account", 200)
    forwarded = lines[refused.headers["x-request-id"]]
    assert (forwarded["route"], forwarded["status"]) == ("/metrics", 403)
    assert forwarded["client"] == "203.0.113.9"
    # uvicorn's own access line would repeat each request: it is off.
    assert 'HTTP/1.1"' not in spawned.log.read_text()


def test_the_access_log_can_be_turned_off(spawn_server: Callable[..., Spawned]) -> None:
    spawned = spawn_server(access_log="false")
    answer = httpx.get(f"{spawned.base_url}/v1/models")
    assert answer.status_code == 401 and answer.headers["x-request-id"]
    time.sleep(3 * Accounting.FLUSH_SECONDS)
    assert not _access_lines(spawned)
    assert 'HTTP/1.1"' not in spawned.log.read_text()


def test_several_processes_sum_their_http_series(
    spawn_server: Callable[..., Spawned], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    first = spawn_server(tmp_path / "data", "--no-worker")
    second = spawn_server(tmp_path / "data", "--no-worker")
    for spawned, count in ((first, 3), (second, 2)):
        for _ in range(count):
            assert httpx.get(f"{spawned.base_url}/v1/models").status_code == 401
    for spawned in (first, second):
        samples = scrape(spawned.base_url)
        assert (
            value(
                samples,
                "openimagine_http_requests_total",
                method="GET",
                route="/v1/models",
                status="401",
            )
            == 5
        )
        assert (
            value(
                samples,
                "openimagine_http_request_duration_seconds_count",
                method="GET",
                route="/v1/models",
            )
            == 5
        )
