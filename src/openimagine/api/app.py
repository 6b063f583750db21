"""The application factory: everything is built from its arguments, nothing
connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from openimagine import __version__
from openimagine.api.auth import BEARER_SCHEME
from openimagine.api.context import AppContext
from openimagine.api.errors import install_error_handlers
from openimagine.api.middleware import EnvelopeMiddleware
from openimagine.api.routes import account, files, generate, health, playground, status
from openimagine.engines import engine_info
from openimagine.ratelimit import RateLimiter
from openimagine.settings import Settings
from openimagine.storage import Storage, storage_from_settings
from openimagine.store.db import Database
from openimagine.worker.dispatch import WakeupDispatcher, create_dispatcher

log = logging.getLogger("openimagine.api")

# How long shutdown waits for running tasks to stop and go back to the queue.
SHUTDOWN_GRACE_SECONDS = 30.0


def serve_plainly(app: FastAPI, path: str, method: str) -> None:
    """Serve one FastAPI route as a plain Starlette route (same endpoint, same
    error handlers; the OpenAPI document keeps the FastAPI one).

    For status polling, the most frequent request: FastAPI's per-route
    machinery measured ~70 us of a ~250 us request. The endpoint takes only
    the request and reads its parameters itself, so nothing is lost.
    """
    for index, route in enumerate(app.router.routes):
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            app.router.routes[index] = Route(path, route.endpoint, methods=[method],
                                             name=route.name)
            return
    raise LookupError(f"no {method} {path} route")


def install_openapi(app: FastAPI, routes: list[BaseRoute]) -> None:
    """The document of ``routes``, plus the Bearer scheme the /v1 operations name."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[
                "bearer"] = BEARER_SCHEME
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_storage(settings: Settings) -> Storage:
    return storage_from_settings(settings)


def create_app(settings: Settings, *, run_workers: bool | None = None) -> FastAPI:
    """The ASGI app. With ``run_workers`` (default: ``settings.workers > 0``) the
    worker pool runs inside the server process (the embedded default). With a
    broker (``settings.broker_url``) tasks go to Celery workers and none runs here."""
    db = Database(settings.resolved_database_url)
    ctx = AppContext(
        settings=settings,
        db=db,
        storage=build_storage(settings),
        limiter=RateLimiter(settings),
        engine=engine_info(settings.engine, settings),
        executor=ThreadPoolExecutor(settings.api_threads, thread_name_prefix="openimagine-api"),
        dispatcher=create_dispatcher(settings),
    )
    with_workers = settings.workers > 0 if run_workers is None else run_workers
    if settings.broker_url:
        with_workers = False

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.wakeup = asyncio.Event()
        if not settings.broker_url:
            ctx.dispatcher = WakeupDispatcher(ctx.wakeup, asyncio.get_running_loop())
        stop = asyncio.Event()
        pool_task = None
        if with_workers:
            from openimagine.worker.pool import WorkerPool

            pool = WorkerPool(settings, db, ctx.storage, wakeup=ctx.wakeup)
            pool_task = asyncio.create_task(pool.run(stop))
        # Everything built so far lives as long as the process: keep it out of
        # the collector's full passes, which otherwise stall requests.
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            if pool_task is not None:
                pool.cancel_running()
                try:
                    await asyncio.wait_for(pool_task, SHUTDOWN_GRACE_SECONDS)
                except Exception:
                    log.exception("worker pool did not stop cleanly")
            ctx.executor.shutdown(wait=False)
            db.dispose()

    app = FastAPI(
        title="openimagine",
        version=__version__,
        description="Self-hosted video generation speaking the Grok Imagine API.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(EnvelopeMiddleware, max_body_bytes=settings.max_body_bytes)
    for module in (status, generate, files, account, health, playground):
        # Flat on the app's router, most frequent first (routes are matched in
        # order): FastAPI matches included routers twice over, which measured
        # as much as the rest of a status request.
        app.router.routes.extend(module.router.routes)
    install_openapi(app, list(app.router.routes))
    serve_plainly(app, "/v1/status", "GET")
    return app
