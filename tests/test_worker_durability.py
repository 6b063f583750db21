"""Workers that die, stop or run elsewhere, with real processes on a real SQLite file.

What a user relies on: a task accepted with a 200 is never lost. A server
killed mid-task (SIGKILL, OOM) finishes the task after a restart, charged
once; a task that keeps killing its worker ends ``failed`` with
``video build failed`` and its credits back, once; a graceful stop hands the
running task back without using up an attempt; ``openimagine worker`` can
run the tasks for a ``serve --no-worker`` API; and status requests answer
quickly while a clip renders.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from openimagine.store.db import Database
from openimagine.store.models import Account, LedgerEntry, Task

from conftest import Spawned, auth, free_port, openimagine_env, run_cli, wait_for_task

SECRET = "durability-secret-0123456789"
SMALL: dict[str, Any] = {
    "duration": 0.5,
    "fps": 8,
    "resolution": 64,
    "poll_seconds": 0.1,
    "secret_key": SECRET,
}
PRICE = 40
CREDITS = 400


# --- helpers ----------------------------------------------------------------------------


def create_account(data_dir: Path, name: str, credits: int = CREDITS) -> str:
    """``openimagine accounts create`` as an operator would; returns the API key."""
    result = run_cli(
        openimagine_env(data_dir),
        "accounts",
        "create",
        name,
        "--plan",
        "pro",
        "--credits",
        str(credits),
        "--json",
    )
    return json.loads(result.stdout)["api_key"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts by hand; killed at the end if still running."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def start_process(
    processes: list[subprocess.Popen], log: Path, env: dict[str, str], *args: str
) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "openimagine", *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    processes.append(process)
    return process


def submit(base_url: str, key: str, prompt: str = "a lighthouse in a storm") -> str:
    response = httpx.post(
        f"{base_url}/v1/generate", json={"prompt": prompt}, headers=auth(key), timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def task_row(db: Database, task_id: str) -> Task:
    with db.read() as session:
        task = session.get(Task, task_id)
    assert task is not None, f"task {task_id} lost"
    return task


def ledger_of(db: Database, task_id: str) -> list[str]:
    with db.read() as session:
        return sorted(
            session.scalars(select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id))
        )


def balance_of(db: Database, name: str) -> int:
    with db.read() as session:
        return session.scalar(select(Account.balance).where(Account.name == name))


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def completions_logged(logs: list[Path], task_id: str) -> int:
    return sum(log.read_text().count(f"task {task_id}: completed") for log in logs)


# --- SIGKILL mid-task -------------------------------------------------------------------


SLEEPY = {
    **SMALL,
    "engine": "test-sleep",
    "test_sleep_seconds": 4,
    "lease_seconds": 2,
    "heartbeat_seconds": 0.5,
}


def test_a_server_killed_mid_task_finishes_every_task_after_restart_charged_once(
    tmp_path: Path, spawn_server: Callable[..., Spawned], open_db: Callable[[Path], Database]
) -> None:
    data = tmp_path / "data"
    key = create_account(data, "alice")
    first = spawn_server(data, **SLEEPY)
    task_ids = [
        submit(first.base_url, key, prompt=f"a lighthouse in a storm, take {n}") for n in range(3)
    ]
    client = httpx.Client(base_url=first.base_url, timeout=30)
    wait_for_task(client, key, task_ids[0], until=("processing",), timeout=60)
    client.close()
    first.kill()
    staging = data / "files" / ".staging"
    assert list(staging.iterdir()), "the killed render left no scratch folder"

    db = open_db(data)
    killed = task_row(db, task_ids[0])
    assert (killed.status, killed.attempts) == ("processing", 1)
    for task_id in task_ids[1:]:
        assert task_row(db, task_id).status == "pending"
    assert balance_of(db, "alice") == CREDITS - 3 * PRICE  # charged on submission

    second = spawn_server(data, **SLEEPY)
    client = httpx.Client(base_url=second.base_url, timeout=30)
    try:
        for task_id in task_ids:
            data_ = wait_for_task(client, key, task_id, timeout=120)
            assert data_["status"] == "completed", data_
            assert data_["consumed_credits"] == PRICE
            assert len(data_["response"]) == 2
        video = client.get(data_["response"][0])
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    finally:
        client.close()

    for task_id in task_ids:
        row = task_row(db, task_id)
        assert row.status == "completed" and row.error_message is None
        assert ledger_of(db, task_id) == ["debit"]  # exactly one debit, no refund
        assert completions_logged([first.log, second.log], task_id) == 1
    assert task_row(db, task_ids[0]).attempts == 2  # the killed attempt counted
    assert list(staging.iterdir()) == []  # the killed render's scratch was cleaned at start
    assert balance_of(db, "alice") == CREDITS - 3 * PRICE
    with db.read() as session:
        assert len(session.scalars(select(Task.id)).all()) == 3


# --- an engine that kills its worker every time ------------------------------------------


CRASHY = {
    **SMALL,
    "engine": "test-crash",
    "max_attempts": 2,
    "lease_seconds": 1,
    "heartbeat_seconds": 0.3,
}


def test_a_task_that_keeps_killing_its_worker_fails_and_is_refunded_once(
    tmp_path: Path,
    spawn_server: Callable[..., Spawned],
    open_db: Callable[[Path], Database],
    processes: list[subprocess.Popen],
) -> None:
    data = tmp_path / "data"
    key = create_account(data, "bob")
    # Accept the task with the API alone, so that nothing runs it before it is acknowledged.
    api = spawn_server(data, "--no-worker", **CRASHY)
    task_id = submit(api.base_url, key)
    api.stop()

    db = open_db(data)
    assert balance_of(db, "bob") == CREDITS - PRICE
    restarts = 0
    deadline = time.monotonic() + 120
    while task_row(db, task_id).attempts < CRASHY["max_attempts"]:
        restarts += 1
        assert restarts <= 6 and time.monotonic() < deadline, "the worker never reached the task"
        env = openimagine_env(data, port=free_port(), **CRASHY)
        process = start_process(processes, tmp_path / f"crash-{restarts}.log", env, "serve")
        try:
            # It claims the task (once the previous lease has run out) and dies by SIGKILL.
            assert process.wait(timeout=60) == -9
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(
                f"the test-crash server did not die:\n"
                f"{(tmp_path / f'crash-{restarts}.log').read_text()}"
            ) from None
    row = task_row(db, task_id)
    assert (row.status, row.attempts, row.consumed_credits) == ("processing", 2, PRICE)
    assert ledger_of(db, task_id) == ["debit"]

    # A server of another engine never claims the task, but its reaper sees the last
    # lease run out with no attempts left.
    final = spawn_server(data, **{**CRASHY, "engine": "preview"})
    client = httpx.Client(base_url=final.base_url, timeout=30)
    try:
        status = wait_for_task(client, key, task_id, until=("failed",), timeout=60)
        assert status["error_message"] == "video build failed"
        assert status["consumed_credits"] == 0
        assert status["response"] == []
        time.sleep(1.0)  # a few more reaper rounds: still refunded once
        again = client.get("/v1/status", params={"task_id": task_id}, headers=auth(key))
        assert again.json()["data"]["status"] == "failed"
    finally:
        client.close()
    assert final.process.poll() is None
    assert ledger_of(db, task_id) == ["debit", "refund"]
    assert balance_of(db, "bob") == CREDITS
    row = task_row(db, task_id)
    assert row.attempts == 2 and row.lease_owner is None


# --- API and worker in separate processes ------------------------------------------------


def test_a_separate_worker_process_runs_the_tasks_of_a_no_worker_api(
    tmp_path: Path,
    spawn_server: Callable[..., Spawned],
    open_db: Callable[[Path], Database],
    processes: list[subprocess.Popen],
) -> None:
    data = tmp_path / "data"
    key = create_account(data, "carol")
    api = spawn_server(data, "--no-worker", **SMALL)
    task_ids = [submit(api.base_url, key, prompt=f"koi in a pond, take {n}") for n in range(2)]

    time.sleep(1.5)
    client = httpx.Client(base_url=api.base_url, timeout=30)
    try:
        for task_id in task_ids:
            response = client.get("/v1/status", params={"task_id": task_id}, headers=auth(key))
            assert response.json()["data"]["status"] == "pending"  # the API runs nothing

        worker_log = tmp_path / "worker.log"
        worker = start_process(processes, worker_log, openimagine_env(data, **SMALL), "worker")
        for task_id in task_ids:
            status = wait_for_task(client, key, task_id, timeout=90)
            assert status["status"] == "completed", status
            assert len(status["response"]) == 2
        # Files written by the worker are served by the API process.
        video = client.get(status["response"][1])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    finally:
        client.close()

    assert worker.poll() is None
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    for task_id in task_ids:
        assert completions_logged([worker_log], task_id) == 1
        assert completions_logged([api.log], task_id) == 0
    db = open_db(data)
    assert balance_of(db, "carol") == CREDITS - 2 * PRICE
    assert api.process.poll() is None


# --- graceful shutdown -------------------------------------------------------------------


def test_sigterm_hands_the_running_task_back_without_using_an_attempt(
    tmp_path: Path, spawn_server: Callable[..., Spawned], open_db: Callable[[Path], Database]
) -> None:
    data = tmp_path / "data"
    key = create_account(data, "dave")
    slow = {**SMALL, "engine": "test-sleep", "test_sleep_seconds": 60}
    first = spawn_server(data, **slow)
    task_id = submit(first.base_url, key)
    client = httpx.Client(base_url=first.base_url, timeout=30)
    wait_for_task(client, key, task_id, until=("processing",), timeout=60)
    client.close()

    started = time.monotonic()
    first.process.terminate()
    # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit too.
    assert first.process.wait(timeout=40) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 30  # it did not sit out the 60 s render
    assert "Application shutdown complete" in first.log.read_text()

    db = open_db(data)
    row = task_row(db, task_id)
    assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at) == (
        "pending",
        0,
        None,
        None,
    )
    assert ledger_of(db, task_id) == ["debit"]
    assert f"task {task_id}: released" in first.log.read_text()

    second = spawn_server(data, **{**slow, "test_sleep_seconds": 0.5})
    client = httpx.Client(base_url=second.base_url, timeout=30)
    try:
        status = wait_for_task(client, key, task_id, timeout=90)
    finally:
        client.close()
    assert status["status"] == "completed" and status["consumed_credits"] == PRICE
    assert task_row(db, task_id).attempts == 1
    assert ledger_of(db, task_id) == ["debit"]
    assert balance_of(db, "dave") == CREDITS - PRICE


# --- the API stays responsive while a clip renders ---------------------------------------


def test_status_requests_answer_quickly_while_a_clip_renders(
    tmp_path: Path, spawn_server: Callable[..., Spawned]
) -> None:
    data = tmp_path / "data"
    key = create_account(data, "erin")
    # Long enough that even a fast machine is still rendering after 20 polls.
    heavy = {
        "duration": 20,
        "fps": 24,
        "resolution": 480,
        "poll_seconds": 0.1,
        "secret_key": SECRET,
    }
    server = spawn_server(data, **heavy)
    client = httpx.Client(base_url=server.base_url, timeout=30)
    try:
        task_id = submit(server.base_url, key, prompt="a city skyline at dusk, slow pan")
        wait_for_task(client, key, task_id, until=("processing", "completed"), timeout=60)
        # Time 20 status requests made while the worker renders (in the same process).
        timings: list[float] = []
        while len(timings) < 20:
            started = time.perf_counter()
            response = client.get("/v1/status", params={"task_id": task_id}, headers=auth(key))
            elapsed = time.perf_counter() - started
            assert response.status_code == 200
            state = response.json()["data"]["status"]
            if state != "processing":
                break
            timings.append(elapsed)
            time.sleep(0.02)
        final = wait_for_task(client, key, task_id, timeout=180)
    finally:
        client.close()
    assert len(timings) == 20, f"the render ended after {len(timings)} requests ({state})"
    assert max(timings) < 1.0, [round(t, 3) for t in timings]
    assert final["status"] == "completed"
    outcomes = re.findall(r"task \S+: (\w+)", server.log.read_text())
    assert outcomes == ["completed"]  # one run, no lease lost on the way
