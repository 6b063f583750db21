"""``openimagine generate`` and ``openimagine status`` as real subprocesses
against a real server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import Server, free_port, openimagine_env, run_cli

PROMPT = "a beautiful landscape with mountains"


def client_env(tmp_path: Path, base_url: str, key: str | None) -> dict[str, str]:
    env = openimagine_env(tmp_path / "cli-data")
    env["OPENIMAGINE_BASE_URL"] = base_url
    if key is not None:
        env["OPENIMAGINE_API_KEY"] = key
    return env


def assert_one_error_line(result: object) -> str:
    assert result.returncode != 0  # type: ignore[attr-defined]
    output = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_generate_wait_out_prints_the_paths_of_two_mp4s(server: Server, tmp_path: Path) -> None:
    env = client_env(tmp_path, server.base_url, server.account())
    out = tmp_path / "videos"
    result = run_cli(
        env, "generate", PROMPT, "--mode", "fun", "--ratio", "9:16", "--wait", "--out", str(out)
    )
    paths = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(paths) == 2, result.stdout
    for path in paths:
        assert path.parent == out and path.suffix == ".mp4"
        assert path.read_bytes()[4:8] == b"ftyp"
    assert "Traceback" not in result.stderr


def test_out_implies_wait_and_json_lists_the_files(server: Server, tmp_path: Path) -> None:
    key = server.account()
    result = run_cli(
        client_env(tmp_path, "http://127.0.0.1:1", "oi_ignored"),
        "generate",
        PROMPT,
        "--out",
        str(tmp_path / "v"),
        "--json",
        "--base-url",
        server.base_url,
        "--api-key",
        key,
    )
    data = json.loads(result.stdout)
    assert data["status"] == "completed" and len(data["response"]) == 2
    assert [Path(p).name for p in data["files"]] == [f"{data['task_id']}-{n}.mp4" for n in (1, 2)]
    assert all(Path(p).is_file() for p in data["files"])


def test_generate_without_wait_prints_the_task_id_and_status_reads_it(
    server: Server, tmp_path: Path
) -> None:
    key = server.account()
    env = client_env(tmp_path, server.base_url, key)
    task_id = run_cli(env, "generate", PROMPT).stdout.strip()
    assert task_id.startswith("task_")
    server.wait(key, task_id)
    human = run_cli(env, "status", task_id).stdout
    assert task_id in human and "completed" in human and human.count(".mp4") == 2
    data = json.loads(run_cli(env, "status", task_id, "--json").stdout)
    assert data["task_id"] == task_id and data["progress"] == 100
    assert data["created_at"].endswith("Z")


def test_generate_wait_without_out_prints_the_video_urls(server: Server, tmp_path: Path) -> None:
    env = client_env(tmp_path, server.base_url, server.account())
    urls = run_cli(env, "generate", PROMPT, "--wait").stdout.split()
    assert len(urls) == 2 and all(u.startswith(server.base_url + "/files/") for u in urls)


def test_a_bad_key_is_one_error_line(server: Server, tmp_path: Path) -> None:
    env = client_env(tmp_path, server.base_url, "oi_definitely_not_a_key")
    line = assert_one_error_line(run_cli(env, "generate", PROMPT, "--wait", check=False))
    assert "Unauthorized" in line and "OPENIMAGINE_API_KEY" in line
    assert_one_error_line(run_cli(env, "status", "task_x", check=False))


def test_a_missing_key_unknown_task_and_bad_input_are_one_error_line(
    server: Server, tmp_path: Path
) -> None:
    line = assert_one_error_line(
        run_cli(client_env(tmp_path, server.base_url, None), "status", "task_x", check=False)
    )
    assert "no API key" in line
    env = client_env(tmp_path, server.base_url, server.account())
    assert (
        "not found"
        in assert_one_error_line(run_cli(env, "status", "task_unknown", check=False)).lower()
    )
    assert "ratio" in assert_one_error_line(
        run_cli(env, "generate", PROMPT, "--ratio", "4:3", check=False)
    )
    assert "neither" in assert_one_error_line(
        run_cli(env, "generate", PROMPT, "--image", str(tmp_path / "nope.png"), check=False)
    )


def test_a_server_that_is_down_is_one_error_line(tmp_path: Path) -> None:
    env = client_env(tmp_path, f"http://127.0.0.1:{free_port()}", "oi_whatever")
    line = assert_one_error_line(run_cli(env, "status", "task_x", check=False))
    assert "cannot reach" in line


def test_a_failed_task_is_one_error_line(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(engine="test-fail")
    env = client_env(tmp_path, server.base_url, server.account())
    result = run_cli(env, "generate", PROMPT, "--wait", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("failed: video build failed")
