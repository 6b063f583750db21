"""Tiny random-weight diffusers models: real layout, offline, reproducible; and the
``openimagine models make-tiny`` / ``openimagine engines`` commands."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torch")

import typer
from typer.testing import CliRunner

from openimagine.cli_models import engines_command, engines_report, models_app
from openimagine.engines.diffusers.tiny import FAMILIES, make_tiny
from openimagine.settings import Settings

PIPELINES = {
    "wan-t2v": "WanPipeline",
    "wan-i2v": "WanImageToVideoPipeline",
    "ltx-t2v": "LTXPipeline",
    "ltx-i2v": "LTXImageToVideoPipeline",
    "cogvideox-t2v": "CogVideoXPipeline",
    "cogvideox-i2v": "CogVideoXImageToVideoPipeline",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    for family in FAMILIES:
        make_tiny(family, root / family)
    return root


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_has_the_real_layout_and_loads_offline(tiny_root: Path, family: str) -> None:
    import diffusers
    import torch

    folder = tiny_root / family
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[family]
    components = {name for name, value in index.items() if isinstance(value, list) and value[0]}
    assert {"transformer", "vae", "scheduler", "text_encoder", "tokenizer"} <= components
    for name in components:
        assert (folder / name).is_dir(), name
    if family == "wan-i2v":
        assert {"image_encoder", "image_processor"} <= components
    # Nothing is small enough to matter on disk.
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 2_000_000

    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(folder, local_files_only=True)
    assert all(
        not module.training
        for module in pipe.components.values()
        if isinstance(module, torch.nn.Module)
    )
    ids = pipe.tokenizer("a cat playing piano").input_ids
    assert ids[-1] == pipe.tokenizer.eos_token_id and len(ids) > 2


def test_make_tiny_is_reproducible(tiny_root: Path, tmp_path: Path) -> None:
    again = make_tiny("wan-t2v", tmp_path / "again")
    first, second = _digest(tiny_root / "wan-t2v"), _digest(again)
    weights = [name for name in first if name.endswith(".safetensors")]
    assert weights and all(first[name] == second[name] for name in weights)


def test_make_tiny_refuses_unknown_families(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny model family 'sora'"):
        make_tiny("sora", tmp_path)


def test_make_tiny_command(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(models_app, ["make-tiny", "ltx-t2v", str(tmp_path / "ltx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ltx" / "model_index.json").is_file()

    result = runner.invoke(models_app, ["make-tiny", "sora", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown family" in result.output
    assert not (tmp_path / "x").exists()


def test_engines_report_lists_every_engine_with_capabilities() -> None:
    report = {row["name"]: row for row in engines_report(Settings(engine="ltx"))}
    assert {"preview", "wan", "ltx", "cogvideox"} <= set(report)
    assert report["ltx"]["selected"] and not report["preview"]["selected"]
    for name in ("wan", "ltx", "cogvideox"):
        assert report[name]["available"] and report[name]["missing"] == []
        assert report[name]["modes"] == ["fun", "normal", "spicy"]
    # What each family can do; the selected engine as configured: no image model, no images.
    assert report["wan"]["image_input"] is True and report["cogvideox"]["image_input"] is True
    assert report["ltx"]["image_input"] is False
    # Model-card short sides, each size a multiple of the family's rule or cropped to the ratio.
    assert report["wan"]["sizes"]["1:1"] == "480x480"
    assert report["ltx"]["sizes"]["1:1"] == "512x512"
    assert report["cogvideox"]["sizes"]["3:2"] == "720x480"


def test_engines_command_json_and_table() -> None:
    app = typer.Typer()
    app.command("engines")(engines_command)

    @app.callback()
    def main() -> None:  # a group, so that "engines" is a sub-command as in the real CLI
        pass

    runner = CliRunner()
    result = runner.invoke(app, ["engines", "--json"])
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.output)]
    assert "wan" in names and "preview" in names

    result = runner.invoke(app, ["engines"])
    assert result.exit_code == 0, result.output
    assert "cogvideox" in result.output


def test_listing_engines_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from openimagine.cli_models import engines_report\n"
        "engines_report()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
