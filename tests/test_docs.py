"""The README lists every setting, CLI command and error code (docs that cannot drift)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import typer

from openimagine import errors
from openimagine.cli import app
from openimagine.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group: object, prefix: str = "openimagine") -> list[str]:
    found = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):  # a group (typer may vendor its own click)
            found += _commands(command, path)
        else:
            found.append(path)
    return found


def test_every_setting_is_in_the_readme() -> None:
    missing = [
        f"OPENIMAGINE_{name.upper()}"
        for name in Settings.model_fields
        if f"`OPENIMAGINE_{name.upper()}`" not in README
    ]
    assert not missing, f"README lacks settings: {missing}"


def test_every_cli_command_is_in_the_readme() -> None:
    commands = _commands(typer.main.get_group(app))
    assert "openimagine accounts create" in commands
    missing = [c for c in commands if f"`{c}" not in README]
    assert not missing, f"README lacks commands: {missing}"


def test_every_error_code_is_in_the_readme() -> None:
    codes = {
        cls.code
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ServiceError)
    }
    assert "INSUFFICIENT_CREDITS" in codes
    missing = [code for code in codes if f"`{code}`" not in README]
    assert not missing, f"README lacks error codes: {missing}"


def test_every_api_route_is_in_the_readme(tmp_path: Path) -> None:
    from openimagine.api.app import create_app

    app = create_app(
        Settings(data_dir=tmp_path, secret_key="docs-check-0123456789"), run_workers=False
    )
    paths = {route.path for route in app.routes if route.path.startswith("/v1/")}  # type: ignore[attr-defined]
    assert "/v1/videos/{video_id}/remix" in paths
    # README writes a path parameter as {id}, and may put the method first.
    missing = [
        path
        for path in sorted(paths)
        if not re.search(
            r"`(?:(?:GET|POST|DELETE) )?" + re.escape(re.sub(r"\{\w+\}", "{id}", path)) + r"[`?\s]",
            README,
        )
    ]
    assert not missing, f"README lacks API routes: {missing}"
