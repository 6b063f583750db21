"""What operators see of the requests: an ``X-Request-Id`` on every answer, one
JSON access-log line per request, and ``GET /metrics`` (Prometheus).

``Accounting`` wraps the whole app at its ASGI entry point
(``OpenImagineAPI.__call__``), where both ways a request can take pass: the fast
path (``api/fastpath.py``) and FastAPI's stack. It costs a header scan, a
clock read, two metric updates and, when the access log is on, a tuple kept for
the next batch of lines (``Accounting``).

The HTTP series are per process: with ``PROMETHEUS_MULTIPROC_DIR`` set (before
the process starts), prometheus-client keeps them in files in that folder and
a scrape of any process sums every process's files (``MultiProcessCollector``),
the standard way for several server processes on one machine. The task, queue,
credit and webhook series are read from the database at scrape time
(``services/metrics.py``): the same from every replica.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable

import orjson
from fastapi import APIRouter, Request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from openimagine.api.context import get_context
from openimagine.errors import Forbidden
from openimagine.services.metrics import DatabaseCollector
from openimagine.store.db import Database

ACCESS_LOG = "openimagine.access"
REQUEST_ID_HEADER = b"x-request-id"
# An incoming X-Request-Id is kept when it is short printable ASCII without spaces.
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
# Route label of a request no route matched (404s): never the raw path.
UNMATCHED = "unmatched"
# Method labels; any other token a client sends is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds: a cached status poll to a long upload.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

Answer = Callable[[Scope, Receive, Send], Awaitable[None]]


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess folder (read by it once, at import)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class _Ids:
    """New request ids: 16 random hex digits per process, then 16 of a counter.
    Unique across processes and restarts, and a tenth of a uuid4's cost."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked worker: its own prefix

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def new(self) -> bytes:
        return f"{self.prefix}{next(self.counter):016x}".encode()


_ids = _Ids()


def request_id(scope: Scope) -> bytes:
    """The client's ``X-Request-Id`` when sane, else a new one (32 hex digits)."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _SANE_ID.fullmatch(value):
                return bytes(value)
            break
    return _ids.new()


def route_of(scope: Scope) -> str:
    """The route template that answered (``/v1/videos/{video_id}``), set on the scope
    by Starlette's router and by the fast path alike."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class HttpMetrics:
    """Requests by route template and status, latency by route, and the scrape
    registry (these, the database's series, and this process's or every process's)."""

    def __init__(self, db: Database, models: Callable[[], Iterable[str]]) -> None:
        disable_created_metrics()  # the ``_created`` twin of every series: noise here
        self.registry = CollectorRegistry(auto_describe=True)
        shared = multiprocess_dir() is not None
        own = None if shared else self.registry
        self.requests = Counter(
            "openimagine_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "openimagine_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer "
            "(a live stream: until it closes), by method and route "
            "template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        if shared:
            MultiProcessCollector(self.registry)
        else:
            ProcessCollector(registry=self.registry)
        self.registry.register(DatabaseCollector(db, models))
        # (method, route, status) -> the two children: labels() costs a lock and a
        # tuple of label values per call; a dict lookup is cheaper.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((method, route, status))
        if children is None:
            children = self._children[(method, route, status)] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape in the format ``accept`` asks for (Prometheus text 0.0.4 by
        default, OpenMetrics when asked), and its content type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class Accounting:
    """Request id, metrics and the access log around every HTTP request.

    Access lines are written in batches: a request leaves a tuple, and every
    ``FLUSH_SECONDS`` (or ``FLUSH_LINES`` requests) one log record carries the
    batch's lines. A log record per request (the logging module's record, its
    locks, a flush each) cost more than the whole fast path on the bench.
    """

    FLUSH_SECONDS = 0.2
    FLUSH_LINES = 512

    def __init__(self, metrics: HttpMetrics | None = None) -> None:
        self.metrics = metrics
        self.log = logging.getLogger(ACCESS_LOG)
        self._lines: list[tuple[float, str, str, str, int, float, bytes, str | None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send, answer: Answer) -> None:
        start = time.perf_counter()
        rid = request_id(scope)
        status = 500  # unless an answer starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid)]
            await send(message)

        try:
            await answer(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = route_of(scope)
            if self.metrics is not None:
                method = scope["method"]
                self.metrics.observe(
                    method if method in METHODS else "other", route, status, seconds
                )
            if self.log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                self._lines.append(
                    (
                        time.time(),
                        scope["method"],
                        route,
                        scope["path"],
                        status,
                        seconds,
                        rid,
                        client[0] if client else None,
                    )
                )
                if len(self._lines) == 1:
                    asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
                elif len(self._lines) >= self.FLUSH_LINES:
                    self.flush()

    def flush(self) -> None:
        """Write the waiting access lines (also at shutdown)."""
        lines, self._lines = self._lines, []
        if lines:
            self.log.info("\n".join(access_line(*line) for line in lines))


def _utc_second(second: int, cache: dict[int, str] = {}) -> str:  # noqa: B006 - the cache
    text = cache.get(second)
    if text is None:
        cache.clear()
        text = cache[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return text


def access_line(
    at: float,
    method: str,
    route: str,
    path: str,
    status: int,
    seconds: float,
    rid: bytes,
    client: str | None,
) -> str:
    """One request as a JSON object on one line."""
    second = int(at)
    return orjson.dumps(
        {
            "time": f"{_utc_second(second)}.{int((at - second) * 1000):03d}Z",
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": rid.decode(),
            "client": client,
        }
    ).decode()


def log_access_lines(enabled: bool = True, stream: object = None) -> None:
    """``openimagine serve``: the access log as bare JSON lines on stderr (not through
    the root logger's text format), or off (``OPENIMAGINE_ACCESS_LOG=false``);
    uvicorn's own access log stays off either way."""
    logger = logging.getLogger(ACCESS_LOG)
    logger.propagate = False
    if not enabled:
        logger.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


# -- GET /metrics ----------------------------------------------------------------------

router = APIRouter()


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_scraper(request: Request, token: str | None) -> None:
    """With ``OPENIMAGINE_METRICS_TOKEN``: that Bearer token; without: loopback only."""
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise Forbidden(
                "Forbidden: /metrics needs Authorization: Bearer <OPENIMAGINE_METRICS_TOKEN>"
            )
    elif not _is_loopback(request.client.host if request.client else None):
        raise Forbidden(
            "Forbidden: /metrics answers loopback clients only, unless "
            "OPENIMAGINE_METRICS_TOKEN is set"
        )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format: this process's (or every process's) HTTP series and the
    database's task, queue, credit and webhook series."""
    ctx = get_context(request)
    check_scraper(request, ctx.settings.metrics_token)
    http: HttpMetrics = request.app.state.metrics
    # The database's series scan tasks and the ledger: never on the event loop.
    body, content_type = await asyncio.get_running_loop().run_in_executor(
        ctx.executor, http.render, request.headers.get("accept", "")
    )
    return Response(body, headers={"Content-Type": content_type})
