"""Scratch resources on real services, free of pytest: a PostgreSQL database
and a RabbitMQ virtual host of their own, removed afterwards.

The scale-out tests (``scaleout.py``, which turns ``Unavailable`` into a skip,
or a failure in CI) and ``bench/scale_bench.py`` both use them, so that runs
on one machine never share a database or a queue.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


class Unavailable(Exception):
    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service} is not available: {reason}")
        self.service = service
        self.reason = reason


@contextmanager
def postgres_database(admin_url: str, prefix: str = "oi_test") -> Iterator[str]:
    """A new, empty database (created through ``admin_url``); its URL. Dropped
    afterwards, open connections too."""
    admin = make_url(admin_url)
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL here
        engine.dispose()
        raise Unavailable(
            "PostgreSQL", f"{admin.render_as_string(hide_password=True)}: {exc}"
        ) from exc
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbitmq_vhost(amqp_url: str, prefix: str = "oi_test") -> Iterator[str]:
    """An AMQP URL on a virtual host of its own (made with ``rabbitmqctl``),
    deleted afterwards. Queues are named per engine, so two runs on one broker
    would otherwise consume each other's messages. Without ``rabbitmqctl`` (a
    remote broker) the URL as given."""
    parts = urlsplit(amqp_url)
    address = (parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        raise Unavailable("RabbitMQ", f"{address[0]}:{address[1]}: {exc}") from exc
    if shutil.which("rabbitmqctl") is None:
        yield amqp_url
        return
    vhost = f"{prefix}_{secrets.token_hex(6)}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
    except (subprocess.SubprocessError, OSError) as exc:
        raise Unavailable(
            "RabbitMQ", f"cannot create a virtual host with rabbitmqctl: {exc}"
        ) from exc
    try:
        yield f"{amqp_url.rstrip('/')}/{vhost}"
    finally:
        try:
            _rabbitmqctl("delete_vhost", vhost)
        except (subprocess.SubprocessError, OSError):
            pass
