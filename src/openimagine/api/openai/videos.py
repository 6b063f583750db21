"""The OpenAI face's meaning: a create request as a task, a task as a Video object.

- ``size`` (``WIDTHxHEIGHT``) picks the task's aspect ratio (the nearest the
  model makes) and its short side (snapped to the model's resolutions when it
  has a fixed set, like xAI's 480p and 720p); without it, 9:16 (OpenAI's
  default ``720x1280`` is portrait) at the model's resolution.
- ``seconds`` is the task's duration (default: the model's).
- One video per job, priced at the model's price divided by its variations,
  rounded up.
- The Video object's ``size`` and ``seconds`` are what was rendered once the
  task completed (``tasks.media``), and what will be rendered before.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from openimagine import inputs
from openimagine.api.bodies import trimmed
from openimagine.catalog import Model
from openimagine.engines.base import EngineInfo, frame_size, ratio_parts
from openimagine.errors import InvalidRequest
from openimagine.patterns import int_range
from openimagine.services.lifecycle import CANCELLED
from openimagine.services.retention import expires_at as files_expire_at
from openimagine.store.db import Record
from openimagine.store.models import TaskStatus

MAX_PROMPT = 32000
MAX_SECONDS = 60
MIN_SIDE, MAX_SIDE = 16, 4096
# ``size`` and ``seconds`` as the OpenAPI document says them and as parse_size and
# parse_seconds read them: one pattern each ("" means the default).
_SIDE = int_range(MIN_SIDE, MAX_SIDE)
SIZE_PATTERN = f"^(?:({_SIDE})[xX\\u00d7]({_SIDE}))?$"
SECONDS_PATTERN = f"^(?:{int_range(1, MAX_SECONDS)})?$"
SIZE, SECONDS = re.compile(SIZE_PATTERN), re.compile(SECONDS_PATTERN)
# When a request gives no size: OpenAI's default is portrait 720x1280.
DEFAULT_RATIO = "9:16"
STATUS = {
    TaskStatus.PENDING: "queued",
    TaskStatus.PROCESSING: "in_progress",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
}
ERROR_CODES = {
    "Inappropriate content, please try another prompt.": "moderation_blocked",
    "File type not supported": "invalid_input",
    "Network error, please try again later.": "network_error",
    "video build failed": "video_build_failed",
    CANCELLED: "cancelled",
}
# openai-poll-after-ms: never below this, and not so long that a finished task waits.
POLL_AFTER_MIN_MS, POLL_AFTER_MAX_MS = 500, 10_000


class BadField(InvalidRequest):
    """An invalid field, named in OpenAI's ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class VideoRequest:
    model: Model
    prompt: str
    ratio: str
    resolution: int | None
    duration: float | None
    image_refs: list[str]
    # The job's own webhook receiver (an openimagine extension of OpenAI's request).
    webhook: str | None = None


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str:
    wanted = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio_parts(ratio)
        return abs(math.log(w / h) - wanted)

    return min(ratios, key=distance)


def parse_size(value: object, model: Model, info: EngineInfo) -> tuple[str, int | None]:
    """(ratio, short side) for ``size``; short side None: the model's."""
    if value is None or value == "":
        return (DEFAULT_RATIO if DEFAULT_RATIO in info.ratios else info.ratios[0]), None
    match = SIZE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        if isinstance(value, str) and re.fullmatch("[0-9]+[xX\u00d7][0-9]+", value):
            raise BadField(
                "size", f"size must be between {MIN_SIDE}x{MIN_SIDE} and {MAX_SIDE}x{MAX_SIDE}"
            )
        raise BadField("size", "size must be WIDTHxHEIGHT, e.g. 1280x720")
    width, height = int(match.group(1)), int(match.group(2))
    short = min(width, height)
    if info.resolutions:
        short = min(info.resolutions, key=lambda allowed: abs(allowed - short))
    return nearest_ratio(width, height, info.ratios), short


def parse_seconds(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():  # JSON's 8.0 is the integer 8
        value = int(value)
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not SECONDS.fullmatch(text):
        raise BadField("seconds", f"seconds must be a whole number from 1 to {MAX_SECONDS}")
    return float(int(text))


def parse_prompt(value: object) -> str:
    prompt = trimmed(value) if isinstance(value, str) else ""
    if not prompt:
        raise BadField("prompt", "prompt is required")
    if len(prompt) > MAX_PROMPT:
        raise BadField("prompt", f"prompt must be at most {MAX_PROMPT} characters")
    if "\x00" in prompt:
        raise BadField("prompt", "prompt must not contain NUL characters")
    return prompt


def image_url_of(fields: Mapping[str, Any]) -> str | None:
    """``input_reference`` given as a URL: ``{"image_url": ...}`` (JSON) or the SDK's
    bracketed multipart field ``input_reference[image_url]``."""
    nested = fields.get("input_reference")
    if nested is not None and not isinstance(nested, dict):  # a file part is not in fields
        raise BadField(
            "input_reference",
            "input_reference must be an object with an image_url, or an uploaded file",
        )
    url = nested.get("image_url") if isinstance(nested, dict) else None
    if url is None:
        url = fields.get("input_reference[image_url]")
    if url is None:
        return None
    if not isinstance(url, str):
        raise BadField("input_reference", "input_reference.image_url must be a string")
    try:
        refs = inputs.parse_image_refs(url)
    except inputs.InvalidImageReference as exc:
        raise BadField("input_reference", str(exc)) from None
    return refs[0] if refs else None


def video_price(model: Model) -> int:
    """One video of a model whose price buys ``variations`` of them, rounded up."""
    return -(-model.price // max(1, model.variations))


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def video_object(
    task: Record, model: Model | None, retention: timedelta | None = None
) -> dict[str, Any]:
    """The Video object of a task (either face's); ``model`` None when the models file
    no longer has the task's model; ``retention`` how long finished tasks keep their
    files (``expires_at``; None: forever)."""
    media = task.media or {}
    if media:
        width, height, seconds = media["width"], media["height"], media["seconds"]
    else:
        settings = model.settings if model else None
        resolution = task.resolution or (settings.resolution if settings else 480)
        width, height = frame_size(task.ratio, resolution)
        seconds = task.duration or (settings.duration if settings else 0)
    failed = task.status == TaskStatus.FAILED
    message = task.error_message or "video build failed"
    return {
        "id": task.id,
        "object": "video",
        "model": task.model,
        "status": STATUS.get(task.status, task.status),
        "progress": 100 if task.status == TaskStatus.COMPLETED else task.progress,
        "created_at": _epoch(task.created_at),
        "completed_at": _epoch(task.finished_at) if task.status == TaskStatus.COMPLETED else None,
        "expires_at": _epoch(files_expire_at(task.finished_at, task.files_expired_at, retention)),
        "prompt": task.prompt,
        "seconds": str(round(seconds)),
        "size": f"{width}x{height}",
        "remixed_from_video_id": task.remixed_from,
        "error": {"code": ERROR_CODES.get(message, "video_build_failed"), "message": message}
        if failed
        else None,
    }


def poll_after_ms(task: Record) -> int:
    """About the time left: the elapsed time scaled by the progress still to go."""
    if task.status == TaskStatus.PROCESSING and task.progress and task.started_at is not None:
        elapsed = max(0.0, time.time() - task.started_at.timestamp())
        left = elapsed * (100 - task.progress) / task.progress
        return int(min(POLL_AFTER_MAX_MS, max(POLL_AFTER_MIN_MS, left * 1000)))
    return 1000
