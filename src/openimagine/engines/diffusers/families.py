"""Per-family rules of the diffusers engines: sizes, frame counts, defaults.

Everything here is plain Python: importing it (for ``openimagine engines``,
the API's submission checks or the planning tests) never imports torch.

How a job becomes a render (``plan``):

* **fps** is the family's native rate (model card) unless the operator set
  ``OPENIMAGINE_FPS``; **frames** are the model card's count unless the
  operator set ``OPENIMAGINE_FPS`` or ``OPENIMAGINE_DURATION``, in which case
  ``duration x fps`` (duration defaulting to the model card's clip length) is
  rounded to the family's frame rule. The short side is the model card's
  unless ``OPENIMAGINE_RESOLUTION`` is set. "Set" means present in
  ``Settings.model_fields_set`` (an environment variable or an explicit
  argument), because the core defaults (6 s, 24 fps, 480 px) suit the preview
  engine, not these models.
* The render size is ``frame_size(ratio, short_side, multiple)``. When that
  size misses the requested aspect ratio by more than 1 % (large multiples at
  small sizes, or CogVideoX-5b-I2V which only renders its trained 720x480),
  the decoded frames are centre-cropped ("cover") to the largest even size of
  the exact ratio, so every clip keeps its ratio within 2 %.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from openimagine.engines.base import MODES, RATIOS, EngineInfo, frame_size, ratio_parts

if TYPE_CHECKING:
    from openimagine.settings import Settings

# Cropping kicks in above this aspect error; the contract allows 2 %.
ASPECT_TOLERANCE = 0.01

Knob = Literal["duration", "fps", "resolution"]
KNOBS: tuple[Knob, ...] = ("duration", "fps", "resolution")


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    t2v_class: str
    i2v_class: str
    # Width and height must be multiples of this (VAE compression x patch size).
    multiple: int
    # Frame counts are ``frame_step * k + 1``.
    frame_step: int
    min_frames: int
    # Model card defaults (landscape width x height, frames, playback fps).
    width: int
    height: int
    frames: int
    fps: int
    # Real checkpoints, for the docs and ``openimagine engines``.
    examples: tuple[str, ...]

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    @property
    def default_duration(self) -> float:
        return self.frames / self.fps

    @property
    def prefix(self) -> str:
        """Class-name prefix shared by this family's pipelines (``Wan``, ``LTX``...)."""
        return self.t2v_class.removesuffix("Pipeline")

    def round_frames(self, wanted: float) -> int:
        """Nearest count of the form ``frame_step * k + 1``, at least ``min_frames``."""
        k = round((wanted - 1) / self.frame_step)
        return max(self.min_frames, self.frame_step * k + 1)


