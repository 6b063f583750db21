"""The diffusers engines (wan, ltx, cogvideox) on tiny random-weight models: sizes,
frame counts, model-card defaults, profiles, progress, cancellation and failures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("torch")

from openimagine.engines import create_engine
from openimagine.engines.base import RATIOS, Cancelled, Engine, Job, frame_size, ratio_parts
from openimagine.engines.diffusers.engine import DiffusersEngine
from openimagine.engines.diffusers.families import (
    FAMILIES,
    WAN_INFO,
    aspect_error,
    configured_info,
    plan,
)
from openimagine.engines.diffusers.profiles import (
    DEFAULT_PROFILES,
    ProfileError,
    load_profiles,
    parse_profiles,
)
from openimagine.engines.diffusers.tiny import FAMILIES as TINY
from openimagine.engines.diffusers.tiny import make_tiny
from openimagine.settings import Settings

STEPS = 2
# 1 s at 8 fps -> 8 frames wanted -> 9 (the next 4k+1 / 8k+1 count).
CLIP = {"duration": 1.0, "fps": 8, "resolution": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model, built once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: make_tiny(family, root / family) for family in TINY}


@pytest.fixture(scope="session")
def fast_profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "profiles.toml"
    path.write_text("".join(f"[{family}]\nsteps = {STEPS}\n" for family in FAMILIES))
    return path


@pytest.fixture
def settings(tmp_path: Path, fast_profiles: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "profiles": fast_profiles, **CLIP}
        values.update(overrides)
        return Settings(**values)

    return make


def make_job(**overrides: Any) -> Job:
    values: dict[str, Any] = {
        "task_id": "task-1",
        "prompt": "a cat playing piano on a stage",
        "mode": "normal",
        "ratio": "1:1",
        "images": [],
        "variations": 1,
        **CLIP,
    }
    values.update(overrides)
    return Job(**values)


def picture(width: int = 120, height: int = 80) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    rgb = np.stack(
        [
            np.tile(x, (height, 1)),
            np.tile(y[:, None], (1, width)),
            np.full((height, width), 90, np.uint8),
        ],
        -1,
    )
    return Image.fromarray(rgb)


def check_clips(
    clips: list, *, variations: int, frames: int, size: tuple[int, int], fps: int, ratio: str
) -> None:
    assert len(clips) == variations
    for clip in clips:
        assert (clip.width, clip.height) == size
        assert clip.width % 2 == 0 and clip.height % 2 == 0
        assert aspect_error(clip.width, clip.height, ratio) <= 0.02
        assert clip.fps == fps
        assert isinstance(clip.seed, int)
        frame_list = list(clip.frames)
        assert len(frame_list) == frames
        for frame in frame_list:
            assert frame.dtype == np.uint8 and frame.shape == (size[1], size[0], 3)
    assert len({clip.seed for clip in clips}) == variations


# Render sizes at a 64 px short side: (family, ratio) -> returned (width, height).
# Wan and CogVideoX render multiples of 16, LTX multiples of 32. When that misses
# the ratio by over 1 %, the frames are centre-cropped: 16:9 renders 112x64 (1.6 %
# off) for Wan and CogVideoX, cropped to 110x62; LTX renders 128x64, cropped to 114x64.
EXPECTED_SIZES = {
    ("wan", "1:1"): (64, 64),
    ("wan", "16:9"): (110, 62),
    ("wan", "2:3"): (64, 96),
    ("ltx", "1:1"): (64, 64),
    ("ltx", "16:9"): (114, 64),
    ("ltx", "9:16"): (64, 114),
    ("cogvideox", "1:1"): (64, 64),
    ("cogvideox", "3:2"): (96, 64),
    ("cogvideox", "9:16"): (62, 110),
}


@pytest.mark.parametrize(("family", "ratio"), sorted(EXPECTED_SIZES))
def test_text_to_video(
    tiny: dict[str, Path], settings: Callable[..., Settings], family: str, ratio: str
) -> None:
    engine = DiffusersEngine(settings(model_path=tiny[f"{family}-t2v"]), family)
    assert isinstance(engine, Engine)
    assert engine.info.image_input is False  # no image-to-video model configured
    clips = engine.generate(make_job(ratio=ratio, variations=2))
    check_clips(
        clips, variations=2, frames=9, size=EXPECTED_SIZES[family, ratio], fps=8, ratio=ratio
    )
    render = engine.plan(make_job(ratio=ratio))
    assert (
        render.width % FAMILIES[family].multiple == 0
        and render.height % FAMILIES[family].multiple == 0
    )


@pytest.mark.parametrize(
    ("family", "ratio", "size"),
    [
        ("wan", "16:9", (110, 62)),
        ("ltx", "2:3", (64, 96)),
        # CogVideoX-5b-I2V style: learned positional embeddings pin the render to
        # the trained size (96x64 here, 720x480 for the real model); other ratios are cropped.
        ("cogvideox", "3:2", (96, 64)),
        ("cogvideox", "16:9", (96, 54)),
        ("cogvideox", "9:16", (36, 64)),
    ],
)
def test_image_to_video(
    tiny: dict[str, Path],
    settings: Callable[..., Settings],
    family: str,
    ratio: str,
    size: tuple[int, int],
) -> None:
    engine = DiffusersEngine(settings(i2v_model_path=tiny[f"{family}-i2v"]), family)
    assert engine.info.image_input is True
    job = make_job(ratio=ratio, images=[picture(), picture(40, 90)], variations=2)
    check_clips(engine.generate(job), variations=2, frames=9, size=size, fps=8, ratio=ratio)
    # Without a text-to-video model, a text-only task is refused with a clear error.
    with pytest.raises(ValueError, match="OPENIMAGINE_MODEL_PATH"):
        engine.generate(make_job())


def test_one_folder_serves_both_modes(
    tiny: dict[str, Path], settings: Callable[..., Settings]
) -> None:
    folder = tiny["ltx-t2v"]
    engine = DiffusersEngine(settings(model_path=folder, i2v_model_path=folder), "ltx")
    assert engine.info.image_input is True
    assert type(engine.i2v).__name__ == "LTXImageToVideoPipeline"
    # Shared modules: the second pipeline costs no memory.
    assert engine.i2v.transformer is engine.t2v.transformer
    check_clips(
        engine.generate(make_job(ratio="3:2")),
        variations=1,
        frames=9,
        size=(96, 64),
        fps=8,
        ratio="3:2",
    )
    job = make_job(ratio="3:2", images=[picture()])
    check_clips(engine.generate(job), variations=1, frames=9, size=(96, 64), fps=8, ratio="3:2")


def test_class_info_is_static_and_instance_info_reflects_the_models(
    tiny: dict[str, Path], settings: Callable[..., Settings]
) -> None:
    engine = DiffusersEngine(settings(model_path=tiny["wan-t2v"]), "wan")
    assert WAN_INFO.image_input is True and engine.info.image_input is False
    assert engine.info.name == "wan" and engine.info.modes == WAN_INFO.modes
    with_i2v = DiffusersEngine(
        settings(model_path=tiny["wan-t2v"], i2v_model_path=tiny["wan-i2v"]), "wan"
    )
    assert with_i2v.info.image_input is True
    clips = with_i2v.generate(make_job(images=[picture()]))
    check_clips(clips, variations=1, frames=9, size=(64, 64), fps=8, ratio="1:1")


def test_configured_info_matches_the_loaded_engine(
    tiny: dict[str, Path], settings: Callable[..., Settings]
) -> None:
    cases = [
        ("wan", {"model_path": tiny["wan-t2v"]}, False),
        ("wan", {"model_path": tiny["wan-t2v"], "i2v_model_path": tiny["wan-i2v"]}, True),
        # An image-to-video folder as the only model: image tasks only.
        ("cogvideox", {"model_path": tiny["cogvideox-i2v"]}, True),
    ]
    for family, paths, image_input in cases:
        configured = settings(**paths)
        assert configured_info(family, configured).image_input is image_input
        engine = DiffusersEngine(configured, family)
        assert engine.info == configured_info(family, configured)


def test_registry_creates_the_engines(
    tiny: dict[str, Path], settings: Callable[..., Settings]
) -> None:
    for family in FAMILIES:
        engine = create_engine(settings(engine=family, model_path=tiny[f"{family}-t2v"]))
        assert isinstance(engine, DiffusersEngine) and engine.family.name == family


def test_frames_follow_duration_and_fps(
    tiny: dict[str, Path], settings: Callable[..., Settings]
) -> None:
    # 1.5 s x 12 fps = 18 frames -> Wan's nearest 4k+1 is 17.
    engine = DiffusersEngine(settings(model_path=tiny["wan-t2v"], duration=1.5, fps=12), "wan")
    clips = engine.generate(make_job(duration=1.5, fps=12))
    check_clips(clips, variations=1, frames=17, size=(64, 64), fps=12, ratio="1:1")
    # LTX: 8k+1 (18 -> 17); CogVideoX: 8k+1 too (its 4k+1 counts with even k come back as 4k+4).
    for family in ("ltx", "cogvideox"):
        engine = DiffusersEngine(
            settings(model_path=tiny[f"{family}-t2v"], duration=1.5, fps=12), family
        )
        clips = engine.generate(make_job(duration=1.5, fps=12))
        check_clips(clips, variations=1, frames=17, size=(64, 64), fps=12, ratio="1:1")


def test_model_card_defaults_when_output_settings_are_not_set(
    tiny: dict[str, Path], tmp_path: Path, fast_profiles: Path
) -> None:
    cases = {
        # family: (frames, fps, 1:1 size, 16:9 size)
        "wan": (81, 16, (480, 480), (848, 480)),
        "ltx": (121, 25, (512, 512), (896, 504)),
        "cogvideox": (49, 8, (480, 480), (848, 480)),
    }
    core = Settings(data_dir=tmp_path)  # the core defaults: 6 s, 24 fps, 480 px
    for family, (frames, fps, square, wide) in cases.items():
        engine = DiffusersEngine(
            Settings(data_dir=tmp_path, model_path=tiny[f"{family}-t2v"], profiles=fast_profiles),
            family,
        )
        assert engine.explicit == frozenset()
        job = make_job(duration=core.duration, fps=core.fps, resolution=core.resolution)
        render = engine.plan(job)
        assert (render.frames, render.fps, render.out_width, render.out_height) == (
            frames,
            fps,
            *square,
        )
        render = engine.plan(
            make_job(ratio="16:9", duration=core.duration, fps=core.fps, resolution=core.resolution)
        )
        assert (render.out_width, render.out_height) == wide
        assert aspect_error(*wide, "16:9") <= 0.02
    # Setting only the fps keeps the model card's clip length: 81/16 s at 24 fps -> 121 frames.
    render = plan(FAMILIES["wan"], "1:1", duration=6.0, fps=24, resolution=480, explicit={"fps"})
    assert (render.frames, render.fps) == (121, 24)


def test_plan_keeps_every_ratio_within_two_percent() -> None:
    for family in FAMILIES.values():
        for ratio in RATIOS:
            for short in (64, 240, 360, 480, 512, 720, 1080):
                render = plan(
                    family, ratio, duration=2, fps=8, resolution=short, explicit={"resolution"}
                )
                assert render.width % family.multiple == 0 and render.height % family.multiple == 0
                assert (render.width, render.height) == frame_size(ratio, short, family.multiple)
                assert render.out_width % 2 == 0 and render.out_height % 2 == 0
                assert render.out_width <= render.width and render.out_height <= render.height
                assert aspect_error(render.out_width, render.out_height, ratio) <= 0.02
                rw, rh = ratio_parts(ratio)
                assert (render.out_width >= render.out_height) == (rw >= rh)


def test_progress_counts_steps_and_reaches_one(
    tiny: dict[str, Path], settings: Callable[..., Settings], tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        "[wan]\nsteps = 2\n\n[wan.fun]\nsteps = 5\nguidance = 1.0\nprompt_suffix = ', cartoon'\n"
    )
    engine = DiffusersEngine(settings(model_path=tiny["wan-t2v"], profiles=profiles), "wan")
    assert engine.profiles["fun"].steps == 5 and engine.profiles["normal"].steps == 2
    for mode, steps in (("fun", 5), ("normal", 2), ("spicy", 2)):
        seen: list[float] = []
        engine.generate(make_job(mode=mode, variations=1, on_progress=seen.append))
        # One report per denoising step, one when the clip is decoded.
        assert len(seen) == steps + 1, (mode, seen)
        assert seen == sorted(seen) and seen[-1] == 1.0 and seen[0] > 0
    seen = []
    engine.generate(make_job(mode="fun", variations=2, on_progress=seen.append))
    assert len(seen) == 2 * (5 + 1) and seen == sorted(seen) and seen[-1] == 1.0


def test_flow_shift_profile(
    tiny: dict[str, Path], settings: Callable[..., Settings], tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text("[wan]\nsteps = 2\n[wan.spicy]\nflow_shift = 3.0\n")
    engine = DiffusersEngine(settings(model_path=tiny["wan-t2v"], profiles=profiles), "wan")
    engine.generate(make_job(mode="spicy"))
    assert engine.t2v.scheduler.config.shift == 3.0
    engine.generate(make_job(mode="normal"))
    assert engine.t2v.scheduler.config.shift == 7.0  # the model's own

    # LTX shifts by resolution; a static shift is refused rather than ignored.
    profiles.write_text("[ltx.fun]\nflow_shift = 3.0\n")
    with pytest.raises(ProfileError, match=r"\[ltx.fun\] sets flow_shift"):
        DiffusersEngine(settings(model_path=tiny["ltx-t2v"], profiles=profiles), "ltx")


def test_cancellation_between_steps(
    tiny: dict[str, Path], settings: Callable[..., Settings]
) -> None:
    engine = DiffusersEngine(settings(model_path=tiny["cogvideox-t2v"]), "cogvideox")
    seen: list[float] = []
    job = make_job(
        task_id="task-cancel",
        variations=2,
        on_progress=seen.append,
        is_cancelled=lambda: bool(seen),
    )
    with pytest.raises(Cancelled):
        engine.generate(job)
    assert len(seen) == 1 and seen[0] < 0.5
    # The same engine serves the next task.
    clips = engine.generate(make_job())
    check_clips(clips, variations=1, frames=9, size=(64, 64), fps=8, ratio="1:1")


def test_failure_propagates_and_the_engine_survives(
    tiny: dict[str, Path], settings: Callable[..., Settings]
) -> None:
    engine = DiffusersEngine(
        settings(model_path=tiny["ltx-t2v"], i2v_model_path=tiny["ltx-i2v"]), "ltx"
    )

    def explode(fraction: float) -> None:
        raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        engine.generate(make_job(on_progress=explode))
    seen: list[float] = []
    clips = engine.generate(make_job(ratio="16:9", on_progress=seen.append))
    check_clips(clips, variations=1, frames=9, size=(114, 64), fps=8, ratio="16:9")
    assert seen[-1] == 1.0


def test_construction_errors(
    tiny: dict[str, Path], settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="OPENIMAGINE_MODEL_PATH"):
        DiffusersEngine(settings(), "wan")
    with pytest.raises(ValueError, match="no model_index.json"):
        DiffusersEngine(settings(model_path=tmp_path), "wan")
    with pytest.raises(ValueError, match="LTXPipeline model, but OPENIMAGINE_ENGINE=wan"):
        DiffusersEngine(settings(model_path=tiny["ltx-t2v"]), "wan")
    with pytest.raises(ValueError, match="OPENIMAGINE_DEVICE"):
        DiffusersEngine(settings(model_path=tiny["wan-t2v"], device="warp-drive"), "wan")
    with pytest.raises(ValueError, match="OPENIMAGINE_DTYPE"):
        DiffusersEngine(settings(model_path=tiny["wan-t2v"], dtype="float7"), "wan")
    with pytest.raises(ProfileError, match="cannot read the profiles file"):
        DiffusersEngine(
            settings(model_path=tiny["wan-t2v"], profiles=tmp_path / "missing.toml"), "wan"
        )


def test_profiles_file_format() -> None:
    profiles = parse_profiles(
        "[wan]\nsteps = 30\n[wan.fun]\nguidance = 4\nflow_shift = 5\nnegative_prompt = 'blurry'\n"
        "[cogvideox.spicy]\nprompt_suffix = ', noir'\n"
    )
    fun = profiles["wan"]["fun"]
    assert (fun.steps, fun.guidance, fun.flow_shift, fun.negative_prompt) == (
        30,
        4.0,
        5.0,
        "blurry",
    )
    assert profiles["wan"]["normal"].steps == 30
    assert profiles["wan"]["normal"].guidance == DEFAULT_PROFILES["wan"]["normal"].guidance
    assert profiles["cogvideox"]["spicy"].prompt_suffix == ", noir"
    assert profiles["ltx"] == DEFAULT_PROFILES["ltx"]
    assert load_profiles("ltx") == DEFAULT_PROFILES["ltx"]

    bad = {
        "[wan.fun]\nstepz = 3\n": r"\[wan.fun\]: unknown key 'stepz'",
        "[wan.silly]\nsteps = 3\n": r"unknown mode \[wan.silly\]",
        "[sora]\nsteps = 3\n": r"unknown engine \[sora\]",
        "[wan]\nsteps = 'many'\n": "steps must be a whole number",
        "[wan]\nsteps = 0\n": "steps must be a whole number",
        "[ltx.normal]\nguidance = true\n": "guidance must be a number",
        "[ltx.normal]\nflow_shift = -1\n": "flow_shift must be above 0",
        "[ltx.normal]\nprompt_suffix = 3\n": "prompt_suffix must be a string",
        "wan = 3\n": "must be a table",
        "[wan\n": "not valid TOML",
    }
    for text, message in bad.items():
        with pytest.raises(ProfileError, match=message):
            parse_profiles(text, source="profiles.toml")
