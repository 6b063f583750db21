"""The asynchronous client: the same API as ``Client``, with ``await``."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

from openimagine.client import _base
from openimagine.client._base import Images
from openimagine.client._errors import PermissionDeniedError, TaskFailedError, TaskTimeoutError
from openimagine.client._models import Account, Task


class AsyncClient:
    """``Client`` for asyncio (on ``httpx.AsyncClient``); same arguments, same retries."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = _base.DEFAULT_TIMEOUT,
        max_retries: int = _base.DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_key, self.base_url = _base.resolve_config(api_key, base_url)
        self.max_retries = max_retries
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self._headers = _base.default_headers(self.api_key)

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- the API ------------------------------------------------------------

    async def generate(
        self,
        prompt: str,
        *,
        mode: str | None = None,
        ratio: str | None = None,
        images: Images = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Submit a generation; returns the new ``pending`` task (only ``task_id`` is known).

        ``images``: http(s) URLs, data URIs, or paths of local JPEG/PNG/WebP
        files (sent as data URIs).
        """
        body = _base.generate_body(prompt, mode=mode, ratio=ratio, images=images)
        # One key for this submit and its retries: a retry can never bill twice.
        key = idempotency_key or _base.new_idempotency_key()
        data = await self._request(
            "POST",
            "/v1/generate",
            json=body,
            idempotent=True,
            headers={_base.IDEMPOTENCY_HEADER: key},
        )
        return Task.from_data({"status": "pending", **data})

    async def status(self, task_id: str) -> Task:
        data = await self._request(
            "GET", "/v1/status", params={"task_id": task_id}, idempotent=True
        )
        return Task.from_data(data, task_id=task_id)

    async def account(self) -> Account:
        """Plan, balance, rate limit and recent usage (openimagine's ``GET /v1/account``)."""
        return Account.from_data(await self._request("GET", "/v1/account", idempotent=True))

    async def wait(
        self,
        task: Task | str,
        *,
        timeout: float = 600,
        poll_interval: float = 2.0,
        on_progress: Callable[[Task], Any] | None = None,
    ) -> Task:
        """Wait until the task is done; ``on_progress(task)`` (plain or async) on every change.

        Follows the server's live status stream; where it has none, or the
        stream breaks, polls every ``poll_interval`` seconds instead. Raises
        ``TaskFailedError`` if it failed and ``TaskTimeoutError`` (a
        ``TimeoutError``) after ``timeout`` seconds; the task itself goes on.
        """
        task_id = task if isinstance(task, str) else task.task_id
        deadline = time.monotonic() + timeout
        current = await self._follow_stream(task_id, deadline, timeout, on_progress)
        if current is not None and current.done:
            if current.failed:
                raise TaskFailedError(current)
            return current
        current = await self.status(task_id)
        while True:
            if on_progress is not None:
                result = on_progress(current)
                if inspect.isawaitable(result):
                    await result
            if current.done:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TaskTimeoutError(current, timeout)
            await asyncio.sleep(min(poll_interval, remaining))
            current = await self.status(task_id)
        if current.failed:
            raise TaskFailedError(current)
        return current

    async def generate_and_wait(
        self,
        prompt: str,
        *,
        mode: str | None = None,
        ratio: str | None = None,
        images: Images = None,
        timeout: float = 600,
        poll_interval: float = 2.0,
        on_progress: Callable[[Task], Any] | None = None,
    ) -> Task:
        """``generate`` then ``wait``: the completed task, with its video URLs."""
        task = await self.generate(prompt, mode=mode, ratio=ratio, images=images)
        return await self.wait(
            task, timeout=timeout, poll_interval=poll_interval, on_progress=on_progress
        )

    async def download(self, task: Task | str, dir: str | os.PathLike[str]) -> list[Path]:
        """Stream every video of a completed task to ``dir/<task_id>-<n>.mp4`` (n from 1)."""
        current = await self.status(task) if isinstance(task, str) else task
        if not current.done:
            current = await self.status(current.task_id)
        _base.ensure_downloadable(current)
        directory = Path(dir)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in range(len(current.response)):
            path = _base.download_path(directory, current.task_id, index + 1)
            try:
                await self._download_one(current.response[index], path)
            except PermissionDeniedError:
                # Signed URLs expire: fetch fresh ones and try this file once more.
                current = await self.status(current.task_id)
                await self._download_one(current.response[index], path)
            paths.append(path)
        return paths

    # --- transport ----------------------------------------------------------

    async def _follow_stream(
        self,
        task_id: str,
        deadline: float,
        timeout: float,
        on_progress: Callable[[Task], Any] | None,
    ) -> Task | None:
        """The task's last state from ``GET /v1/status/stream``; None when the server
        offers no stream (or refused it: polling then says why)."""
        url = self.base_url + _base.STREAM_PATH
        current: Task | None = None
        parser = _base.SSEParser()
        try:
            async with self._http.stream(
                "GET",
                url,
                params={"task_id": task_id},
                headers=self._headers,
                timeout=httpx.Timeout(_base.STREAM_READ_TIMEOUT, connect=10.0),
            ) as response:
                if response.status_code != 200 or not response.headers.get(
                    "content-type", ""
                ).startswith("text/event-stream"):
                    return None
                async for line in response.aiter_lines():
                    data = parser.feed(line)
                    if data is not None:
                        current = Task.from_data(data, task_id=task_id)
                        if on_progress is not None:
                            result = on_progress(current)
                            if inspect.isawaitable(result):
                                await result
                        if current.done:
                            return current
                    if time.monotonic() > deadline:
                        raise TaskTimeoutError(
                            current or Task.from_data({"status": "pending"}, task_id=task_id),
                            timeout,
                        )
        except httpx.TransportError:
            pass  # the stream broke: polling takes over
        return current

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        idempotent: bool,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers={**self._headers, **(headers or {})},
                )
            except httpx.TransportError as exc:
                delay = _base.retry_delay_after_error(
                    exc, attempt=attempt, max_retries=self.max_retries, idempotent=idempotent
                )
                if delay is None:
                    raise _base.connection_error(exc, url) from exc
            else:
                delay = _base.retry_delay_after_response(
                    response,
                    attempt=attempt,
                    max_retries=self.max_retries,
                    idempotent=idempotent,
                    keyed=bool(headers),
                )
                if delay is None:
                    return _base.raise_for_response(response)
            await asyncio.sleep(delay)
            attempt += 1

    async def _download_one(self, url: str, path: Path) -> None:
        # No Authorization header: the URLs are signed, and may point at a CDN.
        partial = path.with_name(path.name + ".part")
        attempt = 0
        while True:
            try:
                async with self._http.stream(
                    "GET", url, headers=_base.download_headers()
                ) as response:
                    if response.status_code < 400:
                        with partial.open("wb") as out:
                            async for chunk in response.aiter_bytes():
                                out.write(chunk)
                        partial.replace(path)
                        return
                    await response.aread()
                delay = _base.retry_delay_after_response(
                    response, attempt=attempt, max_retries=self.max_retries, idempotent=True
                )
                if delay is None:
                    raise _base.error_from_response(response)
            except httpx.TransportError as exc:
                partial.unlink(missing_ok=True)
                delay = _base.retry_delay_after_error(
                    exc, attempt=attempt, max_retries=self.max_retries, idempotent=True
                )
                if delay is None:
                    raise _base.connection_error(exc, url) from exc
            await asyncio.sleep(delay)
            attempt += 1
