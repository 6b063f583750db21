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
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from openimagine import __version__
from openimagine.api import fastpath, observe
from openimagine.api.auth import BEARER_SCHEME, run_blocking
from openimagine.api.context import AppContext
from openimagine.api.errors import install_error_handlers
from openimagine.api.fastpath import FastPath
from openimagine.api.middleware import EnvelopeMiddleware
from openimagine.api.observe import Accounting, HttpMetrics
from openimagine.api.openai import routes as openai_routes
from openimagine.api.openapi import finish_document
from openimagine.api.routes import (
    account,
    files,
    generate,
    health,
    jobs,
    models,
    playground,
    status,
    webhooks,
)
from openimagine.api.stream import StatusHub, read_tasks
from openimagine.catalog import Catalog, load_catalog
from openimagine.ratelimit import RateLimiter
from openimagine.settings import Settings
from openimagine.storage import Storage, storage_from_settings
from openimagine.store.db import Database
from openimagine.worker.dispatch import WakeupDispatcher, create_dispatcher

log = logging.getLogger("openimagine.api")

# How long shutdown waits for running tasks to stop and go back to the queue.
SHUTDOWN_GRACE_SECONDS = 30.0


class OpenImagineAPI(FastAPI):
    """FastAPI, plus the routes answered straight from the ASGI entry point
    (``api/fastpath.py`` says which and why)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_path = FastPath()
        # Request id, metrics and access log around both ways (``api/observe.py``).
        self.accounting = Accounting()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.accounting(scope, receive, send, self._answer)
        else:
            await super().__call__(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.fast_path.match(scope)
        if found is None:
            await super().__call__(scope, receive, send)
            return
        # As Starlette's router sets them: ``request.app``, the route that answers.
        scope["app"], scope["route"] = self, found[1]
        await fastpath.answer(found[0], scope, receive, send)


def install_openapi(app: FastAPI, routes: list[BaseRoute]) -> None:
    """The document of ``routes``, plus the Bearer scheme the /v1 operations name."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=routes
            )
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = (
                BEARER_SCHEME
            )
            app.openapi_schema = finish_document(schema, app.state.ctx)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_storage(settings: Settings) -> Storage:
    return storage_from_settings(settings)


def create_app(
    settings: Settings, *, catalog: Catalog | None = None, run_workers: bool | None = None
) -> OpenImagineAPI:
    """The ASGI app. With ``run_workers`` (default: ``settings.workers > 0``) the
    worker pool runs inside the server process (the embedded default), serving
    every model of the catalog (default: ``load_catalog(settings)``). With a
    broker (``settings.broker_url``) tasks go to Celery workers and none runs here."""
    catalog = catalog or load_catalog(settings)
    db = Database(settings.resolved_database_url)
    ctx = AppContext(
        settings=settings,
        db=db,
        storage=build_storage(settings),
        limiter=RateLimiter(settings),
        catalog=catalog,
        executor=ThreadPoolExecutor(settings.api_threads, thread_name_prefix="openimagine-api"),
        dispatcher=create_dispatcher(settings),
        hub=StatusHub(db),
    )
    with_workers = settings.workers > 0 if run_workers is None else run_workers
    if settings.broker_url:
        with_workers = False

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        wakeups = WakeupDispatcher(asyncio.get_running_loop())
        if not settings.broker_url:
            ctx.dispatcher = wakeups
        stop = asyncio.Event()
        hub = ctx.hub
        assert hub is not None
        hub_task = asyncio.create_task(
            hub.run(stop, lambda ids: run_blocking(ctx, lambda: read_tasks(db, ids), writes=False))
        )
        pool_task = None
        if with_workers:
            from openimagine.worker.pool import WorkerPool

            pool = WorkerPool(
                settings, db, ctx.storage, catalog, wakeups=wakeups, on_change=hub.poke
            )
            pool_task = asyncio.create_task(pool.run(stop))
        stop_delivering = None
        if not with_workers:  # the pool sends webhooks where it runs; else the API does
            from openimagine.worker.deliverer import start_deliverer
            from openimagine.worker.pool import worker_name

            stop_delivering = start_deliverer(settings, db, ctx.storage, name=worker_name())
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
            hub_task.cancel()
            app.accounting.flush()  # the access lines still waiting
            if stop_delivering is not None:
                await asyncio.to_thread(stop_delivering)
            ctx.executor.shutdown(wait=False)
            db.dispose()

    app = OpenImagineAPI(
        title="openimagine",
        version=__version__,
        description="Self-hosted video generation speaking the Grok Imagine API.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.metrics = HttpMetrics(db, lambda: catalog.names)
    app.accounting = Accounting(app.state.metrics)
    install_error_handlers(app)
    app.add_middleware(EnvelopeMiddleware, max_body_bytes=settings.max_body_bytes)
    for module in (
        status,
        generate,
        openai_routes,
        jobs,
        webhooks,
        files,
        account,
        models,
        health,
        playground,
        observe,
    ):
        # Flat on the app's router, most frequent first (routes are matched in
        # order): FastAPI matches included routers twice over, which measured
        # as much as the rest of a status request.
        app.router.routes.extend(module.router.routes)
    install_openapi(app, list(app.router.routes))
    app.fast_path.serve(app.router.routes, "/v1/status", "GET")
    app.fast_path.serve_under(app.router.routes, openai_routes.PREFIX, "/v1/videos/{video_id}")
    return app
