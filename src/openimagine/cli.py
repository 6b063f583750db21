"""The ``openimagine`` command: a thin shell over the library.

Human output by default, ``--json`` where a script would parse it. Every
command reads the same settings (``OPENIMAGINE_DATA_DIR``,
``OPENIMAGINE_DATABASE_URL``, ...).

``pip install openimagine`` has the client commands only (``generate``,
``status``); the others need ``openimagine[server]``. So importing this module
loads no server module: each server command imports what it needs inside
``cli_common.server_extra()``, which makes a missing dependency one line and exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from openimagine.cli_client import generate_command, status_command
from openimagine.cli_common import (
    JsonOption,
    fail,
    load_models,
    load_settings,
    open_db,
    print_json,
    server_extra,
)
from openimagine.cli_models import engines_command, models_app
from openimagine.cli_webhooks import webhooks_app
from openimagine.errors import AccountNotFound, KeyNotFound  # dependency-free

if TYPE_CHECKING:
    from openimagine.settings import Settings
    from openimagine.store.db import Database

app = typer.Typer(
    help="openimagine: self-hosted video generation with the Grok Imagine API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
accounts_app = typer.Typer(help="Create and inspect accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Grant credits.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(webhooks_app, name="webhooks")
app.command("engines")(engines_command)
app.command("generate")(generate_command)
app.command("status")(status_command)

# soft_wrap: never break a key, URL or path across lines, terminal or not.
console = Console(soft_wrap=True)

LOCAL_ACCOUNT = "local"
LOCAL_CREDITS = 10_000
# settings.PLANS, spelled out so that --help needs no server module (a test checks
# that the two agree).
PLAN_NAMES = ("free", "pro", "enterprise")


def _bootstrap_local_account(settings: Settings, db: Database) -> None:
    """First run on loopback: an account to try things with, and how to call it."""
    from openimagine.services import accounts

    if not settings.is_local or accounts.count_accounts(db) > 0:
        return
    _, key = accounts.create_account(db, LOCAL_ACCOUNT, plan="pro", credits=LOCAL_CREDITS)
    base = settings.resolved_public_url
    console.print(
        f"[bold]Created account '{LOCAL_ACCOUNT}'[/] (pro, {LOCAL_CREDITS} credits). "
        "Its API key, shown only this once:"
    )
    console.print(key, soft_wrap=True, highlight=False)
    console.print("Try it:")
    console.print(
        f'curl -X POST {base}/v1/generate -H "Authorization: Bearer {key}" '
        '-H "Content-Type: application/json" '
        '-d \'{"mode": "fun", "prompt": "a beautiful landscape with mountains", '
        '"ratio": "1:1"}\'',
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker loops in this process.")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run the API alone.")] = False,
) -> None:
    """Run the API (and, by default, the worker pool) in one process."""
    with server_extra():
        import uvicorn

        from openimagine.api.app import create_app

    settings = load_settings(host=host, port=port, workers=workers)
    catalog = load_models(settings)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    db = open_db(settings)
    _bootstrap_local_account(settings, db)
    db.dispose()
    application = create_app(settings, catalog=catalog, run_workers=False if no_worker else None)
    from openimagine.api.observe import log_access_lines
    from openimagine.api.serving import uvicorn_options

    log_access_lines(settings.access_log)

    uvicorn.run(application, **uvicorn_options(settings))


@app.command()
def worker(
    workers: Annotated[
        int | None,
        typer.Option(
            help="Tasks at once when there is no models file (a models file sets each "
            "model's concurrency)."
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Serve only these models, comma-separated (default: every model)."),
    ] = None,
) -> None:
    """Run workers alone against the configured database.

    With OPENIMAGINE_BROKER_URL: a Celery worker per model on the queue
    openimagine.<model>; a local model forks one process per slot (keep its
    concurrency at 1 and run one worker per GPU), a relay runs its slots as threads.
    """
    with server_extra():
        from openimagine.api.app import build_storage
        from openimagine.catalog import CatalogError
        from openimagine.worker.pool import WorkerPool

    settings = load_settings(workers=workers)
    catalog = load_models(settings)
    try:
        served = catalog.subset(
            [name.strip() for name in (models or "").split(",") if name.strip()]
        )
    except CatalogError as exc:
        fail(str(exc))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    db = open_db(settings)
    if settings.broker_url:
        # Nothing of the parent's pool may leak into the forked worker processes.
        db.dispose()
        if len(served) > 1:
            raise typer.Exit(_run_worker_per_model([model.name for model in served], workers))
        from openimagine.worker.celery_app import run_worker

        run_worker(settings, served[0], catalog)
        return

    async def main() -> None:
        stop = asyncio.Event()
        pool = WorkerPool(settings, db, build_storage(settings), catalog, models=served)
        loop = asyncio.get_running_loop()

        def shut_down() -> None:
            stop.set()
            pool.cancel_running()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, shut_down)
        await pool.run(stop)

    asyncio.run(main())


def _run_worker_per_model(names: list[str], workers: int | None) -> int:
    """One Celery worker process per model (each with its own pool and concurrency);
    SIGTERM and SIGINT are passed on, and the exit code is the worst of theirs."""
    command = [sys.executable, "-m", "openimagine", "worker"]
    if workers is not None:
        command += ["--workers", str(workers)]
    children = [subprocess.Popen([*command, "--models", name]) for name in names]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    return max(child.wait() for child in children)


T = TypeVar("T")


def with_accounts(action: Callable[[Any, Database], T]) -> T:
    """``action(services.accounts, db)``; an unknown account or key, or a bad value,
    is one line and exit 1."""
    with server_extra():
        from openimagine.services import accounts

    db = open_db(load_settings())
    try:
        return action(accounts, db)
    except (AccountNotFound, KeyNotFound, ValueError) as exc:
        fail(str(exc))


@accounts_app.command("create")
def accounts_create(
    name: str,
    plan: Annotated[str, typer.Option(help=f"One of {', '.join(PLAN_NAMES)}.")] = "free",
    credits: Annotated[int, typer.Option(help="Credits to start with.")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Create an account and its first API key (printed once)."""
    account, key = with_accounts(
        lambda accounts, db: accounts.create_account(db, name, plan=plan, credits=credits)
    )
    if json_output:
        print_json(
            {
                "account": {"name": account.name, "plan": account.plan, "balance": credits},
                "api_key": key,
            }
        )
        return
    console.print(f"Created account '{name}' ({plan}, {credits} credits). API key (shown once):")
    console.print(key, soft_wrap=True, highlight=False)


