"""The fast path (``api/fastpath.py``) answers exactly as FastAPI's router does.

The same requests go to two apps on one database: one as built (status polls
answered from the ASGI entry point), one with its fast path emptied (everything
through FastAPI's middleware stack and router). Each app has its own rate
limiter and sees the same sequence, and the clock is frozen, so the answers must
be equal byte for byte: status, headers (but the per-request id) and body.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from openimagine.api import fastpath
from openimagine.api.app import OpenImagineAPI, create_app
from openimagine.api.fastpath import FastPath
from openimagine.services import accounts, lifecycle
from openimagine.store import migrate
from openimagine.store.db import Database

from conftest import auth, make_account, make_settings, submit_task

# Headers that differ per request by design.
PER_REQUEST = {b"x-request-id", b"date"}


def _finish(db: Database, task_id: str, *, ok: bool) -> None:
    claim = lifecycle.claim_next(
        db, owner="test", model="preview", lease_seconds=60, task_id=task_id
    )
    assert claim is not None
    if ok:
        lifecycle.complete(db, claim, outputs=[f"outputs/{task_id}_0.mp4"], seeds=[7])
    else:
        lifecycle.fail(db, claim, message="Generation failed", detail="test")


def _requests(key: str, other_key: str, tasks: dict[str, str]) -> list[tuple[str, str, dict]]:
    """(method, path with query, headers) of every case, both faces."""
    good, bad, missing = auth(key), auth("oi_not_a_key"), {}
    cases: list[tuple[str, str, dict]] = []
    ids = [*tasks.values(), "task_unknown", " " + tasks["completed"] + " ", "t\u00e9", ""]
    for task_id in ids:
        query = f"task_id={quote(task_id)}"
        for method in ("GET", "HEAD"):
            cases.append((method, f"/v1/status?{query}", good))
        cases.append(("GET", f"/v1/status?{query}&extra=1", good))
        if task_id:
            cases.append(("GET", f"/v1/videos/{quote(task_id)}", good))
            cases.append(("HEAD", f"/v1/videos/{quote(task_id)}", good))
            cases.append(("GET", f"/v1/videos/{quote(task_id)}?variant=x", good))
    completed = tasks["completed"]
    cases += [
        ("GET", "/v1/status", good),  # no task_id
        ("GET", "/v1/status?task_id=", good),
        ("GET", "/v1/status?task_id=%00", good),
        ("GET", "/v1/status?other=1", good),
        ("GET", f"/v1/status?task_id={completed}&task_id=task_unknown", good),
        ("GET", f"/v1/status?task_id=task_unknown&task_id={completed}", good),
        ("GET", f"/v1/status?task_id={completed}", bad),
        ("GET", f"/v1/status?task_id={completed}", missing),
        ("GET", f"/v1/status?task_id={completed}", {"Authorization": "Basic abc"}),
        ("GET", f"/v1/status?task_id={completed}", auth(other_key)),  # another account's
        ("GET", "/v1/status", bad),
        ("HEAD", f"/v1/status?task_id={completed}", missing),
        ("GET", f"/v1/videos/{completed}", bad),
        ("GET", f"/v1/videos/{completed}", missing),
        ("GET", f"/v1/videos/{completed}", auth(other_key)),
        ("HEAD", f"/v1/videos/{completed}", bad),
        ("GET", "/v1/videos/%20", good),
        ("GET", "/v1/videos/task%00x", good),
    ]
    return cases


async def _answer(app: OpenImagineAPI, method: str, url: str, headers: dict) -> tuple:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.request(method, url, headers=headers)
    kept = [
        (name, value) for name, value in response.headers.raw if name.lower() not in PER_REQUEST
    ]
    return response.status_code, kept, response.content


def test_the_fast_path_answers_as_the_router_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    db = Database(settings.resolved_database_url)
    migrate.upgrade(db)
    key, other_key = make_account(db), make_account(db)
    principal, other = accounts.authenticate(db, key), accounts.authenticate(db, other_key)
    assert principal is not None and other is not None
    tasks = {name: submit_task(db, principal) for name in ("pending", "completed", "failed")}
    tasks["others"] = submit_task(db, other)
    _finish(db, tasks["completed"], ok=True)
    _finish(db, tasks["failed"], ok=False)

    fast = create_app(settings, run_workers=False)
    routed = create_app(settings, run_workers=False)
    routed.fast_path = FastPath()  # nothing below the stack: FastAPI answers everything
    answered_fast = 0
    answer = fastpath.answer

    async def counting(*args: object) -> None:
        nonlocal answered_fast
        answered_fast += 1
        await answer(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fastpath, "answer", counting)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)  # rate-limit resets, URL expiries
    cases = _requests(key, other_key, tasks)

    async def run_all() -> list[tuple[str, tuple, tuple]]:
        return [
            (
                f"{method} {url} {headers}",
                await _answer(fast, method, url, headers),
                await _answer(routed, method, url, headers),
            )
            for method, url, headers in cases
        ]

    try:
        results = asyncio.run(run_all())
    finally:
        for app in (fast, routed):
            app.state.ctx.executor.shutdown(wait=False)
            app.state.ctx.db.dispose()
        db.dispose()
    assert answered_fast == len(cases)  # every case took the fast path on ``fast``
    statuses = set()
    for case, via_fast, via_router in results:
        assert via_fast == via_router, case
        statuses.add(via_fast[0])
    # The cases cover answers, not-found, bad request and both kinds of 401.
    assert {200, 400, 401, 404} <= statuses
