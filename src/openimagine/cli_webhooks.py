"""``openimagine webhooks ...``: an operator's view of an account's webhooks, a thin
shell over ``services/webhooks.py`` (the same as ``/v1/webhooks`` for its owner).
The service is imported inside each command: ``cli`` registers these, and
importing it must need no more than ``pip install openimagine``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from openimagine.cli_common import (
    JsonOption,
    fail,
    load_settings,
    open_db,
    print_json,
    server_extra,
)
from openimagine.errors import AccountNotFound, ServiceError

if TYPE_CHECKING:
    from openimagine.settings import Settings
    from openimagine.store.db import Database

# services.webhooks.EVENT_TYPES, spelled out so that --help needs no server module
# (a test checks that the two agree).
EVENT_TYPES = ("task.completed", "task.failed", "video.completed", "video.failed")
webhooks_app = typer.Typer(no_args_is_help=True)
console = Console(soft_wrap=True)


@webhooks_app.callback()
def webhooks_group() -> None:
    """Webhook endpoints, default secrets and delivery logs of accounts."""


def _open(account: str) -> tuple[Settings, Database, int]:
    # The shared setup of every command; the services are server modules (``server_extra``).
    from openimagine.services import webhooks

    settings = load_settings()
    db = open_db(settings)
    try:
        return settings, db, webhooks.account_id(db, account)
    except AccountNotFound as exc:
        fail(str(exc))


@webhooks_app.command("add")
def add(
    account: str,
    url: str,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help=f"Send only this event type (repeat for more): "
            f"{', '.join(EVENT_TYPES)}. Default: all.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Register URL as a webhook endpoint of ACCOUNT; prints its secret (once)."""
    with server_extra():
        from openimagine.services import webhooks

    settings, db, owner = _open(account)
    try:
        checked = webhooks.check_url(url, "url", allow_private=settings.allow_private_urls)
        events = webhooks.check_events(event or None)
        endpoint, secret = webhooks.add_endpoint(db, owner, checked, events)
    except ServiceError as exc:
        fail(exc.public_message)
    if json_output:
        print_json({**endpoint.view(), "secret": secret})
        return
    console.print(
        f"Added {endpoint.id} → {endpoint.url} ({', '.join(endpoint.events)}). "
        "Its signing secret (shown once):",
        highlight=False,
    )
    console.print(secret, highlight=False)


@webhooks_app.command("list")
def list_(account: str, json_output: JsonOption = False) -> None:
    """The webhook endpoints of ACCOUNT."""
    with server_extra():
        from openimagine.services import webhooks

    _, db, owner = _open(account)
    endpoints = [endpoint.view() for endpoint in webhooks.list_endpoints(db, owner)]
    if json_output:
        print_json(endpoints)
        return
    table = Table(
        Column("id", no_wrap=True),
        Column("url", overflow="fold"),
        Column("events", overflow="fold"),
        Column("created", no_wrap=True),
        "state",
    )
    for endpoint in endpoints:
        table.add_row(
            endpoint["id"],
            endpoint["url"],
            ", ".join(endpoint["events"]),
            endpoint["created_at"],
            "disabled (410)" if endpoint["disabled"] else "active",
        )
    console.print(table)


@webhooks_app.command("remove")
def remove(account: str, webhook_id: str) -> None:
    """Remove the endpoint WEBHOOK_ID of ACCOUNT (its waiting deliveries are dropped)."""
    with server_extra():
        from openimagine.services import webhooks

    _, db, owner = _open(account)
    try:
        webhooks.remove_endpoint(db, owner, webhook_id)
    except ServiceError as exc:
        fail(exc.public_message)
    console.print(f"Removed {webhook_id}.", highlight=False)


@webhooks_app.command("secret")
def secret(
    account: str,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Make a new one; the old one still signs for a day.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """The default secret of ACCOUNT: it signs deliveries to tasks' callback URLs."""
    with server_extra():
        from openimagine.services import webhooks

    _, db, owner = _open(account)
    key = webhooks.default_secret(db, owner, rotate=rotate)
    if json_output:
        print_json({"account": account, "key": key, "rotated": rotate})
    else:
        console.print(key, highlight=False)


def _attempt_line(attempt: dict[str, Any]) -> str:
    answer = (
        f"HTTP {attempt['status_code']}"
        if attempt["status_code"] is not None
        else f"no answer ({attempt['error']})"
    )
    after = f", next try {attempt['next_attempt_at']}" if attempt["next_attempt_at"] else ""
    return (
        f"    try {attempt['attempt']}  {attempt['at']}  {answer}  "
        f"{attempt['latency_ms']} ms{after}"
    )


@webhooks_app.command("deliveries")
def deliveries(
    account: str,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook", help="Only to this endpoint ('default': to tasks' callback URLs)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """The webhook deliveries of ACCOUNT, newest first, with every try: time, HTTP
    status, latency and the next try."""
    with server_extra():
        from openimagine.services import webhooks

    _, db, owner = _open(account)
    try:
        rows, _ = webhooks.deliveries(db, owner, webhook, limit=limit)
    except ServiceError as exc:
        fail(exc.public_message)
    if json_output:
        print_json(rows)
        return
    # One line per delivery and one per try: URLs and ids stay whole at any width.
    for row in rows:
        console.print(
            escape(
                f"{row['id']}  {row['type']}  {row['event_id']}  {row['task_id']}  {row['url']}  "
            )
            + f"[bold]{row['status']}[/]",
            highlight=False,
        )
        for attempt in row["attempts"]:
            console.print(_attempt_line(attempt), highlight=False, markup=False)
        if row["status"] == "pending" and not row["attempts"]:
            console.print(f"    first try due {row['next_attempt_at']}", highlight=False)
    if not rows:
        console.print("No deliveries yet.")
