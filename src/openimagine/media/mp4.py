"""H.264 MP4 encoding of engine frames, and a probe used by tests and benches.

Outputs are meant to play in any browser straight from a URL, hence H.264 in
``yuv420p`` (the only chroma layout every decoder supports) with the ``moov``
atom before ``mdat`` ("faststart") so playback can begin before the download ends.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.reformatter import ColorRange, Colorspace
from av.video.stream import VideoStream

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
    with _atomic_output(Path(path)) as temp_name:
        return _encode(frames, temp_name, fps=fps, width=width, height=height)


@contextmanager
def _atomic_output(path: Path) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; rename it to ``path`` on success.

    Same folder, so ``os.replace`` is an atomic rename: a reader sees the old file
    or the whole new one, never half a video.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mp4", dir=path.parent)
    os.close(handle)
    try:
        yield temp_name
        os.replace(temp_name, path)
    except BaseException:
        # Also on Cancelled or KeyboardInterrupt: never leave temp files behind.
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise


def _add_h264_stream(
    container: OutputContainer, *, rate: Fraction | int, width: int, height: int
) -> VideoStream:
    """An H.264 ``yuv420p`` stream with our x264 settings and BT.709 tags."""
    stream = container.add_stream("libx264", rate=rate)
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": PRESET, "x264-params": X264_PARAMS, "crf": str(CRF)}
    context = stream.codec_context
    context.colorspace = context.color_primaries = context.color_trc = BT709
    context.color_range = LIMITED_RANGE
    return stream


def _to_bt709_yuv420p(frame: av.VideoFrame, *, width: int, height: int) -> av.VideoFrame:
    """Convert (and scale) ``frame`` into what ``_add_h264_stream`` streams are tagged as.

    The source range is passed on explicitly because PyAV otherwise assumes
    "unspecified", which would squash a full-range source a second time.
    """
    return frame.reformat(
        width=width,
        height=height,
        format="yuv420p",
        src_color_range=frame.color_range,
        dst_colorspace=Colorspace.ITU709,
        dst_color_range=ColorRange.MPEG,
    )


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
        stream = _add_h264_stream(container, rate=fps, width=width, height=height)

        def encode_one(rgb: av.VideoFrame) -> None:
            yuv = _to_bt709_yuv420p(rgb, width=width, height=height)
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


# Audio codecs the MP4 muxer stores and browsers play; anything else (Opus in WebM,
# PCM in MOV, ...) is dropped rather than re-encoded: the video is the product.
_MP4_AUDIO_CODECS = frozenset({"aac", "mp3"})
_FASTSTART = {"movflags": "+faststart"}


class NotAVideo(ValueError):
    """The file is not a video PyAV can decode (an HTML error page, truncated bytes, ...)."""


@dataclass(frozen=True)
class _FirstFrame:
    codec: str
    pix_fmt: str
    width: int
    height: int


def normalize_mp4(src: Path, dst: Path) -> str:
    """Make ``dst`` a browser-ready copy of the video in ``src``; say how.

    Videos fetched from upstream APIs come in whatever their server wrote: moov
    at the end, MPEG-4 Part 2, 4:4:4 chroma, odd sizes. Our clients get what
    ``encode_mp4`` produces: MP4, H.264 ``yuv420p``, even width and height,
    ``moov`` before ``mdat``. Returns:

    - ``"remuxed"``: ``src`` was already H.264 ``yuv420p`` with even sizes, so its
      packets were copied unchanged into a faststart MP4. This also happens when
      ``src`` is faststart already: one cheap pass keeps a single code path and
      still drops streams MP4 players do not expect (data tracks, odd audio).
    - ``"transcoded"``: the video was re-encoded like ``encode_mp4`` does (odd
      sizes scaled down to even ones, timestamps kept).

    Either way the first video stream is kept, with the first AAC or MP3 audio
    stream copied as-is; other streams are dropped. ``dst`` appears atomically.
    Raises ``NotAVideo`` if ``src`` holds no decodable video, and the usual
    ``OSError`` if ``src`` cannot be opened at all (missing file: our bug, not
    the upstream's).
    """
    src, dst = Path(src), Path(dst)
    with open(src, "rb"):
        pass  # a plain FileNotFoundError/PermissionError beats PyAV's look-alikes
    first = _first_frame(src)
    with _atomic_output(dst) as temp_name:
        if first.codec == "h264" and first.pix_fmt == "yuv420p" and _is_even(first):
            _remux(src, temp_name)
            return "remuxed"
        _transcode(src, temp_name, first)
        return "transcoded"


def _is_even(first: _FirstFrame) -> bool:
    return first.width % 2 == 0 and first.height % 2 == 0


def _open_input(src: Path) -> InputContainer:
    try:
        # Upstream metadata is not ours to validate: a badly encoded title tag
        # must not turn a playable video into an error.
        return av.open(str(src), mode="r", metadata_errors="replace")
    except av.FFmpegError as error:
        raise NotAVideo(f"not a readable media file: {error}") from error


def _demux(container: InputContainer, streams: list[Any]) -> Generator[av.Packet, None, None]:
    """``container.demux``, raising ``NotAVideo`` for truncated or corrupt data.

    A download cut short is the usual failure, and FFmpeg's MP4 demuxer does not
    report it as an error: the packet cut in half comes out flagged corrupt and
    the packets after it are simply missing. So both are checked here: the flag,
    and the packet count against the sample count in the file's index (where the
    container has one; ``stream.frames`` is 0 otherwise, which skips the check).
    """
    counts = dict.fromkeys((stream.index for stream in streams), 0)
    try:
        for packet in container.demux(streams):
            if packet.dts is not None:
                if packet.is_corrupt:
                    raise NotAVideo("truncated or corrupt video data")
                counts[packet.stream.index] += 1
            yield packet
    except av.FFmpegError as error:
        raise NotAVideo(f"cannot read the video data: {error}") from error
    for stream in streams:
        if counts[stream.index] < stream.frames:
            raise NotAVideo(
                f"truncated: {stream.type} stream has {counts[stream.index]} "
                f"of {stream.frames} packets"
            )


def _decode(packet: av.Packet) -> list[av.VideoFrame]:
    try:
        return packet.decode()
    except av.FFmpegError as error:
        raise NotAVideo(f"cannot decode the video: {error}") from error


def _first_frame(src: Path) -> _FirstFrame:
    """Describe the first decodable frame of ``src``'s first video stream.

    The decoded frame, not the container's header, is the evidence: an HTML page
    or a truncated download can pass for a container yet hold no picture.
    """
    with _open_input(src) as container:
        if not container.streams.video:
            raise NotAVideo("no video stream")
        stream = container.streams.video[0]
        # Closed explicitly: stopping at the first frame must not leave the demux
        # generator to be finalized after its container is closed.
        with closing(_demux(container, [stream])) as packets:
            for packet in packets:
                for frame in _decode(packet):
                    return _FirstFrame(
                        codec=stream.codec_context.name,
                        pix_fmt=frame.format.name,
                        width=frame.width,
                        height=frame.height,
                    )
    raise NotAVideo("no decodable video frame")


def _mp4_audio(container: InputContainer) -> AudioStream | None:
    return next(
        (s for s in container.streams.audio if s.codec_context.name in _MP4_AUDIO_CODECS), None
    )


def _remux(src: Path, filename: str) -> None:
    """Copy the video (and MP4-compatible audio) packets into a faststart MP4."""
    with (
        _open_input(src) as source,
        av.open(filename, mode="w", format="mp4", options=_FASTSTART) as target,
    ):
        video = source.streams.video[0]
        audio = _mp4_audio(source)
        inputs: list[Any] = [video] if audio is None else [video, audio]
        outputs = {stream.index: target.add_stream_from_template(stream) for stream in inputs}
        for packet in _demux(source, inputs):
            if packet.dts is None:
                continue  # the demuxer's end-of-stream marker, not data
            packet.stream = outputs[packet.stream.index]
            target.mux(packet)


def _transcode(src: Path, filename: str, first: _FirstFrame) -> None:
    """Re-encode the video as ``encode_mp4`` would; copy MP4-compatible audio."""
    # Round odd sizes down (yuv420p needs even ones) rather than up: no made-up pixels.
    width, height = max(2, first.width - first.width % 2), max(2, first.height - first.height % 2)
    with (
        _open_input(src) as source,
        av.open(filename, mode="w", format="mp4", options=_FASTSTART) as target,
    ):
        video = source.streams.video[0]
        video.thread_type = "AUTO"
        time_base = video.time_base or Fraction(1, 90000)
        rate = video.average_rate or video.guessed_rate or Fraction(25)
        encoded = _add_h264_stream(target, rate=rate, width=width, height=height)
        # Encode in the source's time base so every frame keeps its exact
        # timestamp, variable frame rates included.
        encoded.codec_context.time_base = time_base
        encoded.time_base = time_base
        audio = _mp4_audio(source)
        copied = target.add_stream_from_template(audio) if audio is not None else None
        # A frame without a usable timestamp is placed one nominal frame later.
        step = max(1, round(1 / (rate * time_base)))
        last_pts: int | None = None
        count = 0
        inputs: list[Any] = [video] if audio is None else [video, audio]
        for packet in _demux(source, inputs):
            if packet.stream.type == "audio":
                if packet.dts is not None:
                    packet.stream = copied
                    target.mux(packet)
                continue
            # The end-of-stream packet is decoded too: it flushes delayed frames.
            for frame in _decode(packet):
                pts = frame.pts
                if pts is None or (last_pts is not None and pts <= last_pts):
                    pts = 0 if last_pts is None else last_pts + step
                last_pts = pts
                yuv = _to_bt709_yuv420p(frame, width=width, height=height)
                yuv.pts = pts
                yuv.time_base = time_base
                target.mux(encoded.encode(yuv))
                count += 1
        if count == 0:
            raise NotAVideo("no decodable video frame")
        target.mux(encoded.encode(None))  # flush the encoder's delayed frames
