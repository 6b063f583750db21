"""Connections. One ``Database`` per process, built from the settings.

Service code asks for ``db.write()`` when it changes rows and ``db.read()``
otherwise. On SQLite a write transaction starts with ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the database lock (``busy_timeout``) instead
of failing when a read lock cannot be upgraded; readers stay concurrent in WAL
mode. On PostgreSQL both are ordinary transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
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

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def connect(self) -> Connection:
        """A plain connection for one-statement reads on hot paths (no ORM session)."""
        return self._single_engine.connect()

    @contextmanager
    def write(self) -> Iterator[Session]:
        with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
