"""H.264 MP4 encoding of engine frames, and a probe used by tests and benches.

Outputs are meant to play in any browser straight from a URL, hence H.264 in
``yuv420p`` (the only chroma layout every decoder supports) with the ``moov``
atom before ``mdat`` ("faststart") so playback can begin before the download ends.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

# x264 speed/quality trade-off, measured on 480x480 preview clips: ``ultrafast``
# with CABAC and the deblocking filter switched back on costs the same CPU as plain
# ``ultrafast`` (about 40% of ``veryfast``) but gives smaller files than
# ``superfast`` and no blocking on smooth gradients, at crf 23 (x264's default).
PRESET = "ultrafast"
X264_PARAMS = "cabac=1:deblock=1"
CRF = 23
# Untagged H.264 leaves the RGB->YUV matrix to the player's guess (browsers and
# FFmpeg disagree, shifting colours); convert with BT.709 and say so in the stream.
BT709 = 1  # AVCOL_SPC_BT709 == AVCOL_PRI_BT709 == AVCOL_TRC_BT709
LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG, what every player expects


def encode_mp4(
    frames: Iterable[np.ndarray], path: Path, *, fps: int, width: int, height: int
) -> int:
    """Encode RGB ``uint8`` frames of shape (height, width, 3) into ``path``.

    Returns the number of frames written. The file appears atomically: it is
    written next to ``path`` under a temporary name and renamed at the end, so
    a reader never sees a half-written video.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        # yuv420p subsamples chroma by 2 in both directions.
        raise ValueError(f"width and height must be positive and even, got {width}x{height}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mp4", dir=path.parent)
    os.close(handle)
    try:
        count = _encode(frames, temp_name, fps=fps, width=width, height=height)
        os.replace(temp_name, path)
    except BaseException:
        # Also on Cancelled or KeyboardInterrupt: never leave temp files behind.
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    return count


def _encode(
    frames: Iterable[np.ndarray], filename: str, *, fps: int, width: int, height: int
) -> int:
    expected = (height, width, 3)
    count = 0
    pending: Future[None] | None = None
    with (
        av.open(filename, mode="w", format="mp4", options={"movflags": "+faststart"}) as container,
        # Frames are pulled (rendered) in the caller's thread, so engine callbacks
        # stay there, while this thread converts and encodes the previous frame:
        # both halves release the GIL, so a two-core machine runs them side by side.
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode_mp4") as encoder,
    ):
        stream = container.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": PRESET, "x264-params": X264_PARAMS, "crf": str(CRF)}
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = BT709
        context.color_range = LIMITED_RANGE

        def encode_one(rgb: av.VideoFrame) -> None:
            yuv = rgb.reformat(
                format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
            )
            yuv.pts = rgb.pts
            yuv.time_base = Fraction(1, fps)
            container.mux(stream.encode(yuv))

        for frame in frames:
            array = np.asarray(frame)
            if array.shape != expected or array.dtype != np.uint8:
                raise ValueError(
                    f"frame {count}: expected uint8 array of shape {expected}, "
                    f"got {array.dtype} {array.shape}"
                )
            # Copied here, so an engine may reuse its buffer for the next frame.
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            rgb.pts = count
            if pending is not None:
                pending.result()  # one frame in flight: bounded memory, errors surface early
            pending = encoder.submit(encode_one, rgb)
            count += 1
        if pending is not None:
            pending.result()
        if count == 0:
            raise ValueError("no frames to encode")
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return count


def _top_level_boxes(path: Path) -> list[str]:
    """Types of the top-level MP4 boxes, in file order."""
    boxes: list[str] = []
    size_total = path.stat().st_size
    with open(path, "rb") as handle:
        offset = 0
        while offset + 8 <= size_total:
            handle.seek(offset)
            size, kind = struct.unpack(">I4s", handle.read(8))
            if size == 1:  # 64-bit size follows the type
                (size,) = struct.unpack(">Q", handle.read(8))
            elif size == 0:  # box runs to the end of the file
                size = size_total - offset
            if size < 8:
                break  # corrupt; stop rather than loop forever
            boxes.append(kind.decode("latin-1"))
            offset += size
    return boxes


def probe_mp4(path: Path) -> dict[str, Any]:
    """Describe an MP4's first video stream; decodes every frame to count them."""
    path = Path(path)
    boxes = _top_level_boxes(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        fps = float(stream.average_rate) if stream.average_rate else None
        duration = (
            float(stream.duration * stream.time_base)
            if stream.duration is not None and stream.time_base is not None
            else None
        )
        info: dict[str, Any] = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "frames": frames,
            "fps": fps,
            "duration": duration,
            "bt709": stream.codec_context.colorspace == BT709
            and stream.codec_context.color_range == LIMITED_RANGE,
        }
    info["boxes"] = boxes
    info["faststart"] = (
        "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat")
    )
    return info