@accounts_app.command("show")
def accounts_show(name: str, json_output: JsonOption = False) -> None:
    """Plan, balance and usage of an account."""
    info = with_accounts(lambda accounts, db: accounts.summary(db, name=name))
    if json_output:
        print_json(info)
        return
    console.print(f"[bold]{info['account']}[/]  plan {info['plan']}  balance {info['balance']}")
    tasks = info["usage"]["tasks"]
    console.print(
        "tasks: "
        + ", ".join(f"{count} {status}" for status, count in tasks.items())
        + f"; credits spent: {info['usage']['credits_spent']}"
    )


@accounts_app.command("set-plan")
def accounts_set_plan(name: str, plan: str) -> None:
    """Move an account to another plan."""
    with_accounts(lambda accounts, db: accounts.set_plan(db, name, plan))
    console.print(f"'{name}' is now on the {plan} plan.")


@keys_app.command("create")
def keys_create(name: str, json_output: JsonOption = False) -> None:
    """Add an API key to an account (printed once)."""
    key = with_accounts(lambda accounts, db: accounts.create_key(db, name))
    if json_output:
        print_json({"account": name, "api_key": key})
    else:
        console.print(key, soft_wrap=True, highlight=False)


@keys_app.command("list")
def keys_list(name: str, json_output: JsonOption = False) -> None:
    """The keys of an account, by prefix."""
    keys: list[Any] = with_accounts(lambda accounts, db: accounts.list_keys(db, name))
    if json_output:
        print_json(
            [
                {
                    "prefix": k.prefix,
                    "created_at": k.created_at,
                    "revoked": k.revoked_at is not None,
                }
                for k in keys
            ]
        )
        return
    table = Table("prefix", "created", "state")
    for k in keys:
        table.add_row(k.prefix, str(k.created_at)[:19], "revoked" if k.revoked_at else "active")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_prefix: str) -> None:
    """Revoke the key that starts with KEY_PREFIX (at once, for every API process)."""
    prefix = with_accounts(lambda accounts, db: accounts.revoke_key(db, key_prefix))
    console.print(f"Revoked {prefix}…")


@credits_app.command("grant")
def credits_grant(name: str, amount: int, json_output: JsonOption = False) -> None:
    """Add AMOUNT credits to an account."""
    balance = with_accounts(lambda accounts, db: accounts.grant_credits(db, name, amount))
    if json_output:
        print_json({"account": name, "balance": balance})
    else:
        console.print(f"'{name}' now has {balance} credits.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (serve does this on start)."""
    settings = load_settings()
    db = open_db(settings)
    console.print(f"Database at {db.url.render_as_string(hide_password=True)} is up to date.")


def main() -> None:  # pragma: no cover - console script entry
    app(prog_name="openimagine")


if __name__ == "__main__":  # pragma: no cover
    main()
