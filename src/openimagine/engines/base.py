"""The engine protocol: what the runner hands an engine and what it gets back.

An engine turns one ``Job`` into ``job.variations`` clips. It never touches the
database or the file system of outputs: the runner fetches and decodes the
inputs before, and encodes and stores the clips after.

A relay engine (``engines/upstream``) renders nothing itself: it hands the job
to another video API and returns the downloaded files as ``VideoFile``s. What
it must remember across a crash (its upstream job ids) goes through
``job.save_state``, which the runner writes on the task before the engine
goes on; a task taken over comes back with it in ``job.resume``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from openimagine.inputs.refs import MAX_IMAGES

MODES = ("fun", "normal", "spicy")
RATIOS = ("2:3", "3:2", "1:1", "16:9", "9:16")


class Cancelled(Exception):
    """Raised inside an engine when ``job.is_cancelled()`` turned true."""


class EngineFailure(Exception):
    """A job that failed for a reason the engine understands: the task fails with
    ``public_message`` (one of the contract's task messages), and the exception's
    text goes to the operator's ``error_detail`` only."""

    public_message = "video build failed"


class ContentRefused(EngineFailure):
    public_message = "Inappropriate content, please try another prompt."


class UpstreamUnreachable(EngineFailure):
    public_message = "Network error, please try again later."


def ratio_parts(ratio: str) -> tuple[int, int]:
    width, _, height = ratio.partition(":")
    return int(width), int(height)


def frame_size(ratio: str, short_side: int, multiple: int = 2) -> tuple[int, int]:
    """(width, height) for ``ratio`` with the short side near ``short_side``.

    Both sides are multiples of ``multiple`` (2 for H.264 ``yuv420p``, 16 for
    Wan, 32 for LTX, 8 for CogVideoX), chosen to keep the aspect ratio closest.
    """
    rw, rh = ratio_parts(ratio)
    short = max(multiple, round(short_side / multiple) * multiple)
    long_exact = short * max(rw, rh) / min(rw, rh)
    long = max(multiple, round(long_exact / multiple) * multiple)
    return (long, short) if rw >= rh else (short, long)


@dataclass(frozen=True)
class EngineInfo:
    """What an engine supports; shown by ``openimagine engines`` and checked at submission."""

    name: str
    description: str
    modes: tuple[str, ...] = MODES
    ratios: tuple[str, ...] = RATIOS
    image_input: bool = True
    # The contract's limit; an engine whose model takes fewer says so.
    max_images: int = MAX_IMAGES
    # Relays wait on another API: many run at once, never behind a local engine's lock.
    relay: bool = False
    # Short sides the engine can make (None: any); a requested size snaps to the nearest.
    resolutions: tuple[int, ...] | None = None


@dataclass
class Job:
    task_id: str
    prompt: str
    mode: str
    ratio: str
    images: Sequence[Image.Image]
    variations: int
    duration: float
    fps: int
    resolution: int
    # Called with a fraction 0..1 of the whole job; cheap to call often.
    on_progress: Callable[[float], None] = field(default=lambda fraction: None)
    # Engines check this between steps and raise ``Cancelled`` when it is true.
    is_cancelled: Callable[[], bool] = field(default=lambda: False)
    # The bytes of each image, as fetched and checked (JPEG, PNG or WebP): what a
    # relay sends upstream, so the upstream sees exactly what was checked.
    image_data: Sequence[bytes] = ()
    # Relays: state saved by an earlier attempt of this task, and how to save it
    # (durably, before returning; raises ``Cancelled`` if the task is no longer ours).
    resume: dict | None = None
    save_state: Callable[[dict], None] = field(default=lambda state: None)
    # A scratch folder for files the engine returns; the runner removes it.
    scratch: Path | None = None
    # Which of duration/resolution the task asked for itself (the OpenAI face's
    # seconds and size), rather than taking its model's: a relay that falls back
    # to another model keeps these and takes that model's own for the rest.
    pinned: frozenset[str] = frozenset()


@dataclass
class Clip:
    """One output video: RGB ``uint8`` frames of shape (height, width, 3)."""

    frames: Iterable[np.ndarray]
    fps: int
    width: int
    height: int
    seed: int | None = None


@dataclass
class VideoFile:
    """One output video as a file (a relay's download); the runner makes it faststart
    H.264 ``yuv420p`` (re-muxed, or transcoded when it is not) before storing it."""

    path: Path
    # The model that rendered it, when a relay fell back to another one.
    model: str | None = None


@runtime_checkable
class Engine(Protocol):
    info: EngineInfo

    def generate(self, job: Job) -> Sequence[Clip | VideoFile]:
        """Render ``job.variations`` clips. May run for minutes; runs off the event loop."""
        ...
