"""The engine protocol: what the runner hands an engine and what it gets back.

An engine turns one ``Job`` into ``job.variations`` clips. It never touches the
database, the network or the file system of outputs: the runner fetches and
decodes the inputs before, and encodes and stores the clips after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

MODES = ("fun", "normal", "spicy")
RATIOS = ("2:3", "3:2", "1:1", "16:9", "9:16")


class Cancelled(Exception):
    """Raised inside an engine when ``job.is_cancelled()`` turned true."""


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
    max_images: int = 7


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


@dataclass
class Clip:
    """One output video: RGB ``uint8`` frames of shape (height, width, 3)."""

    frames: Iterable[np.ndarray]
    fps: int
    width: int
    height: int
    seed: int | None = None


@runtime_checkable
class Engine(Protocol):
    info: EngineInfo

    def generate(self, job: Job) -> list[Clip]:
        """Render ``job.variations`` clips. May run for minutes; runs off the event loop."""
        ...
