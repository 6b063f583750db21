"""The fast path: status polls answered below FastAPI's stack, and the request
parameters read by hand. Everything done for speed on the hottest requests is
here, with its reason; ``api/app.py`` only wires it.

Why. Status polling is most of an API's traffic: a client polls a task many
times for each one it submits. Measured with ``bench/api_bench.py`` (wrk, 32
connections, GET /v1/status of a completed task, against a bare Starlette
endpoint on the same uvicorn settings), FastAPI's middleware stack (server
errors, exception telemetry, body limit, ours, exception handlers, exit stack)
and its router cost about a quarter of a status request, and none of them does
anything for a GET without a body that answers in our own envelope: answering
straight from the ASGI entry point took status from 0.25 to 0.42 of the bare
endpoint (commit dbbcdd2). Run the bench again after touching anything here.

What. ``FastPath`` holds the routes answered directly: ``GET``/``HEAD
/v1/status`` and ``GET``/``HEAD /v1/videos/{video_id}`` (the OpenAI face's poll).
A direct route runs the very endpoint FastAPI has registered for the path, maps
its errors through the same ``response_for`` and adds the same rate-limit
headers, so the answer is the same byte for byte
(``tests/test_fastpath.py`` sends the same requests both ways and compares).
Everything else (other methods, other paths, a path with a further segment)
goes through FastAPI, where the same endpoints are registered and documented.
Request accounting (``api/observe.py``: request id, metrics, access log) wraps
both ways in ``OpenImagineAPI.__call__``.

Hand-read parameters. The direct endpoints take the ``Request`` alone and read
what they need themselves: FastAPI's parameter machinery (a dependency solve
and a pydantic validation per request) cost more than the database read on the
most frequent request of all, and a direct route has no router to fill path
parameters. Their OpenAPI parameters are therefore declared by hand
(``openapi_extra``) beside each route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from openimagine.api.errors import response_for
from openimagine.api.middleware import ratelimit_headers

Endpoint = Callable[[Request], Awaitable[Response]]


class FastPath:
    """The routes answered straight from the ASGI entry point."""

    def __init__(self) -> None:
        # (method, path) -> (endpoint, its route)
        self.exact: dict[tuple[str, str], tuple[Endpoint, APIRoute]] = {}
        # GET (and HEAD) of ``prefix<one path segment>`` -> (endpoint, its route)
        self.prefixes: dict[str, tuple[Endpoint, APIRoute]] = {}

    def match(self, scope: Scope) -> tuple[Endpoint, APIRoute] | None:
        """The endpoint that answers this HTTP request directly and the route it is
        registered on (which the caller puts in ``scope["route"]``, as Starlette's
        router does: request accounting reads the route template there), or None:
        FastAPI answers it."""
        method, path = scope["method"], scope["path"]
        found = self.exact.get((method, path))
        if found is None and self.prefixes and method in ("GET", "HEAD"):
            for prefix, target in self.prefixes.items():
                if (
                    path.startswith(prefix)
                    and len(path) > len(prefix)
                    and "/" not in path[len(prefix) :]
                ):
                    return target
        return found

    def serve(self, routes: list[BaseRoute], path: str, method: str) -> None:
        """Answer ``method path`` with its endpoint among ``routes``, below the stack (a
        GET also answers HEAD: ``_answer_head``)."""
        route = _route(routes, path, method)
        self.exact[(method, path)] = (route.endpoint, route)
        if method == "GET":
            self.exact[("HEAD", path)] = (route.endpoint, route)
            _answer_head(routes, path, route.endpoint)

    def serve_under(self, routes: list[BaseRoute], prefix: str, route_path: str) -> None:
        """Answer ``GET`` (and HEAD) of ``prefix<one segment>`` with the GET endpoint of
        ``route_path`` (which reads the segment from the path itself: ``path_tail``),
        below the stack."""
        route = _route(routes, route_path, "GET")
        self.prefixes[prefix] = (route.endpoint, route)
        _answer_head(routes, route_path, route.endpoint)


def _route(routes: list[BaseRoute], path: str, method: str) -> APIRoute:
    for route in routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            return route
    raise LookupError(f"no {method} {path} route")


def _answer_head(routes: list[BaseRoute], path: str, endpoint: Endpoint) -> None:
    """HEAD of a direct GET route through the router too. The fast path answers HEAD
    as Starlette's routes do (the server drops the body), FastAPI's GET routes refuse
    it (405): a plain route beside the GET one, outside the OpenAPI document (which
    lists GET only), makes both ways answer alike."""
    index = next(
        n for n, route in enumerate(routes) if isinstance(route, APIRoute) and route.path == path
    )
    routes.insert(index + 1, Route(path, endpoint, methods=["HEAD"], include_in_schema=False))


async def answer(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``endpoint`` as FastAPI would, errors and rate-limit headers included."""
    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except Exception as exc:  # noqa: BLE001 - every error becomes the envelope
        response = response_for(exc, scope["path"])
    response.raw_headers.extend(ratelimit_headers(scope))
    await response(scope, receive, send)


# -- hand-read parameters ------------------------------------------------------------


def path_tail(request: Request, prefix: str) -> str:
    """The path after ``prefix`` (``/v1/videos/<id>``): a direct route has no router
    to fill path parameters, so the endpoint reads it from the scope on both paths."""
    path: str = request.scope["path"]
    return path[len(prefix) :]


def wanted_task_id(task_id: object) -> str:
    """The task id asked for (query string, body or path), trimmed; "" when missing."""
    return task_id.strip() if isinstance(task_id, str) else ""


def valid_task_id(wanted: str) -> bool:
    """Task ids are printable ASCII; anything else (a NUL, an unpaired surrogate)
    must not reach the driver: such an id is simply not found."""
    return bool(wanted) and wanted.isascii() and wanted.isprintable()
