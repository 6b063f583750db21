"""normalize_mp4: whatever an upstream API sends, clients get a browser-ready MP4.

Every input is a real file written by an encoder (``make_sample_mp4``), and every
output is checked by decoding it, as a client's player would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import pytest

from openimagine.media.mp4 import NotAVideo, normalize_mp4, probe_mp4
from openimagine.testing.samples import make_sample_mp4


def _assert_browser_ready(info: dict[str, object]) -> None:
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert info["faststart"] is True


def _stream_types(path: Path) -> list[str]:
    with av.open(str(path)) as container:
        return [stream.type for stream in container.streams]


def test_h264_with_moov_at_the_end_is_remuxed_to_faststart(tmp_path: Path) -> None:
    # Players must download the whole file before playing one with moov at the end.
    src = make_sample_mp4(tmp_path / "upstream.mp4", seconds=1.0, fps=8)
    assert probe_mp4(src)["faststart"] is False  # the case under test really occurs
    dst = tmp_path / "out" / "video.mp4"

    assert normalize_mp4(src, dst) == "remuxed"

    info = probe_mp4(dst)
    _assert_browser_ready(info)
    assert info["frames"] == probe_mp4(src)["frames"] == 8
    assert (info["width"], info["height"]) == (64, 64)


def test_already_faststart_h264_is_still_served(tmp_path: Path) -> None:
    src = make_sample_mp4(tmp_path / "upstream.mp4", faststart=True)
    dst = tmp_path / "video.mp4"

    assert normalize_mp4(src, dst) == "remuxed"

    _assert_browser_ready(probe_mp4(dst))


def test_remux_keeps_the_audio_track(tmp_path: Path) -> None:
    src = make_sample_mp4(tmp_path / "upstream.mp4", audio=True)
    dst = tmp_path / "video.mp4"

    assert normalize_mp4(src, dst) == "remuxed"

    assert sorted(_stream_types(dst)) == ["audio", "video"]
    with av.open(str(dst)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
    _assert_browser_ready(probe_mp4(dst))


def test_mpeg4_part2_is_transcoded_to_h264(tmp_path: Path) -> None:
    # Browsers do not play MPEG-4 Part 2 at all.
    src = make_sample_mp4(tmp_path / "upstream.mp4", codec="mpeg4", seconds=1.5, fps=8)
    dst = tmp_path / "video.mp4"

    assert normalize_mp4(src, dst) == "transcoded"

    info = probe_mp4(dst)
    _assert_browser_ready(info)
    assert info["bt709"] is True  # tagged like encode_mp4's own outputs
    assert info["frames"] == probe_mp4(src)["frames"] == 12
    assert info["fps"] == pytest.approx(8.0)
    assert info["duration"] == pytest.approx(1.5, abs=0.01)


def test_transcode_keeps_the_audio_track(tmp_path: Path) -> None:
    src = make_sample_mp4(tmp_path / "upstream.mp4", codec="mpeg4", audio=True)
    dst = tmp_path / "video.mp4"

    assert normalize_mp4(src, dst) == "transcoded"

    assert sorted(_stream_types(dst)) == ["audio", "video"]
    _assert_browser_ready(probe_mp4(dst))


def test_h264_444_is_transcoded_to_420(tmp_path: Path) -> None:
    # H.264 High 4:4:4 is valid H.264 yet most hardware decoders refuse it.
    src = make_sample_mp4(tmp_path / "upstream.mp4", pix_fmt="yuv444p")
    assert probe_mp4(src)["pix_fmt"] == "yuv444p"
    dst = tmp_path / "video.mp4"

    assert normalize_mp4(src, dst) == "transcoded"

    info = probe_mp4(dst)
    _assert_browser_ready(info)
    assert info["frames"] == 8


@pytest.mark.parametrize("codec,pix_fmt", [("mpeg4", "yuv420p"), ("h264", "yuv444p")])
def test_odd_sizes_become_even(tmp_path: Path, codec: str, pix_fmt: str) -> None:
    # yuv420p halves the chroma in both directions, so it needs even sizes.
    src = make_sample_mp4(
        tmp_path / "upstream.mp4", codec=codec, pix_fmt=pix_fmt, width=65, height=49
    )
    assert (probe_mp4(src)["width"], probe_mp4(src)["height"]) == (65, 49)
    dst = tmp_path / "video.mp4"

    assert normalize_mp4(src, dst) == "transcoded"

    info = probe_mp4(dst)
    _assert_browser_ready(info)
    assert (info["width"], info["height"]) == (64, 48)


def test_dst_is_replaced_whole(tmp_path: Path) -> None:
    dst = tmp_path / "video.mp4"
    dst.write_bytes(b"an older file")
    src = make_sample_mp4(tmp_path / "upstream.mp4", codec="mpeg4")

    normalize_mp4(src, dst)

    _assert_browser_ready(probe_mp4(dst))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upstream.mp4", "video.mp4"]


def _html(path: Path) -> None:
    # What a proxy sends back with a 200 when the upstream is down.
    path.write_text("<!doctype html><html><body><h1>502 Bad Gateway</h1></body></html>\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _first_half(path: Path) -> None:
    # A download cut short; moov is at the end, so the index is missing entirely.
    data = make_sample_mp4(path.with_name("whole.mp4")).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _faststart_cut_short(path: Path) -> None:
    # The index survives and promises frames the file no longer holds.
    data = make_sample_mp4(path.with_name("whole.mp4"), faststart=True, seconds=2).read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])


@pytest.mark.parametrize(
    "make_bad", [_html, _empty, _first_half, _faststart_cut_short], ids=lambda f: f.__name__
)
def test_not_a_video_is_refused_and_leaves_nothing(
    tmp_path: Path, make_bad: Callable[[Path], None]
) -> None:
    src = tmp_path / "in" / "upstream.mp4"
    src.parent.mkdir()
    make_bad(src)
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "video.mp4"

    with pytest.raises(NotAVideo) as caught:
        normalize_mp4(src, dst)

    assert str(caught.value)  # a reason the gateway can log
    assert not dst.exists()
    assert list(out.iterdir()) == []  # no temp file left behind


def test_missing_source_is_an_os_error_not_a_bad_video(tmp_path: Path) -> None:
    # A missing download is our bug, not the upstream's; it must not read as "bad video".
    with pytest.raises(FileNotFoundError):
        normalize_mp4(tmp_path / "nowhere.mp4", tmp_path / "video.mp4")
    assert list(tmp_path.iterdir()) == []
