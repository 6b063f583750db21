"""What every ``openimagine`` command module shares, importable without the server.

``pip install openimagine`` has the client commands only; the server commands
import their modules inside ``server_extra()``, so that without
``openimagine[server]`` they end in one line and exit 1, not a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

SERVER_INSTALL = "pip install 'openimagine[server]'"


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def server_extra() -> Iterator[None]:
    """Around a server command's imports: a missing dependency is one line, exit 1."""
    try:
        yield
    except ModuleNotFoundError as exc:
        fail(f"this command needs the server (missing {exc.name}): {SERVER_INSTALL}")
