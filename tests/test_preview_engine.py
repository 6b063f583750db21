"""The built-in ``preview`` engine: deterministic, prompt-driven, fast, and honest about
sizes, progress and cancellation."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from openimagine.engines.base import RATIOS, Cancelled, Engine, Job, frame_size
from openimagine.engines.preview import INFO, PreviewEngine, cover_crop, variation_seed
from openimagine.media.mp4 import encode_mp4, probe_mp4
from openimagine.settings import Settings


@pytest.fixture
def engine(tmp_path: Path) -> PreviewEngine:
    return PreviewEngine(Settings(data_dir=tmp_path))


def make_job(**overrides: Any) -> Job:
    values: dict[str, Any] = {
        "task_id": "task-1",
        "prompt": "a lighthouse at dusk, waves crashing",
        "mode": "normal",
        "ratio": "1:1",
        "images": [],
        "variations": 2,
        "duration": 0.5,
        "fps": 12,
        "resolution": 64,
    }
    values.update(overrides)
    return Job(**values)


def render(engine: PreviewEngine, job: Job) -> list[list[np.ndarray]]:
    return [list(clip.frames) for clip in engine.generate(job)]


def motion(frames: Sequence[np.ndarray]) -> float:
    """Mean absolute change between consecutive frames."""
    return float(
        np.mean(
            [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in itertools.pairwise(frames)]
        )
    )


def mean_abs_diff(a: np.ndarray | Image.Image, b: np.ndarray | Image.Image) -> float:
    return float(np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).mean())


def test_is_an_engine_with_image_input(engine: PreviewEngine) -> None:
    """The runner can use it like any engine, and it advertises image input up to 7 images."""
    assert isinstance(engine, Engine)
    assert engine.info is INFO
    assert INFO.name == "preview"
    assert INFO.image_input and INFO.max_images == 7


def test_clips_have_requested_count_size_and_frames(engine: PreviewEngine) -> None:
    """One clip per variation, each round(duration * fps) RGB frames of the clip's size."""
    job = make_job(variations=3, duration=0.5, fps=10, ratio="16:9", resolution=72)
    clips = engine.generate(job)
    assert len(clips) == 3
    width, height = frame_size("16:9", 72)
    for clip in clips:
        frames = list(clip.frames)
        assert (clip.width, clip.height, clip.fps) == (width, height, 10)
        assert len(frames) == 5
        assert all(f.shape == (height, width, 3) and f.dtype == np.uint8 for f in frames)


def test_same_request_gives_identical_frames(tmp_path: Path) -> None:
    """Deterministic: a retried task (even in a fresh engine) renders byte-identical clips."""
    first = render(PreviewEngine(Settings(data_dir=tmp_path)), make_job())
    second = render(PreviewEngine(Settings(data_dir=tmp_path)), make_job())
    assert [[f.tobytes() for f in clip] for clip in first] == [
        [f.tobytes() for f in clip] for clip in second
    ]


def test_seeds_are_stable_hashes_of_prompt_and_variation(engine: PreviewEngine) -> None:
    """Each clip's seed is reproducible across processes (not Python's salted hash())."""
    clips = engine.generate(make_job(variations=2))
    assert [clip.seed for clip in clips] == [variation_seed(make_job().prompt, i) for i in (0, 1)]
    assert variation_seed("a", 0) == int.from_bytes(hashlib.sha256(b"a\x000").digest()[:8], "big")
    assert len({clip.seed for clip in clips}) == 2


def test_variations_differ(engine: PreviewEngine) -> None:
    """The two variations a user pays for are two different videos."""
    first, second = render(engine, make_job(variations=2))
    assert mean_abs_diff(first[0], second[0]) > 5


def test_prompt_changes_the_video(engine: PreviewEngine) -> None:
    """Different prompts give different clips."""
    (a,) = render(engine, make_job(prompt="a red fox in snow", variations=1))
    (b,) = render(engine, make_job(prompt="a neon city at night", variations=1))
    assert mean_abs_diff(a[0], b[0]) > 5


