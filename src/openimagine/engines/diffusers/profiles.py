"""Mode profiles: what ``fun``, ``normal`` and ``spicy`` mean to a diffusers model.

A profile is a named set of sampling parameters. Each family ships defaults
(steps and guidance from its model card; the modes differ in guidance and in a
style suffix added to the prompt). Operators override any of it in a TOML file
named by ``OPENIMAGINE_PROFILES``::

    # Applies to every mode of the family...
    [wan]
    steps = 30

    # ...and a mode's own table wins over the family table.
    [wan.fun]
    guidance = 4.0
    flow_shift = 5.0
    prompt_suffix = ", cartoon style, bright colours"
    negative_prompt = "blurry, low quality"

Unknown families, modes or keys and values of the wrong type are refused with
an error naming the file and the table, so a typo cannot silently do nothing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from openimagine.engines.base import MODES
from openimagine.engines.diffusers.families import FAMILIES


class ProfileError(ValueError):
    """The profiles file is missing, malformed, or names something unknown."""


@dataclass(frozen=True)
class Profile:
    steps: int
    guidance: float
    # Flow-matching shift; None keeps the model's scheduler config. Only for
    # schedulers with a static shift (Wan's UniPC/flow-match); LTX shifts by
    # resolution and CogVideoX is not a flow model.
    flow_shift: float | None = None
    prompt_suffix: str = ""
    negative_prompt: str = ""


KEYS = tuple(f.name for f in fields(Profile))

# Wan's model-card negative prompt (the English rendering from diffusers' docs).
_WAN_NEGATIVE = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)
_LTX_NEGATIVE = "worst quality, inconsistent motion, blurry, jittery, distorted"

# The modes are styles, not quality levels: same steps, different guidance and wording.
_FUN = ", playful and whimsical, vibrant colors, lively energetic motion"
_SPICY = ", bold and dramatic, high contrast, intense cinematic lighting, dynamic camera movement"


def _modes(steps: int, guidance: float, negative: str) -> dict[str, Profile]:
    return {
        "fun": Profile(steps, round(guidance * 0.8, 2), None, _FUN, negative),
        "normal": Profile(steps, guidance, None, "", negative),
        "spicy": Profile(steps, round(guidance * 1.2, 2), None, _SPICY, negative),
    }


DEFAULT_PROFILES: dict[str, dict[str, Profile]] = {
    # Model cards: Wan 50 steps, guidance 5; LTX-Video 50 steps, guidance 3;
    # CogVideoX 50 steps, guidance 6.
    "wan": _modes(50, 5.0, _WAN_NEGATIVE),
    "ltx": _modes(50, 3.0, _LTX_NEGATIVE),
    "cogvideox": _modes(50, 6.0, ""),
}


def _check_value(where: str, key: str, value: Any) -> Any:
    if key == "steps":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise ProfileError(
                f"{where}: steps must be a whole number from 1 to 1000, got {value!r}"
            )
        return value
    if key in ("guidance", "flow_shift"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProfileError(f"{where}: {key} must be a number, got {value!r}")
        if key == "guidance" and not 0 <= value <= 50:
            raise ProfileError(f"{where}: guidance must be from 0 to 50, got {value!r}")
        if key == "flow_shift" and not 0 < value <= 100:
            raise ProfileError(
                f"{where}: flow_shift must be above 0 and at most 100, got {value!r}"
            )
        return float(value)
    if not isinstance(value, str):
        raise ProfileError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _overrides(where: str, table: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in table.items():
        if key not in KEYS:
            raise ProfileError(f"{where}: unknown key {key!r} (keys: {', '.join(KEYS)})")
        values[key] = _check_value(f"{where} {key}", key, value)
    return values


def parse_profiles(text: str, source: str = "profiles") -> dict[str, dict[str, Profile]]:
    """Every family's profiles with the overrides of the TOML ``text`` applied."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{source}: not valid TOML: {error}") from None
    profiles = {family: dict(modes) for family, modes in DEFAULT_PROFILES.items()}
    for family, table in data.items():
        if family not in FAMILIES:
            raise ProfileError(
                f"{source}: unknown engine [{family}] (engines: {', '.join(FAMILIES)})"
            )
        if not isinstance(table, dict):
            raise ProfileError(f"{source}: {family} must be a table like [{family}.fun]")
        common = {k: v for k, v in table.items() if not isinstance(v, dict)}
        shared = _overrides(f"{source} [{family}]", common)
        for mode in MODES:
            profiles[family][mode] = replace(profiles[family][mode], **shared)
        for mode, mode_table in table.items():
            if not isinstance(mode_table, dict):
                continue
            if mode not in MODES:
                raise ProfileError(
                    f"{source}: unknown mode [{family}.{mode}] (modes: {', '.join(MODES)})"
                )
            own = _overrides(f"{source} [{family}.{mode}]", mode_table)
            profiles[family][mode] = replace(profiles[family][mode], **own)
    return profiles


def load_profiles(family: str, path: Path | None = None) -> dict[str, Profile]:
    """The mode -> profile map of ``family``, with the file at ``path`` (if any) applied."""
    if family not in FAMILIES:
        raise ProfileError(f"unknown engine {family!r} (engines: {', '.join(FAMILIES)})")
    if path is None:
        return dict(DEFAULT_PROFILES[family])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ProfileError(
            f"cannot read the profiles file {str(path)!r} (OPENIMAGINE_PROFILES): {error.strerror}"
        ) from None
    return parse_profiles(text, source=str(path))[family]
