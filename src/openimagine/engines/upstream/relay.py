"""What the upstream adapters share: the answer to a poll, and how a job's
prompt and images are put for an upstream."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from openimagine.catalog import Model
from openimagine.engines.base import Job
from openimagine.imagetypes import sniff_image_type


@dataclass(frozen=True)
class Poll:
    """One upstream job, as its latest poll describes it."""

    state: str  # "pending", "running", "done" or "failed"
    progress: float  # 0..1
    video_url: str | None = None
    moderated: bool = False
    # The upstream's own words about a failure: for operators, never for clients.
    detail: str = ""


def job_id(response: httpx.Response, field: str) -> str:
    """The upstream's id of the job it just created (``field`` of its JSON answer)."""
    value = (response.json() or {}).get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"no {field} in the answer: {response.text[:200]}")
    return value


def failed_poll(body: dict, status: str, progress: float, moderated: Callable[[str], bool]) -> Poll:
    """A failed job's poll: the upstream's error code and message kept for operators."""
    error = body.get("error") or {}
    code = str(error.get("code") or status)
    return Poll(
        "failed",
        progress,
        moderated=moderated(code),
        detail=f"{status}: {code}: {error.get('message') or ''}".strip(),
    )


def prompt_with_mode(model: Model, job: Job) -> str:
    """Upstream APIs have no mode: the mode's text (``mode_prompts``) joins the prompt."""
    extra = model.mode_prompts.get(job.mode, "")
    return f"{job.prompt}\n\n{extra}" if extra else job.prompt


def _content_type(data: bytes) -> str:
    # The runner checked every input is JPEG, PNG or WebP by its bytes.
    return f"image/{sniff_image_type(data) or 'png'}"


def data_url(data: bytes) -> str:
    """An image as a ``data:`` URL (what xAI takes for an image it cannot fetch)."""
    return f"data:{_content_type(data)};base64,{base64.b64encode(data).decode('ascii')}"


def image_file(data: bytes) -> tuple[str, bytes, str]:
    """An image as a multipart file part ``(filename, bytes, content type)``."""
    content_type = _content_type(data)
    return f"input.{content_type.split('/')[1]}", data, content_type
