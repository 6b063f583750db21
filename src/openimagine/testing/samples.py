"""Small real MP4 files for tests and demos, in the shapes upstream video APIs return.

Upstream APIs do not all hand back browser-ready H.264: some send MPEG-4 Part 2,
4:4:4 chroma, odd sizes, or files with the ``moov`` atom after ``mdat``. These
helpers make such files for real (with PyAV, no canned bytes), so the code that
normalizes them is exercised against what an actual decoder sees.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import OutputContainer

_ENCODERS: dict[str, Literal["libx264", "mpeg4"]] = {"h264": "libx264", "mpeg4": "mpeg4"}
AUDIO_RATE = 48000
# AAC encodes fixed blocks of 1024 samples; handing it frames of that size avoids
# relying on PyAV's internal resampler to re-chunk them.
_AAC_FRAME = 1024


def _frame(index: int, fps: int, width: int, height: int) -> np.ndarray:
    """A colour gradient that slides and changes hue over time.

    Motion matters: a static picture compresses to almost nothing and would not
    catch a bug that drops or reorders frames.
    """
    y, x = np.mgrid[0:height, 0:width]
    t = index / fps
    red = (x * 255 // max(width - 1, 1) + index * 8) % 256
    green = (y * 255 // max(height - 1, 1) + index * 5) % 256
    blue = np.full_like(x, int(127 + 127 * math.sin(2 * math.pi * t)))
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def make_sample_mp4(
    path: Path,
    *,
    seconds: float = 1.0,
    fps: int = 8,
    width: int = 64,
    height: int = 64,
    codec: str = "h264",
    pix_fmt: str = "yuv420p",
    faststart: bool = False,
    audio: bool = False,
) -> Path:
    """Write a real MP4 of moving colour frames to ``path`` and return ``path``.

    ``codec`` is ``"h264"`` (libx264) or ``"mpeg4"``. Unless ``faststart`` is set
    the ``moov`` atom comes after ``mdat``, as FFmpeg's mp4 muxer writes it by
    default and as many upstream servers deliver it. ``audio`` adds a 440 Hz AAC
    mono track of the same length.
    """
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, got {codec!r}")
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"fps and seconds must be positive, got {fps} and {seconds}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(1, round(seconds * fps))
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        video = container.add_stream(_ENCODERS[codec], rate=fps)
        video.width = width
        video.height = height
        video.pix_fmt = pix_fmt
        if codec == "h264":
            # Fast, and no B-frame lookahead surprises in frame counts.
            video.options = {"preset": "ultrafast"}
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=AUDIO_RATE)
            sound.layout = "mono"
            sound.format = "fltp"  # the only sample format FFmpeg's native AAC encoder takes
        sent = 0  # audio samples encoded so far
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(_frame(index, fps, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
            if sound is not None:
                # Audio keeps pace with the video, so the file is interleaved the
                # way real ones are (a truncated download loses both streams).
                until = (index + 1) * AUDIO_RATE // fps
                sent = _encode_tone(container, sound, sent, until, last=index == count - 1)
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    return path


def _encode_tone(
    container: OutputContainer, sound: AudioStream, start: int, until: int, *, last: bool
) -> int:
    """Encode a 440 Hz tone from sample ``start`` in whole AAC blocks; return where it stopped.

    Only the ``last`` call encodes a final short block: earlier ones leave the
    remainder for the next call, so every block but the last is full-sized.
    """
    while until - start >= _AAC_FRAME or (last and start < until):
        n = min(_AAC_FRAME, until - start)
        t = np.arange(start, start + n, dtype=np.float64) / AUDIO_RATE
        wave = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :]
        block = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        block.sample_rate = AUDIO_RATE
        block.pts = start
        block.time_base = Fraction(1, AUDIO_RATE)
        container.mux(sound.encode(block))
        start += n
    return start


@functools.lru_cache(maxsize=64)
def _sample_bytes(items: tuple[tuple[str, Any], ...]) -> bytes:
    handle, name = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    try:
        make_sample_mp4(Path(name), **dict(items))
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


def sample_mp4_bytes(**kwargs: Any) -> bytes:
    """The bytes of ``make_sample_mp4(**kwargs)``, encoded once per distinct kwargs.

    A fake upstream server serves the same clip many times; encoding it on every
    request would make tests slow for no benefit. ``bytes`` are immutable, so
    sharing one cached object between callers is safe.
    """
    return _sample_bytes(tuple(sorted(kwargs.items())))
