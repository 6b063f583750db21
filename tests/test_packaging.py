"""``pip install openimagine`` is the SDK and the client commands; the server is the
``server`` extra. Checked on a real wheel in a fresh virtual environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from scaleout import unavailable

ROOT = Path(__file__).resolve().parents[1]
SERVER_LIBRARIES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "av",
    "numpy",
    "PIL",
    "pydantic_settings",
)
SERVER_MODULES = (
    "openimagine.api",
    "openimagine.store",
    "openimagine.services",
    "openimagine.worker",
    "openimagine.engines",
    "openimagine.catalog",
    "openimagine.settings",
    "openimagine.media",
)


def test_importing_the_cli_loads_no_server_module() -> None:
    probe = (
        "import sys, openimagine.cli, openimagine.client\n"
        f"print(sorted(m for m in sys.modules if m in {SERVER_LIBRARIES!r} "
        f"or m.startswith({SERVER_MODULES!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_names_spelled_out_for_help_are_the_servers() -> None:
    # --help may not import the server, so the CLI spells these out; they must agree.
    from openimagine import cli, cli_models, cli_webhooks
    from openimagine.engines.diffusers import tiny
    from openimagine.services import webhooks
    from openimagine.settings import PLANS

    assert cli.PLAN_NAMES == PLANS
    assert cli_webhooks.EVENT_TYPES == webhooks.EVENT_TYPES
    assert cli_models.TINY_FAMILIES == tiny.FAMILIES


@pytest.mark.timeout(240)
def test_the_plain_install_is_the_client_without_the_server(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("openimagine-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, command = env_dir / "bin" / "python", env_dir / "bin" / "openimagine"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if installed.returncode != 0:
        unavailable("the package index", installed.stderr.strip()[-500:])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    sdk = run(str(python), "-c", "from openimagine.client import AsyncClient, Client")
    assert sdk.returncode == 0, sdk.stderr
    assert run(str(python), "-c", "import fastapi").returncode != 0

    help_ = run(str(command), "generate", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "Submit a generation" in help_.stdout

    for args in (
        ["serve"],
        ["accounts", "create", "someone"],
        ["webhooks", "list", "someone"],
        ["engines"],
    ):
        result = run(str(command), *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert "pip install 'openimagine[server]'" in lines[0], (args, lines)


def _imports_of(path: Path, package: str) -> set[str]:
    """The openimagine names ``path`` imports anywhere (inside functions too: a
    deferred import is still a dependency), except under ``if TYPE_CHECKING``:
    ``from a.b import c`` gives ``a.b.c`` (the module ``c``, or ``a.b``'s name ``c``)."""
    import ast

    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for node in ast.walk(branch)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("openimagine")}


def test_the_package_has_no_import_cycle() -> None:
    # A cycle makes import order matter and hides which module owns a concern.
    source = ROOT / "src"
    modules = {}
    for path in (source / "openimagine").rglob("*.py"):
        parts = path.relative_to(source).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:  # ``pkg.mod.attr`` -> ``pkg.mod``
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {owner(imported) for imported in _imports_of(path, package)} - {None, name}

    # Depth-first search; a grey module met again closes a cycle.
    state: dict[str, str] = {}
    trail: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = "grey"
        trail.append(name)
        for imported in sorted(graph[name]):  # type: ignore[type-var]
            if state.get(imported) == "grey":
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        trail.pop()
        state[name] = "black"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []
