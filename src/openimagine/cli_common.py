"""What every ``openimagine`` command module shares, importable without the server.

``pip install openimagine`` has the client commands only; the server commands
import their modules inside ``server_extra()``, so that without
``openimagine[server]`` they end in one line and exit 1, not a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from openimagine.catalog import Catalog
    from openimagine.settings import Settings
    from openimagine.store.db import Database

SERVER_INSTALL = "pip install 'openimagine[server]'"

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@contextmanager
def server_extra() -> Iterator[None]:
    """Around a server command's imports: a missing dependency is one line, exit 1."""
    try:
        yield
    except ModuleNotFoundError as exc:
        fail(f"this command needs the server (missing {exc.name}): {SERVER_INSTALL}")


def load_settings(**overrides: Any) -> Settings:
    with server_extra():
        from openimagine.settings import Settings
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        fail(f"invalid settings: {exc}")


def load_models(settings: Settings) -> Catalog:
    """The catalog of models; a bad models file is one line and exit 1."""
    from openimagine.catalog import CatalogError, load_catalog

    try:
        return load_catalog(settings)
    except CatalogError as exc:
        fail(str(exc))


def open_db(settings: Settings) -> Database:
    """The database, migrated to the latest schema."""
    from openimagine.store import migrate
    from openimagine.store.db import Database

    try:
        # A bad URL, or a folder for the SQLite file that cannot be created.
        db = Database(settings.resolved_database_url)
    except Exception as exc:
        fail(f"cannot open the database (check OPENIMAGINE_DATABASE_URL): {exc}")
    try:
        migrate.upgrade(db)
    except Exception as exc:
        fail(f"cannot open the database {db.url.render_as_string(hide_password=True)}: {exc}")
    return db