@pytest.mark.parametrize("mode", ["normal", "fun", "spicy"])
def test_every_frame_moves(engine: PreviewEngine, mode: str) -> None:
    """No frozen frames: each frame differs from the one before it."""
    (frames,) = render(engine, make_job(mode=mode, variations=1))
    for before, after in itertools.pairwise(frames):
        assert not np.array_equal(before, after)


PROMPTS = ["a lighthouse at dusk", "a cat surfing", "fire in the forest"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_modes_set_the_pace(engine: PreviewEngine, prompt: str) -> None:
    """``spicy`` moves faster than ``fun``, which moves faster than calm ``normal``."""
    pace = {
        mode: motion(render(engine, make_job(prompt=prompt, mode=mode, variations=1))[0])
        for mode in ("normal", "fun", "spicy")
    }
    assert pace["spicy"] > pace["fun"] > pace["normal"] > 0


@pytest.mark.parametrize("ratio", RATIOS)
def test_sizes_follow_the_ratio_with_even_sides(engine: PreviewEngine, ratio: str) -> None:
    """Every ratio yields even sides (H.264 yuv420p) and an aspect within 2% of the request."""
    job = make_job(ratio=ratio, resolution=101, variations=1, duration=0.1, fps=10)
    (clip,) = engine.generate(job)
    width, height = clip.width, clip.height
    rw, rh = (int(part) for part in ratio.split(":"))
    assert width % 2 == 0 and height % 2 == 0
    assert abs((width / height) / (rw / rh) - 1) < 0.02
    assert min(width, height) == 100
    assert next(iter(clip.frames)).shape == (height, width, 3)


def photo(width: int, height: int, hue: int) -> Image.Image:
    """A smooth picture with a landmark, so camera moves change it only gently."""
    xs = np.linspace(0, 1, width)[None, :]
    ys = np.linspace(0, 1, height)[:, None]
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[..., 0] = (hue + 80 * xs + 0 * ys) % 256
    array[..., 1] = 60 + 120 * ys + 0 * xs
    array[..., 2] = 200 - 100 * xs + 0 * ys
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.35, height * 0.3, width * 0.65, height * 0.7), fill=(250, 240, 90))
    return image


def test_image_clip_opens_on_the_cover_cropped_image(engine: PreviewEngine) -> None:
    """Image-to-video starts on the user's image, cropped (not stretched) to the ratio."""
    wide = photo(300, 150, hue=20)
    job = make_job(images=[wide], ratio="1:1", resolution=96, variations=2)
    for frames in render(engine, job):
        cropped = cover_crop(wide, 96, 96)
        stretched = wide.convert("RGB").resize((96, 96))
        assert mean_abs_diff(frames[0], cropped) < 4
        assert mean_abs_diff(frames[0], stretched) > 3 * mean_abs_diff(frames[0], cropped)


def dotted_photo(width: int, height: int) -> Image.Image:
    """A photo with fine detail everywhere, where any camera move shows."""
    image = photo(width, height, hue=0)
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 20):
        for y in range(0, height, 20):
            draw.ellipse((x + 4, y + 4, x + 14, y + 14), fill=((x * 3) % 256, 30, (y * 5) % 256))
    return image


def test_image_clip_moves_and_variations_move_differently(engine: PreviewEngine) -> None:
    """The camera moves over the image, differently per variation."""
    job = make_job(
        images=[dotted_photo(200, 200)], resolution=96, duration=2.0, fps=24, variations=2
    )
    first, second = render(engine, job)
    assert mean_abs_diff(first[0], first[-1]) > 5
    assert mean_abs_diff(first[0], second[0]) < 1  # both open on the image itself
    assert mean_abs_diff(first[-1], second[-1]) > 5
    for before, after in itertools.pairwise(first):
        assert not np.array_equal(before, after)


