"""The ``openimagine`` command as an operator runs it: real processes, real
environment, a real SQLite file, and a real server where a key must work."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import Spawned, auth, openimagine_env, run_cli, wait_for_task

KEY = re.compile(r"\boi_[A-Za-z0-9_-]{20,}")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return openimagine_env(tmp_path / "data")


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A failed command: non-zero exit, one line on stderr, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def create(env: dict[str, str], name: str, *args: str) -> dict:
    result = run_cli(env, "accounts", "create", name, *args, "--json")
    return json.loads(result.stdout)


def show(env: dict[str, str], name: str) -> dict:
    return json.loads(run_cli(env, "accounts", "show", name, "--json").stdout)


def account_count(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT count(*) FROM accounts").fetchone()[0]


# --- accounts ----------------------------------------------------------------------------


def test_accounts_create_prints_the_account_and_its_key_once(env: dict[str, str]) -> None:
    created = create(env, "acme", "--plan", "free", "--credits", "100")
    assert created["account"]["name"] == "acme"
    assert created["account"]["plan"] == "free"
    assert created["account"]["balance"] == 100
    assert created["api_key"].startswith("oi_")
    assert KEY.fullmatch(created["api_key"])

    info = show(env, "acme")
    assert info["account"] == "acme"
    assert (info["plan"], info["balance"]) == ("free", 100)
    assert info["usage"]["tasks"] == {"pending": 0, "processing": 0, "completed": 0, "failed": 0}
    assert info["usage"]["credits_spent"] == 0
    # The key is shown once: nothing else prints it.
    assert created["api_key"] not in json.dumps(info)


def test_accounts_create_without_json_is_readable_and_shows_the_key(env: dict[str, str]) -> None:
    result = run_cli(env, "accounts", "create", "plain", "--plan", "pro", "--credits", "5")
    assert "plain" in result.stdout and "pro" in result.stdout
    assert len(KEY.findall(result.stdout)) == 1


def test_a_duplicate_account_name_is_a_clean_error(env: dict[str, str]) -> None:
    create(env, "acme")
    result = run_cli(env, "accounts", "create", "acme", "--json", check=False)
    assert_clean_error(result, "acme")
    assert result.stdout.strip() == ""  # no key for an account that was not created
    assert show(env, "acme")["balance"] == 0


def test_an_unknown_plan_is_a_clean_error_and_creates_nothing(env: dict[str, str]) -> None:
    result = run_cli(env, "accounts", "create", "acme", "--plan", "platinum", check=False)
    assert_clean_error(result, "platinum")
    assert "free" in result.stderr  # it says which plans exist
    missing = run_cli(env, "accounts", "show", "acme", check=False)
    assert_clean_error(missing, "acme")


def test_showing_an_unknown_account_is_a_clean_error(env: dict[str, str]) -> None:
    assert_clean_error(run_cli(env, "accounts", "show", "nobody", "--json", check=False), "nobody")


def test_credits_grant_adds_to_the_balance(env: dict[str, str]) -> None:
    create(env, "acme", "--credits", "100")
    result = run_cli(env, "credits", "grant", "acme", "250", "--json")
    assert json.loads(result.stdout) == {"account": "acme", "balance": 350}
    assert show(env, "acme")["balance"] == 350
    run_cli(env, "credits", "grant", "acme", "50")
    assert show(env, "acme")["balance"] == 400

    assert_clean_error(run_cli(env, "credits", "grant", "acme", "0", check=False))
    assert_clean_error(run_cli(env, "credits", "grant", "nobody", "10", check=False), "nobody")
    assert show(env, "acme")["balance"] == 400


# --- keys --------------------------------------------------------------------------------


def test_keys_create_list_and_revoke_against_a_running_server(
    tmp_path: Path, env: dict[str, str], spawn_server: Callable[..., Spawned]
) -> None:
    first_key = create(env, "acme", "--plan", "pro", "--credits", "100")["api_key"]
    created = json.loads(run_cli(env, "keys", "create", "acme", "--json").stdout)
    second_key = created["api_key"]
    assert created["account"] == "acme"
    assert second_key.startswith("oi_") and second_key != first_key

    listing = run_cli(env, "keys", "list", "acme", "--json").stdout
    keys = json.loads(listing)
    assert len(keys) == 2
    assert first_key.startswith(keys[0]["prefix"]) and second_key.startswith(keys[1]["prefix"])
    assert keys[0]["prefix"].startswith("oi_")
    assert all(not k["revoked"] for k in keys)
    human = run_cli(env, "keys", "list", "acme").stdout
    for key in (first_key, second_key):
        # Prefixes only: never the whole key, in either output.
        assert key not in listing and key not in human
        assert len(keys[0]["prefix"]) < len(key) - 16
    assert keys[0]["prefix"] in human

    server = spawn_server(tmp_path / "data")
    client = httpx.Client(base_url=server.base_url, timeout=30)
    try:

        def answer(key: str) -> int:
            return client.get(
                "/v1/status", params={"task_id": "task_doesnotexist"}, headers=auth(key)
            ).status_code

        assert answer(first_key) == 404 and answer(second_key) == 404  # both valid
        run_cli(env, "keys", "revoke", keys[1]["prefix"])
        response = client.get(
            "/v1/status", params={"task_id": "task_doesnotexist"}, headers=auth(second_key)
        )
        assert response.status_code == 401  # at once, in the running server
        assert response.json()["error"] == "UNAUTHORIZED"
        assert answer(first_key) == 404  # the account's other key still works
    finally:
        client.close()

    keys = json.loads(run_cli(env, "keys", "list", "acme", "--json").stdout)
    assert [k["revoked"] for k in keys] == [False, True]
    # Revoking again, or an unknown prefix, is a clean error.
    assert_clean_error(run_cli(env, "keys", "revoke", keys[1]["prefix"], check=False))
    assert_clean_error(run_cli(env, "keys", "revoke", "oi_zzzzzzzz", check=False))
    assert_clean_error(run_cli(env, "keys", "create", "nobody", check=False), "nobody")


# --- the database and where it lives -----------------------------------------------------


def test_db_upgrade_creates_the_database_and_is_idempotent(
    tmp_path: Path, env: dict[str, str]
) -> None:
    first = run_cli(env, "db", "upgrade")
    second = run_cli(env, "db", "upgrade")
    for result in (first, second):
        assert "up to date" in " ".join(result.stdout.split())  # however the console wraps
    database = tmp_path / "data" / "openimagine.db"
    assert database.is_file()
    with sqlite3.connect(database) as connection:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"accounts", "api_keys", "ledger_entries", "tasks"} <= tables
    assert len(versions) == 1
    # Accounts survive a further upgrade.
    create(env, "acme", "--credits", "7")
    run_cli(env, "db", "upgrade")
    assert show(env, "acme")["balance"] == 7


def test_every_command_honours_the_data_dir(tmp_path: Path) -> None:
    one = openimagine_env(tmp_path / "one")
    two = openimagine_env(tmp_path / "two")
    create(one, "acme", "--credits", "10")
    assert (tmp_path / "one" / "openimagine.db").is_file()
    assert not (tmp_path / "two").exists()
    assert_clean_error(run_cli(two, "accounts", "show", "acme", check=False), "acme")
    create(two, "acme", "--credits", "20")  # a separate database: the name is free there
    run_cli(one, "credits", "grant", "acme", "5")
    assert show(one, "acme")["balance"] == 15
    assert show(two, "acme")["balance"] == 20


def test_every_command_honours_the_database_url(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "accounts.sqlite"
    env = openimagine_env(tmp_path / "data", database_url=f"sqlite:///{elsewhere}")

    run_cli(env, "db", "upgrade")
    assert elsewhere.is_file()
    key = create(env, "acme", "--credits", "10")["api_key"]
    run_cli(env, "credits", "grant", "acme", "5")
    prefix = json.loads(run_cli(env, "keys", "list", "acme", "--json").stdout)[0]["prefix"]
    assert key.startswith(prefix)
    run_cli(env, "keys", "create", "acme")
    run_cli(env, "keys", "revoke", prefix)
    assert show(env, "acme")["balance"] == 15
    assert account_count(elsewhere) == 1
    assert not (tmp_path / "data" / "openimagine.db").exists()

    # Without the URL, the data dir's own (empty) database knows nothing of it.
    plain = openimagine_env(tmp_path / "data")
    assert_clean_error(run_cli(plain, "accounts", "show", "acme", check=False), "acme")


def test_an_unreachable_database_is_a_clean_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    env = openimagine_env(tmp_path / "data", database_url=f"sqlite:///{blocker}/sub/openimagine.db")
    for args in (("accounts", "show", "acme"), ("db", "upgrade")):
        assert_clean_error(run_cli(env, *args, check=False), "cannot open the database")


# --- the first serve on loopback ---------------------------------------------------------


def test_first_serve_on_loopback_creates_a_local_account_and_prints_a_working_key(
    tmp_path: Path, spawn_server: Callable[..., Spawned]
) -> None:
    data = tmp_path / "data"
    first = spawn_server(data)
    log = first.log.read_text()
    keys = KEY.findall(log)
    assert keys, log
    key = keys[0]
    assert set(keys) == {key}  # the key line and the curl line carry the same key
    assert "local" in log
    curl = next(line for line in log.splitlines() if line.startswith("curl "))
    assert f"{first.base_url}/v1/generate" in curl
    assert f"Authorization: Bearer {key}" in curl

    client = httpx.Client(base_url=first.base_url, timeout=30)
    try:
        response = client.post(
            "/v1/generate", json={"prompt": "a paper boat on a river"}, headers=auth(key)
        )
        assert response.status_code == 200, response.text
        task_id = response.json()["data"]["task_id"]
        assert wait_for_task(client, key, task_id, timeout=90)["status"] == "completed"
    finally:
        client.close()
    first.stop()

    env = openimagine_env(data)
    info = show(env, "local")
    assert info["plan"] == "pro" and info["balance"] == 10_000 - 40

    second = spawn_server(data)
    assert not KEY.search(second.log.read_text())  # no second account, no key printed
    second.stop()
    assert account_count(data / "openimagine.db") == 1


def test_serve_does_not_create_a_local_account_when_one_exists(
    tmp_path: Path, spawn_server: Callable[..., Spawned]
) -> None:
    data = tmp_path / "data"
    create(openimagine_env(data), "ops", "--credits", "1")
    server = spawn_server(data)
    assert not KEY.search(server.log.read_text())
    server.stop()
    assert account_count(data / "openimagine.db") == 1
    assert_clean_error(
        run_cli(openimagine_env(data), "accounts", "show", "local", check=False), "local"
    )
