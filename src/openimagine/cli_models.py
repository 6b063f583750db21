"""``openimagine engines`` and ``openimagine models ...``: what can render here.

Both are thin shells: ``engines_report`` gathers the facts (without importing
torch: dependencies are checked with ``importlib.util.find_spec``), and
``make_tiny`` lives in the diffusers engine package (imported only when used).
Server modules are imported inside the functions: ``cli`` registers these
commands, and importing it must need no more than ``pip install openimagine``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from openimagine.cli_common import server_extra

if TYPE_CHECKING:
    from openimagine.catalog import Catalog
    from openimagine.settings import Settings

models_app = typer.Typer(no_args_is_help=True)
# How long ``models list`` waits for an upstream to answer.
REACH_TIMEOUT = 3.0
# engines.diffusers.tiny.FAMILIES, spelled out so that --help needs no server module
# (a test checks that the two agree).
TINY_FAMILIES = ("wan-t2v", "wan-i2v", "ltx-t2v", "ltx-i2v", "cogvideox-t2v", "cogvideox-i2v")


@models_app.callback()
def models() -> None:
    """The models this deployment serves, and model folders for the diffusers engines."""


def _reachable(url: str) -> str | None:
    """None when ``url`` answers HTTP at all (any status); else why not."""
    try:
        httpx.get(url, timeout=REACH_TIMEOUT)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None


def models_report(settings: Settings, catalog: Catalog, *, probe: bool = True) -> list[dict]:
    """One entry per model: what it costs and takes, and whether it can run here (its
    engine's modules are installed; a relay's upstreams answer). Never a key."""
    from openimagine.engines import ENGINES

    report = []
    for model in catalog.models.values():
        entry = dict(model.describe(), default=model.name == catalog.default)
        missing = [
            module for module in ENGINES[model.engine].requires if not _module_available(module)
        ]
        problems = [f"missing {module}" for module in missing]
        if model.relay and probe:
            for url in model.base_urls:
                why = _reachable(url)
                if why:
                    problems.append(f"{url} unreachable ({why})")
        entry["ready"] = not problems
        entry["problems"] = problems
        report.append(entry)
    return report


@models_app.command("list")
def models_list_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The models served (OPENIMAGINE_MODELS_FILE): engine, price, concurrency, readiness."""
    with server_extra():
        from openimagine.catalog import CatalogError, load_catalog
        from openimagine.settings import Settings

    settings = Settings()  # type: ignore[call-arg]  # values come from the environment
    try:
        catalog = load_catalog(settings)
    except CatalogError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    report = models_report(settings, catalog)
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    source = catalog.source or "no models file: one model, OPENIMAGINE_ENGINE"
    table = Table(title=f"Models ({source})")
    for column in ("model", "engine", "price", "videos", "at once", "images", "upstream", "ready"):
        table.add_column(column)
    for row in report:
        upstream = ""
        if "base_urls" in row:
            upstream = f"{row['upstream_model']} @ {', '.join(row['base_urls'])}"
            if row["fallbacks"]:
                upstream += f" (then {', '.join(row['fallbacks'])})"
        images = (
            "no"
            if not row["image_input"]
            else (
                f"first of up to {row['max_images']} as start image"
                if row.get("images") == "start"
                else f"up to {row['max_images']}"
            )
        )
        table.add_row(
            row["name"] + (" *" if row["default"] else ""),
            row["engine"],
            str(row["price"]),
            str(row["variations"]),
            str(row["concurrency"]),
            images,
            upstream,
            "yes" if row["ready"] else "no: " + "; ".join(row["problems"]),
        )
    Console(soft_wrap=True).print(table)


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _sizes(name: str, settings: Settings, ratios: tuple[str, ...]) -> dict[str, str]:
    from openimagine.engines.base import frame_size
    from openimagine.engines.diffusers.families import FAMILIES, default_sizes

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
    with server_extra():
        from openimagine.engines import ENGINES, engine_info
        from openimagine.settings import Settings

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
        ready = "yes" if row["available"] else "no: pip install 'openimagine[server,diffusers]'"
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
            "make-tiny needs the diffusers extra: pip install 'openimagine[server,diffusers]'",
            err=True,
        )
        raise typer.Exit(1)
    with server_extra():
        from openimagine.engines.diffusers.tiny import make_tiny

    path = make_tiny(family, directory)
    typer.echo(f"wrote a tiny {family} model to {path}")
