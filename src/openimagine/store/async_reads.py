"""One-statement reads on PostgreSQL from the event loop: psycopg's async
driver, no thread hop (``Database.fetch_first_async``).

A status poll through the thread pool paid a hop to a thread, the GIL handed
back and forth, and SQLAlchemy's per-execution machinery: together more than
the query. Here a statement is compiled once, prepared on each connection at
its first use (``prepare_threshold=0``: the server plans it once) and run on a
connection from a small LIFO pool of this loop's own, rows as named tuples.

A connection the server dropped (a restart, a proxy's idle timeout) is
retried once on a new connection, and the idle ones, likely dropped too, are
closed: a read allows it, and it is what the blocking path does (``db.py``).
There is no pre-ping, which would double the round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections import namedtuple
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy import Dialect, Select
from sqlalchemy.engine import URL

from openimagine.errors import ServiceUnavailable

log = logging.getLogger("openimagine.db")

# Connections a loop keeps: enough for a busy server's concurrent polls (each
# holds one for a round trip); more wait for a free one.
POOL_SIZE = 10


def conninfo(url: URL) -> str:
    """psycopg's connection string for a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    from psycopg.conninfo import make_conninfo

    parts: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    parts.update({key: value for key, value in url.query.items() if isinstance(value, str)})
    return make_conninfo(**{key: value for key, value in parts.items() if value is not None})


class _Query:
    """A SELECT compiled once for psycopg (``%(name)s`` placeholders)."""

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        # Rows as this query's own named tuple (psycopg's namedtuple_row would
        # read the column names again on every execution).
        self.row_type: Any = namedtuple(  # type: ignore[misc] # names known at run time
            "Row", [column.keyname for column in compiled._result_columns]
        )  # noqa: SLF001
        # Values the statement carries itself (a LIMIT): merged under the caller's.
        self.fixed = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }

    def params(self, given: dict[str, Any]) -> dict[str, Any]:
        return {**self.fixed, **given} if self.fixed else given


class AsyncReader:
    """The async connections of one event loop, and the statements compiled for them."""

    def __init__(self, url: URL, dialect: Dialect, *, size: int = POOL_SIZE) -> None:
        self.conninfo = conninfo(url)
        self.dialect = dialect
        self.size = size
        self.loop = asyncio.get_running_loop()
        # Idle connections, and None for each place a discarded one left.
        self._idle: asyncio.LifoQueue[Any] = asyncio.LifoQueue()
        self._open = 0
        self._queries: dict[Select[Any], _Query] = {}

    async def first(self, statement: Select[Any], params: dict[str, Any]) -> Any:
        query = self._query(statement)
        values = query.params(params)
        return await self._run(lambda connection: self._fetchone(connection, query, values))

    async def all(self, statement: Select[Any], params: dict[str, Any]) -> list[Any]:
        query = self._query(statement)
        values = query.params(params)
        return await self._run(lambda connection: self._fetchall(connection, query, values))

    def _query(self, statement: Select[Any]) -> _Query:
        query = self._queries.get(statement)
        if query is None:
            query = self._queries[statement] = _Query(statement, self.dialect)
        return query

    @staticmethod
    async def _fetchone(connection: Any, query: _Query, values: dict[str, Any]) -> Any:
        cursor = await connection.execute(query.sql, values)
        row = await cursor.fetchone()
        return None if row is None else query.row_type._make(row)

    @staticmethod
    async def _fetchall(connection: Any, query: _Query, values: dict[str, Any]) -> list[Any]:
        cursor = await connection.execute(query.sql, values)
        return [query.row_type._make(row) for row in await cursor.fetchall()]

    async def _run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        import psycopg

        for retry in (False, True):
            try:
                # The retry on a new connection: the idle ones were closed below.
                connection = await (self._connect() if retry else self._acquire())
            except psycopg.OperationalError as exc:
                raise _unavailable(exc) from None
            try:
                result = await work(connection)
            except psycopg.OperationalError as exc:
                if not connection.closed and not connection.broken:
                    self._release(connection)
                    raise _unavailable(exc) from None  # as SQLAlchemy's would be: 503
                # The server dropped it (a restart, a proxy's idle timeout).
                self._discard(connection)
                self._close_idle()
                if retry:
                    raise _unavailable(exc) from None
                continue
            except BaseException:
                self._release(connection)
                raise
            self._release(connection)
            return result
        raise AssertionError("unreachable")

    async def _acquire(self) -> Any:
        try:
            connection = self._idle.get_nowait()  # LIFO: the warmest, its plans prepared
        except asyncio.QueueEmpty:
            if self._open >= self.size:
                connection = await self._idle.get()
            else:
                connection = None
        # None: a place a discarded connection left (or none yet): a new one.
        return connection if connection is not None else await self._connect()

    async def _connect(self) -> Any:
        import psycopg
        from psycopg.types.json import set_json_loads

        self._open += 1
        try:
            connection = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, prepare_threshold=0
            )
        except BaseException:
            self._open -= 1
            self._idle.put_nowait(None)  # a waiter may try in turn
            raise
        set_json_loads(orjson.loads, connection)
        return connection

    def _release(self, connection: Any) -> None:
        if connection.closed or connection.broken:
            self._discard(connection)
        else:
            self._idle.put_nowait(connection)

    def _discard(self, connection: Any) -> None:
        self._open -= 1
        _close_now(connection)
        self._idle.put_nowait(None)

    def _close_idle(self) -> None:
        kept: list[None] = []
        while not self._idle.empty():
            connection = self._idle.get_nowait()
            if connection is not None:
                self._open -= 1
                _close_now(connection)
            kept.append(None)
        for place in kept:
            self._idle.put_nowait(place)

    def close(self) -> None:
        """Close every idle connection now (at shutdown)."""
        while not self._idle.empty():
            connection = self._idle.get_nowait()
            if connection is not None:
                _close_now(connection)


def _unavailable(exc: Exception) -> ServiceUnavailable:
    log.error("database unavailable: %s", exc)
    return ServiceUnavailable("Service unavailable, please try again later.")


def _close_now(connection: Any) -> None:
    """Close without awaiting: the socket goes at once (psycopg's ``close`` is a
    coroutine, and shutdown runs in synchronous code)."""
    try:
        connection.pgconn.finish()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass
