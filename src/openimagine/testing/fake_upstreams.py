"""Fake upstream video APIs: real HTTP servers on loopback for relay-engine tests.

Two flavors speak the documented shapes (and the quirks) of the upstreams the
gateway relays to:

- ``"xai"``: Grok Imagine REST (``POST /v1/videos/generations``, poll
  ``GET /v1/videos/{request_id}``, statuses pending/done/failed/expired).
- ``"openai"``: OpenAI Videos as SGLang diffusion, vLLM-Omni and trtllm-serve
  serve it (multipart ``POST /v1/videos``, ``GET /v1/videos/{id}``,
  ``GET /v1/videos/{id}/content``).

Videos are real MP4s from :mod:`openimagine.testing.samples`, by default H.264
with the ``moov`` atom at the end so the gateway's re-mux runs. Each job's
behaviour (outcome, length, statuses, codec, moderation) is fixed when it is
created, so changing a knob never rewrites a job already running; the request
knobs (``api_key``, ``poll_delay``, ``create_*``, ``failed_http_status``,
``strict_fields``) apply to the next request.

Run one from a shell as a local stand-in::

    python -m openimagine.testing.fake_upstreams --flavor xai --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import email.parser
import email.policy
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from openimagine.testing.samples import sample_mp4_bytes

FLAVORS = ("xai", "openai")
OUTCOMES = ("ok", "failed", "expired", "not_video")
STATUS_SETS = ("openai", "trtllm")
CODECS = ("h264", "mpeg4")
XAI_RATIOS = frozenset({"1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"})
XAI_RESOLUTIONS = frozenset({"480p", "720p"})
OPENAI_FIELDS = frozenset({"prompt", "model", "seconds", "size", "input_reference"})
NOT_VIDEO = "<html>oops</html>"


@dataclass
class FakeConfig:
    """Every knob; all of them can also be changed at runtime (``configure``, ``/_fake/config``)."""

    job_seconds: float = 0.5
    api_key: str | None = None
    moderate_word: str | None = "forbidden"
    outcome: str = "ok"  # ok | failed | expired (xai; openai treats it as failed) | not_video
    create_failures: int = 0
    create_status: int | None = None
    failed_http_status: int = 200
    poll_delay: float = 0.0
    statuses: str = "openai"  # openai | trtllm
    video_codec: str = "h264"  # h264 | mpeg4
    strict_fields: bool = False


@dataclass
class _Job:
    id: str
    model: str
    prompt: str
    started: float  # time.monotonic() at create: the job clock
    created_at: int  # unix seconds, for the OpenAI object
    job_seconds: float
    outcome: str
    moderated: bool
    statuses: str
    codec: str
    extra: dict[str, Any] = field(default_factory=dict)  # flavor fields echoed back

    def fraction(self) -> float:
        if self.job_seconds <= 0:
            return 1.0
        return (time.monotonic() - self.started) / self.job_seconds

    def finished(self) -> bool:
        return self.fraction() >= 1.0

    def progress(self) -> int:
        # Capped at 99 until final, as SGLang reports it.
        return 100 if self.finished() else min(99, int(self.fraction() * 100))


class FakeUpstream:
    """A fake upstream served by uvicorn in a background thread."""

    def __init__(self, flavor: str, config: FakeConfig | None = None, *, port: int = 0) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
        self.flavor = flavor
        self.config = config or FakeConfig()
        self._check(self.config)
        self._port = port
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        # "jobs" counts accepted creates, so a test can tell a refused create from a spent one.
        self._counts = {"creates": 0, "jobs": 0, "polls": 0, "downloads": 0}
        self._requests: list[Any] = []
        self._auth: list[str | None] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.base_url = ""
        self.app = self._build_app()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        # Bind here rather than in uvicorn so port 0 resolves before anyone needs base_url.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._socket = sock
        port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"fake-{self.flavor}-{port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake {self.flavor} upstream did not start on port {port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._counts,
                "in_flight": sum(1 for job in self._jobs.values() if not job.finished()),
                "requests": copy.deepcopy(self._requests),
                "auth": list(self._auth),
            }

    def configure(self, **knobs: Any) -> None:
        names = {f.name for f in dataclasses.fields(FakeConfig)}
        unknown = sorted(set(knobs) - names)
        if unknown:
            raise TypeError(f"unknown knobs {unknown}; known: {sorted(names)}")
        with self._lock:
            new = dataclasses.replace(self.config, **knobs)
            self._check(new)
            # Swap the whole object so a handler never sees half an update.
            self.config = new

    @staticmethod
    def _check(config: FakeConfig) -> None:
        for name, value, allowed in (
            ("outcome", config.outcome, OUTCOMES),
            ("statuses", config.statuses, STATUS_SETS),
            ("video_codec", config.video_codec, CODECS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    async def _control_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def _control_config(self, request: Request) -> Response:
        try:
            knobs = await request.json()
            if not isinstance(knobs, dict):
                raise TypeError("the body must be a JSON object of knobs")
            self.configure(**knobs)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(dataclasses.asdict(self.config))

    # ------------------------------------------------------------------ shared

    def _build_app(self) -> Starlette:
        routes = [
            Route("/_fake/stats", self._control_stats, methods=["GET"]),
            Route("/_fake/config", self._control_config, methods=["POST"]),
        ]
        if self.flavor == "xai":
            routes += [
                Route("/v1/videos/generations", self._xai_create, methods=["POST"]),
                Route("/v1/videos/{job_id}", self._xai_poll, methods=["GET"]),
                Route("/v1/files/{job_id}.mp4", self._xai_file, methods=["GET"]),
            ]
        else:
            routes += [
                Route("/v1/videos", self._openai_create, methods=["POST"]),
                Route("/v1/videos/{job_id}", self._openai_poll, methods=["GET"]),
                Route("/v1/videos/{job_id}", self._openai_delete, methods=["DELETE"]),
                Route("/v1/videos/{job_id}/content", self._openai_content, methods=["GET"]),
            ]
        return Starlette(routes=routes)

    def _error(self, status: int, message: str, *, code: str | None = None) -> Response:
        """An error in the flavor's own shape; 429/503 say when to retry, like the real ones."""
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        if self.flavor == "xai":
            short = code or _XAI_CODES.get(status, "Error")
            return JSONResponse({"code": short, "error": message}, status, headers=headers)
        fallback = "server_error" if status >= 500 else "invalid_request_error"
        kind = _OPENAI_TYPES.get(status, fallback)
        body = {
            "message": message,
            "type": kind,
            "param": None,
            "code": code or _OPENAI_CODES.get(status),
        }
        return JSONResponse({"error": body}, status, headers=headers)

    def _authorized(self, request: Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("authorization") == f"Bearer {key}"

    def _gate_create(self, request: Request, body: Any) -> Response | None:
        """Record a create attempt, then refuse it as the knobs say: auth, status, failures."""
        with self._lock:
            self._counts["creates"] += 1
            self._requests.append(body)
            self._auth.append(request.headers.get("authorization"))
        if not self._authorized(request):
            return self._error(401, "missing or wrong API key (fake)")
        with self._lock:
            config = self.config
            if config.create_status is not None:
                return self._error(
                    config.create_status, f"create refused with {config.create_status} (fake)"
                )
            if config.create_failures > 0:
                # Spend one failure; the knob counts down so the retry after it succeeds.
                self.config = dataclasses.replace(
                    config, create_failures=config.create_failures - 1
                )
                return self._error(503, "the service is overloaded, retry later (fake)")
        return None

    def _new_job(self, job_id: str, model: str, prompt: str, **extra: Any) -> _Job:
        config = self.config
        word = config.moderate_word
        moderated = bool(word) and str(word).lower() in prompt.lower()
        job = _Job(
            id=job_id,
            model=model,
            prompt=prompt,
            started=time.monotonic(),
            created_at=int(time.time()),
            job_seconds=config.job_seconds,
            outcome=config.outcome,
            moderated=moderated,
            statuses=config.statuses,
            codec=config.video_codec,
            extra=extra,
        )
        with self._lock:
            self._jobs[job_id] = job
            self._counts["jobs"] += 1
        return job

    async def _find(self, request: Request, counter: str) -> _Job | Response:
        """Count the request, honour auth and poll_delay, then find the job named in the path."""
        with self._lock:
            self._counts[counter] += 1
            delay = self.config.poll_delay if counter == "polls" else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        # xAI's file URLs are public CDN links: no key travels with the download.
        public = self.flavor == "xai" and counter == "downloads"
        if not public and not self._authorized(request):
            return self._error(401, "missing or wrong API key (fake)")
        with self._lock:
            job = self._jobs.get(request.path_params["job_id"])
        if job is None:
            return self._error(404, f"no job {request.path_params['job_id']!r}")
        return job

    async def _video(self, job: _Job) -> Response:
        if job.outcome == "not_video":
            return HTMLResponse(NOT_VIDEO)
        # Encoding is CPU work (once per codec, then cached); keep it off the event loop.
        width, height = job.extra.get("frame", (64, 64))
        data = await run_in_threadpool(
            sample_mp4_bytes, codec=job.codec, faststart=False, width=width, height=height
        )
        return Response(data, media_type="video/mp4")

    # ------------------------------------------------------------------ flavor xai

    async def _xai_create(self, request: Request) -> Response:
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        refused = self._gate_create(request, body)
        if refused is not None:
            return refused
        problem = _xai_invalid(body)
        if problem:
            return self._error(400, problem)
        job = self._new_job(
            str(uuid.uuid4()),
            str(body.get("model") or "grok-imagine-video"),
            body["prompt"],
            duration=int(round(body.get("duration", 6))),
            frame=_small_frame(*body.get("aspect_ratio", "1:1").split(":")),
        )
        return JSONResponse({"request_id": job.id})

    async def _xai_poll(self, request: Request) -> Response:
        job = await self._find(request, "polls")
        if not isinstance(job, _Job):
            return job
        if not job.finished():
            return JSONResponse({"status": "pending", "progress": job.progress()})
        if job.moderated:
            return JSONResponse(
                {
                    "status": "done",
                    "progress": 100,
                    "model": job.model,
                    "video": {"url": None, "duration": 0, "respect_moderation": False},
                }
            )
        if job.outcome == "failed":
            # HTTP 200 on purpose: xAI reports a failed job in the body only.
            return JSONResponse(
                {
                    "status": "failed",
                    "error": {
                        "code": "internal_error",
                        "message": "upstream render crashed (fake)",
                    },
                }
            )
        if job.outcome == "expired":
            return JSONResponse({"status": "expired"})
        url = f"{str(request.base_url).rstrip('/')}/v1/files/{job.id}.mp4"
        return JSONResponse(
            {
                "status": "done",
                "progress": 100,
                "model": job.model,
                "video": {
                    "url": url,
                    "duration": job.extra["duration"],
                    "respect_moderation": True,
                },
            }
        )

    async def _xai_file(self, request: Request) -> Response:
        job = await self._find(request, "downloads")
        if not isinstance(job, _Job):
            return job
        if not job.finished() or job.moderated or job.outcome in ("failed", "expired"):
            return self._error(404, f"no video for {job.id}")
        return await self._video(job)

    # ------------------------------------------------------------------ flavor openai

    async def _openai_create(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            # vLLM-Omni takes multipart only; record what came so a test can see it.
            try:
                body: Any = await request.json()
            except ValueError:
                body = None
            refused = self._gate_create(request, body)
            return refused or self._error(415, "Content-Type must be multipart/form-data")
        fields = _form_fields(request.headers["content-type"], await request.body())
        refused = self._gate_create(request, fields)
        if refused is not None:
            return refused
        if fields is None:
            return self._error(400, "the multipart body could not be parsed")
        if self.config.strict_fields and set(fields) - OPENAI_FIELDS:
            unknown = sorted(set(fields) - OPENAI_FIELDS)
            return self._error(422, f"Extra inputs are not permitted: {unknown}")
        problem = _openai_invalid(fields)
        if problem:
            return self._error(400, problem, code="invalid_value")
        job = self._new_job(
            f"video_{uuid.uuid4().hex}",
            str(fields.get("model") or "fake-video"),
            fields["prompt"],
            seconds=str(fields.get("seconds") or "4"),
            size=str(fields.get("size") or "720x1280"),
            frame=_small_frame(*str(fields.get("size") or "720x1280").split("x")),
        )
        return JSONResponse(self._video_object(job))

    def _video_object(self, job: _Job) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": job.id,
            "object": "video",
            "created_at": job.created_at,
            "status": "queued",
            "model": job.model,
            "progress": job.progress(),
            "seconds": job.extra["seconds"],
            "size": job.extra["size"],
            "prompt": job.prompt,
        }
        fraction = job.fraction()
        if not job.finished():
            if fraction < 0.1:
                obj["status"] = "queued"
            elif job.statuses == "trtllm":
                obj["status"] = "generating" if fraction < 0.9 else "postprocessing"
            else:
                obj["status"] = "in_progress"
        elif job.moderated:
            obj["status"] = "failed"
            obj["error"] = {
                "code": "content_policy_violation",
                "message": "the prompt was refused by the content policy (fake)",
            }
        elif job.outcome in ("failed", "expired"):
            obj["status"] = "failed"
            obj["error"] = {"code": "internal_error", "message": "upstream render crashed (fake)"}
        else:
            obj["status"] = "completed"
            obj["completed_at"] = job.created_at + max(1, round(job.job_seconds))
        return obj

    async def _openai_poll(self, request: Request) -> Response:
        job = await self._find(request, "polls")
        if not isinstance(job, _Job):
            return job
        obj = self._video_object(job)
        # vLLM-Omni answers a failed job with a 5xx whose body is the failed video object.
        status = self.config.failed_http_status if obj["status"] == "failed" else 200
        return JSONResponse(obj, status)

    async def _openai_content(self, request: Request) -> Response:
        job = await self._find(request, "downloads")
        if not isinstance(job, _Job):
            return job
        if "variant" in request.query_params:
            # SGLang reads variant as an integer output index: "video" names no output.
            return self._error(404, f"no variant {request.query_params['variant']!r}")
        if self._video_object(job)["status"] != "completed":
            return self._error(404, f"video {job.id} is not completed")
        return await self._video(job)

    async def _openai_delete(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "missing or wrong API key (fake)")
        with self._lock:
            job = self._jobs.pop(request.path_params["job_id"], None)
        if job is None:
            return self._error(404, f"no job {request.path_params['job_id']!r}")
        return JSONResponse({"id": job.id, "object": "video", "deleted": True})


_XAI_CODES = {
    400: "Client specified an invalid argument",
    401: "Unauthenticated",
    403: "Permission denied",
    404: "not found",
    429: "Resource exhausted",
    500: "Internal error",
    503: "Service unavailable",
}
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_OPENAI_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    503: "service_unavailable",
}