def test_several_images_crossfade_in_order(engine: PreviewEngine) -> None:
    """With two images the clip starts on the first and ends on the second."""
    one, two = photo(160, 120, hue=0), photo(120, 160, hue=140).transpose(Image.FLIP_LEFT_RIGHT)
    job = make_job(images=[one, two], ratio="3:2", resolution=64, duration=1.0, variations=1)
    (frames,) = render(engine, job)
    width, height = frame_size("3:2", 64)
    first_crop, second_crop = cover_crop(one, width, height), cover_crop(two, width, height)
    assert mean_abs_diff(frames[0], first_crop) < 4
    assert mean_abs_diff(frames[-1], second_crop) < 10
    assert mean_abs_diff(frames[-1], first_crop) > 3 * mean_abs_diff(frames[-1], second_crop)
    # Halfway through, both images show.
    middle = frames[len(frames) // 2]
    assert mean_abs_diff(middle, first_crop) > 4 and mean_abs_diff(middle, second_crop) > 4


def test_images_with_transparency_are_accepted(engine: PreviewEngine) -> None:
    """A transparent PNG or a palette image renders like any other input."""
    rgba = Image.new("RGBA", (80, 60), (255, 0, 0, 0))
    palette = photo(80, 60, hue=50).convert("P")
    job = make_job(images=[rgba, palette], resolution=64, variations=1)
    (frames,) = render(engine, job)
    assert frames[0].shape == (64, 64, 3)


def test_progress_reaches_one_over_all_variations(engine: PreviewEngine) -> None:
    """Progress rises steadily across every variation and ends at exactly 1.0."""
    reported: list[float] = []
    job = make_job(variations=2, on_progress=reported.append)
    clips = engine.generate(job)
    list(clips[0].frames)
    assert reported and reported[-1] == pytest.approx(0.5)
    list(clips[1].frames)
    assert reported == sorted(reported)
    assert all(0 <= value <= 1 for value in reported)
    assert reported[-1] == 1.0


def test_cancelling_stops_rendering(engine: PreviewEngine) -> None:
    """A cancelled task stops within a few frames instead of rendering to the end."""
    state = {"frames": 0, "cancel": False}

    def progress(_: float) -> None:
        state["frames"] += 1
        state["cancel"] = state["frames"] >= 3

    job = make_job(duration=2.0, on_progress=progress, is_cancelled=lambda: state["cancel"])
    (clip, _) = engine.generate(job)
    with pytest.raises(Cancelled):
        list(clip.frames)
    assert state["frames"] < 10


def test_cancelled_before_start_raises_at_once(engine: PreviewEngine) -> None:
    """A task cancelled while queued does not start rendering."""
    with pytest.raises(Cancelled):
        engine.generate(make_job(is_cancelled=lambda: True))


def test_frames_are_rendered_lazily(engine: PreviewEngine) -> None:
    """generate() returns before rendering; frames appear only as the encoder pulls them."""
    reported: list[float] = []
    clips = engine.generate(make_job(duration=60.0, fps=24, on_progress=reported.append))
    assert reported == []
    first = next(iter(clips[0].frames))
    assert first.shape == (64, 64, 3)
    assert len(reported) == 1


def test_clip_encodes_to_a_playable_mp4(engine: PreviewEngine, tmp_path: Path) -> None:
    """What the runner does with a clip: encode it to MP4 with every frame."""
    (clip,) = engine.generate(make_job(ratio="16:9", variations=1))
    path = tmp_path / "out.mp4"
    written = encode_mp4(clip.frames, path, fps=clip.fps, width=clip.width, height=clip.height)
    info = probe_mp4(path)
    assert written == info["frames"] == 6
    assert (info["width"], info["height"]) == (clip.width, clip.height)


def test_cancelling_mid_encode_leaves_no_video(engine: PreviewEngine, tmp_path: Path) -> None:
    """Cancellation raised inside the frame stream aborts the encode without a partial file."""
    produced: list[float] = []
    job = make_job(
        duration=2.0,
        on_progress=produced.append,
        is_cancelled=lambda: len(produced) >= 5,
    )
    (clip, _) = engine.generate(job)
    with pytest.raises(Cancelled):
        encode_mp4(clip.frames, tmp_path / "out.mp4", fps=clip.fps, width=64, height=64)
    assert list(tmp_path.iterdir()) == []
