"""MP4 encoding: what a browser needs to play an output straight from its URL."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from openimagine.media.mp4 import encode_mp4, probe_mp4


def gradient_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """Smooth frames that change over time, like real video."""
    xs = np.linspace(0, 255, width, dtype=np.float32)
    frames = []
    for index in range(count):
        row = (xs + index * 10) % 256
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[..., 0] = row
        frame[..., 1] = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        frame[..., 2] = 128
        frames.append(frame)
    return frames


def test_output_is_browser_playable_h264_with_moov_first(tmp_path: Path) -> None:
    """H.264 in yuv420p, moov before mdat: plays in every browser before the download ends."""
    path = tmp_path / "clip.mp4"
    written = encode_mp4(gradient_frames(12, 64, 48), path, fps=24, width=64, height=48)

    info = probe_mp4(path)
    assert written == 12
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (64, 48)
    assert info["frames"] == 12
    assert info["fps"] == pytest.approx(24)
    assert info["duration"] == pytest.approx(0.5, abs=0.05)
    assert info["faststart"], info["boxes"]
    assert info["bt709"]  # players know which matrix turns it back into RGB
    assert info["boxes"].index("moov") < info["boxes"].index("mdat")


def test_colours_survive_encoding(tmp_path: Path) -> None:
    """A red input decodes red (channels are not swapped) within compression error."""
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[..., 0] = 220
    red[..., 1] = 30
    red[..., 2] = 40
    path = tmp_path / "red.mp4"
    encode_mp4([red] * 3, path, fps=8, width=32, height=32)

    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(first.astype(int) - red.astype(int)).mean() < 8


@pytest.mark.parametrize(("width", "height"), [(65, 48), (64, 47), (0, 48)])
def test_odd_or_empty_sizes_are_refused(tmp_path: Path, width: int, height: int) -> None:
    """yuv420p needs even sides; the caller learns before any encoding starts."""
    frames = [np.zeros((max(height, 1), max(width, 1), 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames, tmp_path / "odd.mp4", fps=24, width=width, height=height)
    assert list(tmp_path.iterdir()) == []


def test_frame_of_wrong_shape_fails_without_leaving_files(tmp_path: Path) -> None:
    """A bad frame mid-clip raises and leaves neither a partial video nor a temp file."""
    frames = [*gradient_frames(3, 64, 48), np.zeros((48, 64, 4), dtype=np.uint8)]
    with pytest.raises(ValueError, match="frame 3"):
        encode_mp4(frames, tmp_path / "bad.mp4", fps=24, width=64, height=48)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_file(tmp_path: Path) -> None:
    """The output appears atomically: a failed encode never clobbers a finished video."""
    path = tmp_path / "clip.mp4"
    encode_mp4(gradient_frames(4, 64, 48), path, fps=24, width=64, height=48)
    before = path.read_bytes()

    def failing() -> object:
        yield from gradient_frames(2, 64, 48)
        raise RuntimeError("engine crashed")

    with pytest.raises(RuntimeError):
        encode_mp4(failing(), path, fps=24, width=64, height=48)  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_no_frames_is_an_error(tmp_path: Path) -> None:
    """An empty clip is an engine bug, not a zero-length video."""
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4([], tmp_path / "empty.mp4", fps=24, width=64, height=48)
    assert list(tmp_path.iterdir()) == []


def test_frames_are_consumed_lazily_from_a_generator(tmp_path: Path) -> None:
    """Any iterable works, so engines can stream frames without holding the clip in memory."""
    path = tmp_path / "nested" / "clip.mp4"
    written = encode_mp4(iter(gradient_frames(5, 32, 32)), path, fps=10, width=32, height=32)
    assert written == 5
    assert probe_mp4(path)["frames"] == 5


def test_engine_may_reuse_one_buffer_for_every_frame(tmp_path: Path) -> None:
    """Each frame is copied when handed over, so an engine can overwrite its buffer
    for the next frame while the previous one is still being encoded."""
    levels = [0, 60, 120, 180, 240]

    def reused() -> object:
        buffer = np.empty((32, 32, 3), dtype=np.uint8)
        for level in levels:
            buffer[...] = level
            yield buffer

    path = tmp_path / "reused.mp4"
    encode_mp4(reused(), path, fps=8, width=32, height=32)  # type: ignore[arg-type]
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24").mean() for f in container.decode(video=0)]
    assert decoded == pytest.approx(levels, abs=6)
