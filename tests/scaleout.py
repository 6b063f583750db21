"""Real services for the scale-out tests: PostgreSQL, Redis, RabbitMQ, an S3 server.

Each run gets its own PostgreSQL database (``oi_test_<random>``, created via
the ``test`` database and dropped after), its own RabbitMQ virtual host and
its own Redis key prefix, so that runs on one machine do not interfere.

A service that does not answer makes its tests skip with the reason, except
in CI (``CI=true``), where they fail: CI must not pass by skipping them.
Addresses come from the environment when set:
``OPENIMAGINE_TEST_POSTGRES_URL`` (default postgres@127.0.0.1:5432/test),
``OPENIMAGINE_TEST_REDIS_URL`` and ``OPENIMAGINE_TEST_AMQP_URL``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

import scratch

POSTGRES_ADMIN_URL = os.environ.get(
    "OPENIMAGINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("OPENIMAGINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("OPENIMAGINE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(service: str, reason: str) -> NoReturn:
    """Skip (fail in CI) because ``service`` cannot be used."""
    message = f"{service} is not available: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: scale-out tests must run, not skip)")
    pytest.skip(message)


# --- PostgreSQL -------------------------------------------------------------------------


@contextmanager
def _needed(resource: AbstractContextManager[str]) -> Iterator[str]:
    """``resource`` from ``scratch``; a service that is not there skips (fails in CI)."""
    with ExitStack() as stack:
        try:
            value = stack.enter_context(resource)
        except scratch.Unavailable as exc:
            unavailable(exc.service, exc.reason)
        yield value


def fresh_postgres_database() -> AbstractContextManager[str]:
    """A new, empty database for this run; its URL. Dropped afterwards (connections too)."""
    return _needed(scratch.postgres_database(POSTGRES_ADMIN_URL))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test."""
    with fresh_postgres_database() as url:
        yield url


# --- Redis --------------------------------------------------------------------------------


def require_redis() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        unavailable("Redis", f"{REDIS_URL}: {exc}")
    return REDIS_URL


def redis_prefix() -> str:
    """A key prefix of its own, so that account ids of this run meet no old counters."""
    return f"oi_test_{secrets.token_hex(6)}"


# --- RabbitMQ -----------------------------------------------------------------------------


def rabbitmq_vhost() -> AbstractContextManager[str]:
    """An AMQP URL on a virtual host of its own, dropped afterwards."""
    return _needed(scratch.rabbitmq_vhost(AMQP_URL))


# --- S3 (moto's standalone server) --------------------------------------------------------


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """A real S3-speaking HTTP server in a subprocess; its endpoint URL."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto", "install moto[server] (pip install -e '.[test]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{log.read_text()}")
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
