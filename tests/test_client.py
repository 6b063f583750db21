"""The Python SDK (``openimagine.client``) against real servers.

Everything talks real HTTP: the openimagine server in a thread, and for the
retry rules a tiny scripted HTTP server (a real socket that answers 429, 503
or 500 as told) — a real server, not a mock of our code.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from openimagine.client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    OpenImagineError,
    RateLimitError,
    ServerError,
    Task,
    TaskFailedError,
    TaskTimeoutError,
)
from openimagine.media.mp4 import probe_mp4
from openimagine.store import migrate
from openimagine.store.db import Database

from conftest import Server, _serve_in_thread, free_port, make_account, make_settings

PROMPT = "a beautiful landscape with mountains"
STATUS_DATA = {
    "task_id": "task_scripted",
    "status": "completed",
    "created_at": "2026-11-29T12:00:00Z",
    "consumed_credits": 40,
    "error_message": None,
    "request": {"mode": "fun", "prompt": PROMPT, "ratio": "1:1"},
    "response": ["http://cdn.invalid/1.mp4"],
    "progress": 100,
}


def client_for(server: Server, key: str, **kwargs: Any) -> Client:
    return Client(api_key=key, base_url=server.base_url, **kwargs)


def assert_playable_mp4(path: Path) -> None:
    assert path.read_bytes()[4:8] == b"ftyp"
    info = probe_mp4(path)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["frames"] > 0 and info["faststart"]


# --- the happy path -----------------------------------------------------------


def test_generate_and_wait_then_download_writes_playable_mp4s(
    server: Server, tmp_path: Path
) -> None:
    seen: list[Task] = []
    with client_for(server, server.account()) as client:
        task = client.generate_and_wait(
            PROMPT,
            mode="fun",
            ratio="16:9",
            timeout=120,
            poll_interval=0.1,
            on_progress=seen.append,
        )
        assert task.status == "completed" and task.completed and task.done
        assert task.task_id.startswith("task_") and len(task.response) == 2
        assert task.progress == 100 and task.consumed_credits == 40
        assert task.request.prompt == PROMPT and task.request.ratio == "16:9"
        assert task.created_at is not None and task.created_at.tzinfo is not None
        assert seen and seen[-1].status == "completed"
        paths = client.download(task, tmp_path / "videos")
    assert paths == [tmp_path / "videos" / f"{task.task_id}-{n}.mp4" for n in (1, 2)]
    for path in paths:
        assert_playable_mp4(path)
    assert not list((tmp_path / "videos").glob("*.part"))


def test_generate_returns_a_pending_task_and_status_fills_it_in(server: Server) -> None:
    key = server.account()
    with client_for(server, key) as client:
        task = client.generate(PROMPT)
        assert task.status == "pending" and task.response == []
        server.wait(key, task.task_id)
        done = client.status(task.task_id)
    assert done.status == "completed" and done.request.mode == "normal"
    assert done.to_dict()["created_at"].endswith("Z")


def test_a_local_image_file_is_sent_as_a_data_uri(server: Server, tmp_path: Path) -> None:
    picture = tmp_path / "photo.bin"  # the type is sniffed from the bytes, not the name
    Image.new("RGB", (64, 48), (200, 80, 40)).save(picture, format="PNG")
    with client_for(server, server.account()) as client:
        task = client.generate_and_wait(PROMPT, images=[picture], timeout=120, poll_interval=0.1)
    assert task.completed
    # The server stored the data URI and echoes a signed URL of it, never base64.
    [echoed] = task.request.images
    assert echoed.startswith(server.base_url + "/files/")


def test_a_missing_or_foreign_local_image_is_refused_before_sending(
    server: Server, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    client = client_for(server, server.account())
    with pytest.raises(InvalidRequestError, match="neither"):
        client.generate(PROMPT, images=str(tmp_path / "missing.png"))
    with pytest.raises(InvalidRequestError, match="not a JPEG, PNG or WebP"):
        client.generate(PROMPT, images=[text])
    client.close()


def test_download_by_task_id(server: Server, tmp_path: Path) -> None:
    key = server.account()
    with client_for(server, key) as client:
        task = client.generate(PROMPT)
        server.wait(key, task.task_id)
        paths = client.download(task.task_id, tmp_path)
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)


def test_download_fetches_fresh_urls_when_the_signed_ones_expired(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(url_ttl_seconds=2)
    with client_for(server, server.account()) as client:
        task = client.generate_and_wait(PROMPT, timeout=120, poll_interval=0.1)
        time.sleep(3.2)  # the URLs in ``task`` are now expired: 403 FORBIDDEN
        paths = client.download(task, tmp_path)
    assert len(paths) == 2
    for path in paths:
        assert path.read_bytes()[4:8] == b"ftyp"


def test_key_and_base_url_come_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENIMAGINE_API_KEY", server.account())
    monkeypatch.setenv("OPENIMAGINE_BASE_URL", server.base_url + "/")
    with Client() as client:
        assert client.base_url == server.base_url
        assert client.account().plan == "pro"
    monkeypatch.delenv("OPENIMAGINE_API_KEY")
    with pytest.raises(OpenImagineError, match="OPENIMAGINE_API_KEY"):
        Client()


# --- every exception from a real server response --------------------------------


def test_errors_map_from_real_server_responses(start_server: Callable[..., Server]) -> None:
    server = start_server(max_body_bytes=2000)
    key = server.account()
    client = client_for(server, key, max_retries=0)
    with pytest.raises(InvalidRequestError) as invalid:
        client.generate("   ")
    assert (invalid.value.status, invalid.value.code) == (400, "INVALID_REQUEST")
    assert "prompt" in invalid.value.message

    with pytest.raises(InvalidRequestError) as too_large:
        client.generate("x" * 3000)
    assert (too_large.value.status, too_large.value.code) == (413, "PAYLOAD_TOO_LARGE")

    with pytest.raises(NotFoundError) as missing:
        client.status("task_does_not_exist")
    assert (missing.value.status, missing.value.code) == (404, "NOT_FOUND")
    client.close()

    with (
        client_for(server, "oi_not_a_real_key", max_retries=0) as client,
        pytest.raises(AuthenticationError) as unauthorized,
    ):
        client.status("task_x")
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "UNAUTHORIZED")

    with (
        client_for(server, server.account(credits=0), max_retries=0) as client,
        pytest.raises(InsufficientCreditsError) as broke,
    ):
        client.generate(PROMPT)
    assert (broke.value.status, broke.value.code) == (402, "INSUFFICIENT_CREDITS")


def test_rate_limit_error_carries_retry_after(start_server: Callable[..., Server]) -> None:
    server = start_server(rate_limits="free=2,pro=1000,enterprise=5000")
    with client_for(server, server.account(plan="free"), max_retries=0) as client:
        for _ in range(2):
            client.account()
        with pytest.raises(RateLimitError) as limited:
            client.status("task_x")
    assert (limited.value.status, limited.value.code) == (429, "RATE_LIMITED")
    assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 60


def test_a_failed_task_raises_task_failed_error(start_server: Callable[..., Server]) -> None:
    server = start_server(engine="test-fail")
    with (
        client_for(server, server.account()) as client,
        pytest.raises(TaskFailedError) as failed,
    ):
        client.generate_and_wait(PROMPT, timeout=120, poll_interval=0.1)
    assert failed.value.error_message == "video build failed"
    assert failed.value.task.status == "failed" and failed.value.task.consumed_credits == 0


def test_a_slow_task_raises_a_timeout_error(start_server: Callable[..., Server]) -> None:
    server = start_server(engine="test-sleep", test_sleep_seconds=30)
    with client_for(server, server.account()) as client:
        started = time.monotonic()
        with pytest.raises(TaskTimeoutError) as slow:
            client.generate_and_wait(PROMPT, timeout=0.5, poll_interval=0.1)
    assert isinstance(slow.value, TimeoutError)
    assert slow.value.task.status in ("pending", "processing")
    assert time.monotonic() - started < 20


# --- retries, against a tiny scripted HTTP server ---------------------------------


@dataclass
class Scripted:
    """A real HTTP server answering from a script of (status, headers, body)."""

    base_url: str
    script: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    hits: list[tuple[str, str, float]] = field(default_factory=list)
    # The Idempotency-Key header of each hit (None when absent).
    keys: list[str | None] = field(default_factory=list)


def _ok(data: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    return 200, {}, {"code": 200, "message": "success", "data": data}


def _error(
    status: int, error: str, message: str, **headers: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    return (
        status,
        {k.replace("_", "-"): v for k, v in headers.items()},
        {"code": status, "message": message, "error": error},
    )


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    state = Scripted(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            state.hits.append((self.command, self.path, time.monotonic()))
            state.keys.append(self.headers.get("Idempotency-Key"))
            status, headers, body = state.script.pop(0) if state.script else _ok(STATUS_DATA)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_429_waits_for_retry_after_then_succeeds(scripted: Scripted) -> None:
    scripted.script = [_error(429, "RATE_LIMITED", "Rate limit exceeded", Retry_After="1")]
    with Client(api_key="oi_test", base_url=scripted.base_url, max_retries=2) as client:
        task = client.status("task_scripted")
    assert task.status == "completed"
    assert len(scripted.hits) == 2
    assert scripted.hits[1][2] - scripted.hits[0][2] >= 1.0


def test_429_without_retry_after_uses_x_ratelimit_reset(scripted: Scripted) -> None:
    reset = str(int(time.time()) + 2)  # epoch seconds, as the contract sends it
    scripted.script = [_error(429, "RATE_LIMITED", "Rate limit exceeded", X_RateLimit_Reset=reset)]
    with Client(api_key="oi_test", base_url=scripted.base_url, max_retries=1) as client:
        client.status("task_scripted")
    assert len(scripted.hits) == 2
    assert scripted.hits[1][2] - scripted.hits[0][2] >= 0.9


def test_a_retry_after_too_long_to_wait_is_raised_at_once(scripted: Scripted) -> None:
    scripted.script = [_error(429, "RATE_LIMITED", "Rate limit exceeded", Retry_After="120")]
    with (
        Client(api_key="oi_test", base_url=scripted.base_url, max_retries=3) as client,
        pytest.raises(RateLimitError) as limited,
    ):
        client.status("task_scripted")
    assert limited.value.retry_after == 120 and len(scripted.hits) == 1


def test_retries_give_up_after_max_retries(scripted: Scripted) -> None:
    scripted.script = [_error(503, "SERVICE_UNAVAILABLE", "Service unavailable")] * 3
    with (
        Client(api_key="oi_test", base_url=scripted.base_url, max_retries=2) as client,
        pytest.raises(ServerError) as unavailable,
    ):
        client.status("task_scripted")
    assert unavailable.value.status == 503 and len(scripted.hits) == 3


def test_generate_retries_with_one_idempotency_key_so_it_never_bills_twice(
    scripted: Scripted,
) -> None:
    with Client(api_key="oi_test", base_url=scripted.base_url, max_retries=2) as client:
        scripted.script = [
            _error(503, "SERVICE_UNAVAILABLE", "Service unavailable"),
            _ok({"task_id": "task_after_503"}),
        ]
        assert client.generate(PROMPT).task_id == "task_after_503"
        assert [hit[0] for hit in scripted.hits] == ["POST", "POST"]
        first_key = scripted.keys[0]
        assert first_key and scripted.keys == [first_key, first_key]

        # A 500 (or a 409: the first attempt still runs) may come after the task
        # was created: the retry carries the same key, so the server answers the
        # same task instead of making a second one.
        scripted.hits.clear()
        scripted.keys.clear()
        scripted.script = [
            _error(500, "INTERNAL_ERROR", "Internal server error"),
            _error(409, "CONFLICT", "still being handled"),
            _ok({"task_id": "task_once"}),
        ]
        assert client.generate(PROMPT).task_id == "task_once"
        assert len(scripted.hits) == 3 and len(set(scripted.keys)) == 1
        assert scripted.keys[0] != first_key  # a new submit, a new key
        assert client.generate(PROMPT, idempotency_key="mine-1") and scripted.keys[-1] == "mine-1"

        # The same 500 on a read is retried.
        scripted.hits.clear()
        scripted.script = [_error(500, "INTERNAL_ERROR", "Internal server error")]
        assert client.status("task_scripted").completed
        assert len(scripted.hits) == 2


def test_an_error_only_in_the_envelope_is_still_an_error(scripted: Scripted) -> None:
    # Some servers answer HTTP 200 and put the error in the body's "code".
    scripted.script = [
        (200, {}, {"code": 402, "message": "Insufficient credits", "error": "INSUFFICIENT_CREDITS"})
    ]
    with (
        Client(api_key="oi_test", base_url=scripted.base_url, max_retries=0) as client,
        pytest.raises(InsufficientCreditsError, match="Insufficient credits"),
    ):
        client.generate(PROMPT)


def test_the_client_waits_out_a_server_that_is_briefly_down(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(tmp_path, port=port)
    db = Database(settings.resolved_database_url)
    migrate.upgrade(db)
    key = make_account(db)
    stops: list[Callable[[], None]] = []

    def start_later() -> None:
        time.sleep(1.5)
        stops.append(_serve_in_thread(settings, None)[1])

    starter = threading.Thread(target=start_later, daemon=True)
    starter.start()
    try:
        with Client(api_key=key, base_url=f"http://127.0.0.1:{port}", max_retries=8) as client:
            started = time.monotonic()
            # Connection refused means the request was never sent: even the
            # non-idempotent POST is retried.
            task = client.generate(PROMPT)
            assert time.monotonic() - started >= 1.0
            done = client.wait(task, timeout=120, poll_interval=0.1)
        assert done.completed and len(done.response) == 2
    finally:
        starter.join(timeout=60)
        for stop in stops:
            stop()
        db.dispose()


def test_with_no_retries_a_down_server_is_a_connection_error() -> None:
    with (
        Client(
            api_key="oi_test", base_url=f"http://127.0.0.1:{free_port()}", max_retries=0
        ) as client,
        pytest.raises(APIConnectionError, match="cannot reach"),
    ):
        client.status("task_x")


# --- the async client ---------------------------------------------------------------


def test_async_client_generates_waits_and_downloads(server: Server, tmp_path: Path) -> None:
    key = server.account()
    progress: list[int] = []

    async def on_progress(task: Task) -> None:
        progress.append(task.progress)

    async def main() -> tuple[Task, list[Path], Task]:
        async with AsyncClient(api_key=key, base_url=server.base_url) as client:
            task = await client.generate_and_wait(
                PROMPT, mode="spicy", timeout=120, poll_interval=0.1, on_progress=on_progress
            )
            paths = await client.download(task, tmp_path)
            again = await client.status(task.task_id)
            with pytest.raises(NotFoundError):
                await client.status("task_missing")
            return task, paths, again

    task, paths, again = asyncio.run(main())
    assert task.completed and again.task_id == task.task_id and progress[-1] == 100
    assert len(paths) == 2
    for path in paths:
        assert_playable_mp4(path)


def test_async_client_honours_retry_after(scripted: Scripted) -> None:
    scripted.script = [_error(429, "RATE_LIMITED", "Rate limit exceeded", Retry_After="1")]

    async def main() -> Task:
        async with AsyncClient(api_key="oi_test", base_url=scripted.base_url) as client:
            return await client.status("task_scripted")

    assert asyncio.run(main()).completed
    assert len(scripted.hits) == 2 and scripted.hits[1][2] - scripted.hits[0][2] >= 1.0


def test_async_client_maps_errors(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(
            api_key="oi_wrong_key", base_url=server.base_url, max_retries=0
        ) as client:
            await client.status("task_x")

    with pytest.raises(AuthenticationError):
        asyncio.run(main())