FAMILIES: dict[str, Family] = {
    "wan": Family(
        name="wan",
        title="Wan 2.1/2.2",
        t2v_class="WanPipeline",
        i2v_class="WanImageToVideoPipeline",
        # 8x VAE, 2x2 patches; the pipeline refuses anything else.
        multiple=16,
        frame_step=4,
        min_frames=5,
        width=832,
        height=480,
        frames=81,
        fps=16,
        examples=(
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            "Wan-AI/Wan2.1-T2V-14B-Diffusers",
            "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
            "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        ),
    ),
    "ltx": Family(
        name="ltx",
        title="LTX-Video",
        t2v_class="LTXPipeline",
        i2v_class="LTXImageToVideoPipeline",
        # 32x spatial VAE, 1x1 patches.
        multiple=32,
        # 8x temporal VAE: other counts are silently cut down to the last 8k+1.
        frame_step=8,
        min_frames=9,
        width=704,
        height=512,
        # The model card's 161 frames (6.4 s) is slow on most GPUs; 121 (4.8 s)
        # is the commonly used length and well inside the trained range.
        frames=121,
        fps=25,
        examples=("Lightricks/LTX-Video",),
    ),
    "cogvideox": Family(
        name="cogvideox",
        title="CogVideoX",
        t2v_class="CogVideoXPipeline",
        i2v_class="CogVideoXImageToVideoPipeline",
        # The pipeline only checks multiples of 8, but the 8x VAE is followed
        # by 2x2 patches: a latent side that is not even fails inside the
        # transformer, so 16 is the real rule (480x720 satisfies it).
        multiple=16,
        # 4x temporal VAE decoded two latent frames at a time: 4k+1 frames
        # with an even k come back as 4k+4. 8k+1 is what returns exactly.
        frame_step=8,
        min_frames=9,
        width=720,
        height=480,
        frames=49,
        fps=8,
        examples=("THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b", "THUDM/CogVideoX-5b-I2V"),
    ),
}


def _info(family: Family, description: str) -> EngineInfo:
    return EngineInfo(
        name=family.name,
        description=description,
        modes=MODES,
        ratios=RATIOS,
        # Static: what the family can do. A loaded engine's ``info`` says
        # whether *its* configuration has an image-to-video model.
        # The contract's up to 7 references are accepted; the first conditions the video.
        image_input=True,
    )


WAN_INFO = _info(FAMILIES["wan"], "Wan 2.1/2.2 text- and image-to-video (diffusers, local weights)")
LTX_INFO = _info(FAMILIES["ltx"], "LTX-Video text- and image-to-video (diffusers, local weights)")
COGVIDEOX_INFO = _info(
    FAMILIES["cogvideox"], "CogVideoX text- and image-to-video (diffusers, local weights)"
)
INFOS = {"wan": WAN_INFO, "ltx": LTX_INFO, "cogvideox": COGVIDEOX_INFO}


def model_class_name(path: Path, variable: str) -> str:
    """The pipeline class recorded in a diffusers folder, with clear errors for bad folders."""
    index = path / "model_index.json"
    if not path.is_dir():
        raise ValueError(f"{variable}={path} is not a folder")
    if not index.is_file():
        raise ValueError(
            f"{variable}={path} has no model_index.json: expected a diffusers model folder "
            "(model_index.json plus one folder per component; see docs/engines.md)"
        )
    try:
        name = json.loads(index.read_text(encoding="utf-8"))["_class_name"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{index} is not a diffusers model index (no _class_name)") from None
    return str(name)


def configured_info(name: str, settings: Settings) -> EngineInfo:
    """What the engine ``name`` will support with these settings, without loading it.

    Same answer as a loaded engine's ``info`` (image input only with an
    image-to-video model), from the settings and ``model_index.json`` alone, so
    an API process that does not load models can refuse image tasks at submission.
    """
    family = FAMILIES[name]
    image_input = settings.i2v_model_path is not None
    if not image_input and settings.model_path is not None:
        try:
            image_input = model_class_name(Path(settings.model_path), "") == family.i2v_class
        except ValueError:
            image_input = False
    return replace(INFOS[name], image_input=image_input)


@dataclass(frozen=True)
class Plan:
    """What to ask the pipeline for, and what to hand back."""

    # Size the pipeline renders at.
    width: int
    height: int
    frames: int
    fps: int
    # Size of the returned frames (centre crop of the render when different).
    out_width: int
    out_height: int


def aspect_error(width: int, height: int, ratio: str) -> float:
    rw, rh = ratio_parts(ratio)
    return abs((width / height) / (rw / rh) - 1)


def crop_size(width: int, height: int, ratio: str) -> tuple[int, int]:
    """Largest even (width, height) inside ``width x height`` within 1 % of ``ratio``.

    The side that is too long is shortened; when even rounding of that side
    still misses (small sizes), the other side gives up two pixels at a time.
    """
    rw, rh = ratio_parts(ratio)
    target = rw / rh
    even_width, even_height = width - width % 2, height - height % 2
    if aspect_error(even_width, even_height, ratio) <= ASPECT_TOLERANCE:
        return even_width, even_height
    best: tuple[float, int, int] | None = None
    if width / height > target:
        for out_h in range(even_height, 1, -2):
            out_w = max(2, min(even_width, 2 * round(out_h * target / 2)))
            error = aspect_error(out_w, out_h, ratio)
            if best is None or error < best[0]:
                best = (error, out_w, out_h)
            if error <= ASPECT_TOLERANCE:
                break
    else:
        for out_w in range(even_width, 1, -2):
            out_h = max(2, min(even_height, 2 * round(out_w / target / 2)))
            error = aspect_error(out_w, out_h, ratio)
            if best is None or error < best[0]:
                best = (error, out_w, out_h)
            if error <= ASPECT_TOLERANCE:
                break
    assert best is not None
    return best[1], best[2]


def plan(
    family: Family,
    ratio: str,
    *,
    duration: float,
    fps: int,
    resolution: int,
    explicit: frozenset[str] | set[str] = frozenset(),
    fixed_size: tuple[int, int] | None = None,
) -> Plan:
    """Turn a job's ratio and the output settings into a render plan (see the module doc).

    ``explicit`` names which of duration/fps/resolution the operator set;
    ``fixed_size`` is the only (width, height) a model can render, if any.
    """
    out_fps = fps if "fps" in explicit else family.fps
    if "fps" in explicit or "duration" in explicit:
        seconds = duration if "duration" in explicit else family.default_duration
        frames = family.round_frames(seconds * out_fps)
    else:
        frames = family.frames
    if fixed_size is not None:
        width, height = fixed_size
    else:
        short = resolution if "resolution" in explicit else family.short_side
        width, height = frame_size(ratio, short, multiple=family.multiple)
    out_width, out_height = crop_size(width, height, ratio)
    return Plan(width, height, frames, out_fps, out_width, out_height)


def default_sizes(family: Family, resolution: int | None = None) -> dict[str, tuple[int, int]]:
    """Output (width, height) per ratio at the model card's (or the given) short side."""
    sizes = {}
    for ratio in RATIOS:
        short = resolution or family.short_side
        width, height = frame_size(ratio, short, multiple=family.multiple)
        sizes[ratio] = crop_size(width, height, ratio)
    return sizes
