"""``openimagine generate`` and ``openimagine status``: the SDK from a shell.

A thin shell over ``openimagine.client``: human output by default (the
progress bar and notes on stderr, the results on stdout, so that
``openimagine generate ... --out videos | xargs ...`` works), ``--json`` for
scripts. Every error is one ``error: ...`` line and exit code 1; an
interrupted wait exits 130 and says how to look the task up later.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from openimagine.cli_common import JsonOption, fail, print_json
from openimagine.client import (
    ENV_API_KEY,
    ENV_BASE_URL,
    AuthenticationError,
    Client,
    OpenImagineError,
    Task,
)

POLL_SECONDS = 1.0

stderr = Console(stderr=True)

BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar=ENV_BASE_URL,
        show_default=False,
        help="API base URL (default http://127.0.0.1:8000).",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar=ENV_API_KEY, show_default=False, help="API key (oi_...)."),
]


@contextmanager
def _client(base_url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client whose errors become one ``error:`` line and exit code 1."""
    if not api_key:
        fail(f"no API key: pass --api-key or set {ENV_API_KEY}")
    try:
        with Client(api_key=api_key, base_url=base_url) as client:
            yield client
    except AuthenticationError as exc:
        fail(f"{exc} (check --api-key or {ENV_API_KEY})")
    except OpenImagineError as exc:
        fail(str(exc))


def _wait(client: Client, task: Task, *, timeout: float, quiet: bool) -> Task:
    """Poll until done, with a progress bar on stderr unless ``quiet``."""
    if quiet:
        return client.wait(task, timeout=timeout, poll_interval=POLL_SECONDS)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        bar = progress.add_task("pending", total=100)

        def show(current: Task) -> None:
            progress.update(bar, completed=current.progress, description=current.status)

        return client.wait(task, timeout=timeout, poll_interval=POLL_SECONDS, on_progress=show)


def generate_command(
    prompt: Annotated[str, typer.Argument(help="What the video should show.")],
    mode: Annotated[str | None, typer.Option(help="fun, normal or spicy.")] = None,
    ratio: Annotated[str | None, typer.Option(help="1:1, 2:3, 3:2, 16:9 or 9:16.")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image", help="An http(s) URL or a local JPEG/PNG/WebP file; repeat for more."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the task is done.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Download the videos into this folder (implies --wait).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 600,
    json_output: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Submit a generation; with --wait, show progress; with --out, download the MP4s."""
    with _client(base_url, api_key) as client:
        task = client.generate(prompt, mode=mode, ratio=ratio, images=image or None)
        if not (wait or out):
            if json_output:
                print_json(task.to_dict())
            else:
                typer.echo(task.task_id)
                stderr.print(
                    f"Submitted. Follow it with: openimagine status {task.task_id}", highlight=False
                )
            return
        if not json_output:
            stderr.print(f"Submitted {task.task_id}", highlight=False)
        try:
            task = _wait(client, task, timeout=timeout, quiet=json_output)
        except KeyboardInterrupt:
            fail(f"interrupted; the task goes on: openimagine status {task.task_id}", 130)
        paths = client.download(task, out) if out else []
    if json_output:
        print_json({**task.to_dict(), "files": [str(path) for path in paths]})
        return
    for line in paths or task.response:
        typer.echo(str(line))


def status_command(
    task_id: Annotated[str, typer.Argument(help="The task id (task_...).")],
    json_output: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """A task's status, progress and (once completed) its video URLs."""
    with _client(base_url, api_key) as client:
        task = client.status(task_id)
    if json_output:
        print_json(task.to_dict())
        return
    created = task.created_at.strftime("%Y-%m-%d %H:%M:%SZ") if task.created_at else "?"
    typer.echo(
        f"{task.task_id}  {task.status}  {task.progress}%  "
        f"created {created}  credits {task.consumed_credits}"
    )
    if task.error_message:
        typer.echo(f"error_message: {task.error_message}")
    if task.files_expired:
        typer.echo("files_expired: the server's retention deleted this task's files")
    for url in task.response:
        typer.echo(url)