def _small_frame(width: str, height: str) -> tuple[int, int]:
    """A small frame of the requested shape (short side 64, even sides): the video an
    upstream renders has the aspect ratio asked for, at a size tests encode quickly."""
    w, h = int(width), int(height)
    short = 64
    long = 2 * round(short * max(w, h) / min(w, h) / 2)
    return (long, short) if w >= h else (short, long)


def _xai_invalid(body: Any) -> str | None:
    """xAI's checks on a create body; the message for the first problem, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt must be a non-empty string"
    duration = body.get("duration", 6)
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 1 <= duration <= 15
    ):
        return f"duration must be a number from 1 to 15, got {duration!r}"
    if "aspect_ratio" in body and body["aspect_ratio"] not in XAI_RATIOS:
        return f"aspect_ratio must be one of {sorted(XAI_RATIOS)}, got {body['aspect_ratio']!r}"
    if "resolution" in body and body["resolution"] not in XAI_RESOLUTIONS:
        return f"resolution must be 480p or 720p, got {body['resolution']!r}"
    if body.get("image") is not None and body.get("reference_images"):
        return "image and reference_images cannot be combined"
    return None


def _form_fields(content_type: str, body: bytes) -> dict[str, Any] | None:
    """The fields of a multipart/form-data body; a file part becomes its description.

    The stdlib MIME parser does this, so the fake needs no python-multipart (which
    Starlette's ``request.form()`` would) and runs wherever openimagine runs.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            return None
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            kind = part.get_content_type() if "content-type" in part else None
            fields[name] = {"filename": filename, "content_type": kind, "size": len(data)}
        else:
            fields[name] = data.decode(part.get_content_charset() or "utf-8", "replace")
    return fields


def _openai_invalid(fields: dict[str, Any]) -> str | None:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt is required"
    seconds = fields.get("seconds", "4")
    try:
        if float(seconds) <= 0:
            raise ValueError
    except (TypeError, ValueError):
        return f"seconds must be a positive number, got {seconds!r}"
    size = fields.get("size", "720x1280")
    try:
        width, height = (int(part) for part in str(size).lower().split("x"))
    except ValueError:
        return f"size must be WIDTHxHEIGHT, got {size!r}"
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        return f"size {size!r}: width and height must be positive multiples of 16"
    return None


# ---------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openimagine.testing.fake_upstreams",
        description="Serve a fake upstream video API on loopback.",
    )
    parser.add_argument("--flavor", choices=FLAVORS, required=True)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--job-seconds", type=float, default=FakeConfig.job_seconds)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--moderate-word", default=FakeConfig.moderate_word, help='"" turns moderation off'
    )
    parser.add_argument("--outcome", choices=OUTCOMES, default=FakeConfig.outcome)
    parser.add_argument("--create-failures", type=int, default=0)
    parser.add_argument("--create-status", type=int, default=None)
    parser.add_argument("--failed-http-status", type=int, default=FakeConfig.failed_http_status)
    parser.add_argument("--poll-delay", type=float, default=0.0)
    parser.add_argument("--statuses", choices=STATUS_SETS, default=FakeConfig.statuses)
    parser.add_argument("--video-codec", choices=CODECS, default=FakeConfig.video_codec)
    parser.add_argument("--strict-fields", action="store_true")
    args = parser.parse_args(argv)
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(FakeConfig)}
    knobs["moderate_word"] = knobs["moderate_word"] or None

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with FakeUpstream(args.flavor, FakeConfig(**knobs), port=args.port) as fake:
        # One line a parent process can read to learn the port; flushed, as stdout is a pipe.
        print(f"base_url={fake.base_url}", flush=True)
        # Short waits so the signal handler runs promptly in the main thread.
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
