"""Connections. One ``Database`` per process, built from the settings.

Service code asks for ``db.write()`` when it changes rows and ``db.read()``
otherwise. On SQLite a write transaction starts with ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the database lock (``busy_timeout``) instead
of failing when a read lock cannot be upgraded; readers stay concurrent in WAL
mode. On PostgreSQL both are ordinary transactions.
"""

from __future__ import annotations

import asyncio
import threading
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeAlias, Unpack, cast

import orjson
from sqlalchemy import (
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Result,
    Select,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from openimagine.store.async_reads import AsyncReader

SQLITE_BUSY_TIMEOUT_MS = 30_000

# A fetched row: column values as attributes (a SQLAlchemy Row or a namespace).
Record: TypeAlias = Any


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


def rows_changed(result: Result[Any]) -> int:
    """Rows an UPDATE changed (``Session.execute`` types its result as a plain Result)."""
    return cast(CursorResult[Any], result).rowcount


class _DriverQuery:
    """A SELECT compiled once for a dialect with a positional paramstyle, run on
    a DB-API connection, its values converted by the columns' own types."""

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.order = tuple(compiled.positiontup or ())
        # Values the statement carries itself (a LIMIT): merged under the caller's.
        self.fixed = {
            name: compiled.binds[name].effective_value
            for name in self.order
            if not compiled.binds[name].required
        }
        columns = compiled._result_columns  # noqa: SLF001 - names and types, in order
        self.row_type: Any = namedtuple(  # type: ignore[misc] # field names known at run time
            "Row", [column.keyname for column in columns]
        )
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        # Only the columns whose values need converting (dates, JSON).
        self.conversions = [
            (index, process) for index, process in enumerate(processors) if process is not None
        ]

    def first(self, driver: Any, params: dict[str, Any]) -> Any:
        row = driver.execute(self.sql, self.values(params)).fetchone()
        return None if row is None else self.record(row)

    def all(self, driver: Any, params: dict[str, Any]) -> list[Any]:
        return [self.record(row) for row in driver.execute(self.sql, self.values(params))]

    def values(self, params: dict[str, Any]) -> tuple[Any, ...]:
        if self.fixed:
            params = {**self.fixed, **params}
        return tuple(params[name] for name in self.order)

    def record(self, row: Any) -> Any:
        values = list(row)
        for index, process in self.conversions:
            if values[index] is not None:
                values[index] = process(values[index])
        return self.row_type._make(values)


class Database:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, object] = {
            "pool_pre_ping": not self.is_sqlite,
            "pool_size": 10,
            "max_overflow": 20,
            # JSON columns are read on every status poll.
            "json_deserializer": orjson.loads,
        }
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        # SQLAlchemy's Engine (pools and dialect) is ``sql``: in openimagine an
        # "engine" is only ever what renders video.
        self.sql = create_engine(url, **kwargs)
        if self.is_sqlite:
            _prepare_sqlite(self.sql)
        self._write_sql = self.sql.execution_options(write=True)
        # One-statement reads need no transaction: on a server, autocommit
        # saves the BEGIN and ROLLBACK round trips (SQLite: see _on_begin).
        self._single_sql = self.sql.execution_options(
            single_statement=True, **({} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"})
        )
        self._local = threading.local()
        self._write_lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if self.is_sqlite else nullcontext()
        )
        self._kept: list[Any] = []
        self._generation = 0
        self._compiled: dict[Select[Any], _DriverQuery] = {}
        # Hot one-statement reads on a server (status polls) skip the pool's
        # pre-ping, which measured as half of their time (a second round
        # trip); a connection the server dropped is retried once on a fresh
        # one instead, which a read allows. A pool of its own, so that
        # sessions and writes keep pinging.
        self._hot_sql: Engine | None = None
        if not self.is_sqlite:
            self._hot_sql = create_engine(
                url, **{**kwargs, "pool_pre_ping": False}, isolation_level="AUTOCOMMIT"
            )
        # The event loop's own connections (``fetch_first_async``), per loop.
        self.async_reads = self.url.get_driver_name() == "psycopg"
        self._readers: dict[asyncio.AbstractEventLoop, AsyncReader] = {}

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.sql, expire_on_commit=False) as session, session.begin():
            yield session

    def connect(self) -> Connection:
        """A plain connection for one-statement reads on hot paths (no ORM session)."""
        return self._single_sql.connect()

    def fetch_first(
        self, statement: Select[Unpack[tuple[Any, ...]]], params: dict[str, Any]
    ) -> Record | None:
        """The first row of a one-statement read (attribute access by column
        name), as cheaply as possible: this serves every status poll.

        On SQLite the statement is compiled once and run on the driver itself,
        over one autocommit connection per thread; SQLAlchemy's per-execution
        machinery cost three times the query. Values go through the same type
        processors SQLAlchemy would apply (dates, JSON). Elsewhere, a pooled
        connection per call (an idle connection must not sit in an open
        transaction on a server), from a pool without pre-ping (below).
        """
        if self._hot_sql is not None:
            return self._on_server(statement, params, many=False)
        return self._driver_query(statement).first(self._driver(), params)

    async def fetch_first_async(
        self, statement: Select[Unpack[tuple[Any, ...]]], params: dict[str, Any]
    ) -> Record | None:
        """``fetch_first`` from the event loop without a thread (PostgreSQL with
        psycopg: ``async_reads``): see ``store/async_reads.py``."""
        return await self._reader().first(statement, params)  # type: ignore[no-any-return]

    async def fetch_all_async(
        self, statement: Select[Unpack[tuple[Any, ...]]], params: dict[str, Any]
    ) -> list[Record]:
        """``fetch_all`` from the event loop without a thread (as ``fetch_first_async``)."""
        return await self._reader().all(statement, params)

    def _reader(self) -> AsyncReader:
        loop = asyncio.get_running_loop()
        reader = self._readers.get(loop)
        if reader is None:
            reader = self._readers[loop] = AsyncReader(self.url, self.sql.dialect)
        return reader

    def fetch_all(
        self, statement: Select[Unpack[tuple[Any, ...]]], params: dict[str, Any]
    ) -> list[Record]:
        """Every row of a one-statement read, as cheaply as ``fetch_first``."""
        if self._hot_sql is not None:
            return self._on_server(statement, params, many=True)  # type: ignore[no-any-return]
        return self._driver_query(statement).all(self._driver(), params)

    def _driver_query(self, statement: Select[Any]) -> _DriverQuery:
        query = self._compiled.get(statement)
        if query is None:
            query = self._compiled[statement] = _DriverQuery(statement, self.sql.dialect)
        return query

    def _driver(self) -> Any:
        # Per thread, and renewed after ``dispose`` closed the kept ones.
        generation, driver = getattr(self._local, "driver", (-1, None))
        if generation != self._generation:
            fairy = self._single_sql.raw_connection()
            self._kept.append(fairy)
            driver = fairy.driver_connection
            self._local.driver = (self._generation, driver)
        return driver

    def _on_server(self, statement: Select[Any], params: dict[str, Any], *, many: bool) -> Any:
        assert self._hot_sql is not None
        for retry in (False, True):
            try:
                with self._hot_sql.connect() as connection:
                    result = connection.execute(statement, params)
                    return result.all() if many else result.first()
            except DBAPIError as exc:
                if retry or not exc.connection_invalidated:
                    raise
                # The server dropped it (a restart, a proxy's idle timeout):
                # SQLAlchemy has recycled the pool; once more on a new connection.
        raise AssertionError("unreachable")

    @contextmanager
    def write(self) -> Iterator[Session]:
        # SQLite has one writer at a time. Threads of this process queue on a
        # lock; left to SQLite's busy handler they would sleep in steps of up
        # to 100 ms (measured: ~100 submissions/s instead of the disk's speed).
        # Other processes still wait through busy_timeout.
        with (
            self._write_lock,
            Session(self._write_sql, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    def ping(self) -> None:
        with self.sql.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        for connection in self._kept:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing from another thread is best effort
                pass
        self._kept.clear()
        self._generation += 1
        self.sql.dispose()
        if self._hot_sql is not None:
            self._hot_sql.dispose()
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            reader.close()
