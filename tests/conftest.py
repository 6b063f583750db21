"""Shared fixtures: real settings, a real SQLite file, a real HTTP server.

``server`` runs uvicorn in a thread of the test process (real sockets, real
HTTP); ``spawn_server`` runs ``python -m openimagine serve`` as a subprocess
for tests that kill or restart it.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image
from sqlalchemy import select, update

from openimagine.api.app import create_app
from openimagine.errors import ServiceUnavailable, TooManyTasks
from openimagine.services import accounts, tasks
from openimagine.services.accounts import Principal
from openimagine.settings import Settings
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import Account, Task
from openimagine.timeutil import utcnow

# Small, fast clips unless a test asks for more.
FAST = {"duration": 0.5, "fps": 8, "resolution": 64, "poll_seconds": 0.05}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "secret_key": "test-secret-key-0123456789",
        **FAST,
    }
    values.update(overrides)
    return Settings(**values)


def make_account(
    db: Database, *, name: str | None = None, plan: str = "pro", credits: int = 1000
) -> str:
    """A new account; returns its API key."""
    _, key = accounts.create_account(
        db, name or f"acct-{os.urandom(4).hex()}", plan=plan, credits=credits
    )
    return key


def make_principal(db: Database, credits: int = 1000) -> Principal:
    """A new account (made as the CLI and API make them), as the API sees its caller."""
    name = f"acct-{os.urandom(4).hex()}"
    make_account(db, name=name, credits=credits)
    with db.read() as session:
        row = session.execute(select(Account.id, Account.plan).where(Account.name == name)).one()
    return Principal(account_id=row.id, plan=row.plan)


# What ``submit_task`` submits unless told otherwise.
TASK_ENGINE = "preview"
TASK_PRICE = 40


def submit_task(
    db: Database,
    principal: Principal,
    prompt: str = "a red fox in the snow",
    *,
    engine: str = TASK_ENGINE,
    price: int = TASK_PRICE,
) -> str:
    """A task submitted through the service layer (debit and row in one transaction)."""
    return tasks.submit(
        db,
        principal,
        tasks.NewTask(prompt, "normal", "1:1", []),
        task_id=tasks.new_task_id(),
        model=engine,
        engine=engine,
        price=price,
    )


def race_submissions(
    db: Database, principals: list[Principal], attempts: int, **caps: int | None
) -> Counter[str]:
    """``attempts`` submissions of ``submit_task``'s kind from 16 threads at once (the
    first 16 released together), round the ``principals``; outcomes by kind: "ok",
    "429" (the account's in-flight cap), "503" (the model's queue cap)."""
    barrier = threading.Barrier(16)

    def attempt(n: int) -> str:
        if n < 16:
            barrier.wait()
        try:
            tasks.submit(
                db,
                principals[n % len(principals)],
                tasks.NewTask(f"race {n}", "normal", "1:1", []),
                task_id=tasks.new_task_id(),
                model=TASK_ENGINE,
                engine=TASK_ENGINE,
                price=TASK_PRICE,
                **caps,
            )
            return "ok"
        except TooManyTasks:
            return "429"
        except ServiceUnavailable:
            return "503"

    with ThreadPoolExecutor(16) as pool:
        return Counter(pool.map(attempt, range(attempts)))


def expire_lease(db: Database, task_id: str) -> None:
    """Make the lease run out now (as if the worker stopped heartbeating long ago)."""
    with db.write() as session:
        session.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=5))
        )


def png_data_uri(width: int = 8, height: int = 8) -> str:
    """A small real PNG as a data URI (an input image)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_task(
    client: httpx.Client,
    key: str,
    task_id: str,
    *,
    until: tuple[str, ...] = ("completed", "failed"),
    timeout: float = 60.0,
) -> dict:
    """Poll ``/v1/status`` until the task reaches one of ``until``; returns ``data``."""
    deadline = time.monotonic() + timeout
    data: dict = {}
    while time.monotonic() < deadline:
        response = client.get("/v1/status", params={"task_id": task_id}, headers=auth(key))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        if data["status"] in until:
            return data
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still {data.get('status')} after {timeout}s")


@dataclass
class Server:
    base_url: str
    settings: Settings
    db: Database
    client: httpx.Client
    stop: Callable[[], None] = field(repr=False)

    def account(self, **kwargs: Any) -> str:
        return make_account(self.db, **kwargs)

    def generate(self, key: str, **body: Any) -> httpx.Response:
        body.setdefault("prompt", "a beautiful landscape with mountains")
        return self.client.post("/v1/generate", json=body, headers=auth(key))

    def wait(self, key: str, task_id: str, **kwargs: Any) -> dict:
        return wait_for_task(self.client, key, task_id, **kwargs)

    def status(self, key: str, task_id: str) -> dict:
        """``GET /v1/status``'s data (the answer must be 200)."""
        response = self.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key))
        assert response.status_code == 200, response.text
        return response.json()["data"]


def _serve_in_thread(
    settings: Settings, run_workers: bool | None
) -> tuple[str, Callable[[], None]]:
    app = create_app(settings, run_workers=run_workers)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return f"http://127.0.0.1:{settings.port}", stop


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For tiny-model tests: tiny tensors gain nothing from threads, and OpenMP
    threads spin badly on a busy machine (one clip measured 1 s vs 11 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def launch_server(settings: Settings, run_workers: bool | None = None) -> Server:
    """Migrate, then serve ``settings`` in a thread; ``Server.stop()`` ends it."""
    db = Database(settings.resolved_database_url)
    migrate.upgrade(db)
    base_url, stop_server = _serve_in_thread(settings, run_workers)
    client = httpx.Client(base_url=base_url, timeout=30)

    def stop() -> None:
        client.close()
        stop_server()
        db.dispose()

    return Server(base_url, settings, db, client, stop)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``start_server(**settings_overrides, run_workers=None)`` → a running ``Server``."""
    stops: list[Callable[[], None]] = []

    def start(run_workers: bool | None = None, **overrides: Any) -> Server:
        server = launch_server(make_settings(tmp_path, port=free_port(), **overrides), run_workers)
        stops.append(server.stop)
        return server

    yield start
    for stop in reversed(stops):
        stop()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    """A running server with the preview engine and one in-process worker."""
    return start_server()


@pytest.fixture
def open_db() -> Iterator[Callable[[Path], Database]]:
    """Factory: the SQLite database of a data folder (of a server run as a subprocess)."""
    opened: list[Database] = []

    def open_(data_dir: Path) -> Database:
        db = Database(f"sqlite:///{(data_dir / 'openimagine.db').resolve()}")
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.dispose()


@dataclass
class Spawned:
    process: subprocess.Popen
    base_url: str
    env: dict[str, str]
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def openimagine_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGINE_")}
    env["OPENIMAGINE_DATA_DIR"] = str(data_dir)
    for name, value in settings.items():
        env[f"OPENIMAGINE_{name.upper()}"] = str(value)
    return env


def run_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m openimagine ARGS`` as a real subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "openimagine", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"openimagine {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    """Factory: start ``openimagine serve`` as a subprocess with settings as env vars."""
    spawned: list[Spawned] = []

    def spawn(data_dir: Path | None = None, *args: str, **settings: Any) -> Spawned:
        port = settings.pop("port", None) or free_port()
        env = openimagine_env(data_dir or tmp_path / "data", port=port, **settings)
        log = tmp_path / f"serve-{port}-{len(spawned)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "openimagine", "serve", *args],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        result = Spawned(process, base_url, env, log)
        spawned.append(result)
        return result

    yield spawn
    for item in spawned:
        item.stop()
