"""``openimagine engines`` and ``openimagine models ...``: what can render here.

Both are thin shells: ``engines_report`` gathers the facts (without importing
torch: dependencies are checked with ``importlib.util.find_spec``), and
``make_tiny`` lives in the diffusers engine package (imported only when used).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from openimagine.engines import ENGINES, engine_info
from openimagine.engines.base import frame_size
from openimagine.engines.diffusers.families import FAMILIES, default_sizes
from openimagine.engines.diffusers.tiny import FAMILIES as TINY_FAMILIES
from openimagine.settings import Settings

models_app = typer.Typer(no_args_is_help=True)


@models_app.callback()
def models() -> None:
    """Model folders for the diffusers engines (wan, ltx, cogvideox)."""


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _sizes(name: str, settings: Settings, ratios: tuple[str, ...]) -> dict[str, str]:
    if name in FAMILIES:
        explicit = "resolution" in settings.model_fields_set
        sizes = default_sizes(FAMILIES[name], settings.resolution if explicit else None)
        return {ratio: f"{sizes[ratio][0]}x{sizes[ratio][1]}" for ratio in ratios if ratio in sizes}
    result = {}
    for ratio in ratios:
        width, height = frame_size(ratio, settings.resolution)
        result[ratio] = f"{width}x{height}"
    return result


def engines_report(settings: Settings | None = None) -> list[dict[str, Any]]:
    """One entry per registered engine: what it supports and whether it can run here."""
    settings = settings or Settings()  # type: ignore[call-arg]  # values come from the environment
    report = []
    for name, entry in ENGINES.items():
        # The selected engine as configured (image input needs an I2V model).
        info = engine_info(name, settings if name == settings.engine else None)
        missing = [module for module in entry.requires if not _module_available(module)]
        report.append(
            {
                "name": name,
                "description": info.description,
                "selected": name == settings.engine,
                "available": not missing,
                "missing": missing,
                "modes": list(info.modes),
                "ratios": list(info.ratios),
                "image_input": info.image_input,
                "max_images": info.max_images,
                "sizes": _sizes(name, settings, info.ratios),
            }
        )
    return report


def engines_command(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the list as JSON for scripts.")
    ] = False,
) -> None:
    """List the engines (OPENIMAGINE_ENGINE), what they support and whether they can run here."""
    report = engines_report()
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title="Engines (select with OPENIMAGINE_ENGINE)")
    for column in ("engine", "ready", "modes", "images", "sizes", "description"):
        table.add_column(column)
    for row in report:
        ready = "yes" if row["available"] else "no: pip install 'openimagine[diffusers]'"
        if row["missing"]:
            ready += f" (missing {', '.join(row['missing'])})"
        name = row["name"] + (" *" if row["selected"] else "")
        images = f"up to {row['max_images']}" if row["image_input"] else "no"
        sizes = ", ".join(f"{ratio} {size}" for ratio, size in row["sizes"].items())
        table.add_row(name, ready, ", ".join(row["modes"]), images, sizes, row["description"])
    Console().print(table)


@models_app.command("make-tiny")
def make_tiny_command(
    family: Annotated[
        str, typer.Argument(metavar="FAMILY", help=f"One of: {', '.join(TINY_FAMILIES)}.")
    ],
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder to write the model into.")
    ],
) -> None:
    """Write a tiny random-weight model (real diffusers layout, no download) for tests and smoke runs."""
    if family not in TINY_FAMILIES:
        raise typer.BadParameter(
            f"unknown family {family!r} (families: {', '.join(TINY_FAMILIES)})", param_hint="FAMILY"
        )
    if not _module_available("diffusers") or not _module_available("torch"):
        typer.echo(
            "make-tiny needs the diffusers extra: pip install 'openimagine[diffusers]'", err=True
        )
        raise typer.Exit(1)
    from openimagine.engines.diffusers.tiny import make_tiny

    path = make_tiny(family, directory)
    typer.echo(f"wrote a tiny {family} model to {path}")
