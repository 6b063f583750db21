"""Connections. One ``Database`` per process, built from the settings.

Service code asks for ``db.write()`` when it changes rows and ``db.read()``
otherwise. On SQLite a write transaction starts with ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the database lock (``busy_timeout``) instead
of failing when a read lock cannot be upgraded; readers stay concurrent in WAL
mode. On PostgreSQL both are ordinary transactions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Executable, Row, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _prepare_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own
        # implicit transactions cannot be made IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        options = connection.get_execution_options()
        if options.get("write", False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get("single_statement", False):
            connection.exec_driver_sql("BEGIN")
        # A single-statement read runs in SQLite's autocommit mode: one
        # statement is its own consistent snapshot, and BEGIN/COMMIT would
        # double the round trips on the hottest path.


class Database:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, object] = {"pool_pre_ping": not self.is_sqlite,
                                     "pool_size": 10, "max_overflow": 20}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _prepare_sqlite(self.engine)
        self._write_engine = self.engine.execution_options(write=True)
        self._single_engine = self.engine.execution_options(single_statement=True)
        self._local = threading.local()
        self._write_lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if self.is_sqlite else nullcontext()
        )
        self._kept: list[Connection] = []

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def connect(self) -> Connection:
        """A plain connection for one-statement reads on hot paths (no ORM session)."""
        return self._single_engine.connect()

    def fetch_first(self, statement: Executable, params: dict[str, Any]) -> Row | None:
        """The first row of a one-statement read, as cheaply as SQLAlchemy allows.

        On SQLite each thread keeps one connection open in autocommit mode:
        checking a connection out of the pool and back cost as much as the
        query. Elsewhere a pooled connection per call (an idle connection
        must not sit in an open transaction on a server).
        """
        if not self.is_sqlite:
            with self.connect() as connection:
                return connection.execute(statement, params).first()
        connection = getattr(self._local, "connection", None)
        if connection is None or connection.closed:
            connection = self._local.connection = self.connect()
            self._kept.append(connection)
        try:
            return connection.execute(statement, params).first()
        finally:
            connection.rollback()  # no BEGIN was sent: this only resets SQLAlchemy's state

    @contextmanager
    def write(self) -> Iterator[Session]:
        # SQLite has one writer at a time. Threads of this process queue on a
        # lock; left to SQLite's busy handler they would sleep in steps of up
        # to 100 ms (measured: ~100 submissions/s instead of the disk's speed).
        # Other processes still wait through busy_timeout.
        with self._write_lock, Session(self._write_engine, expire_on_commit=False) as session, \
                session.begin():
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        for connection in self._kept:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing from another thread is best effort
                pass
        self._kept.clear()
        self.engine.dispose()
