"""Live status: server-sent events of a task's status, on both faces."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx

from conftest import Server, auth

CREDITS = 1000


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream, as a browser's EventSource reads them."""
    event, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue  # a comment: keeps proxies from closing an idle stream
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


def status_stream(server: Server, key: str, task_id: str) -> AbstractContextManager[httpx.Response]:
    """``GET /v1/status/stream`` of the task, open while the ``with`` lasts."""
    return httpx.stream(
        "GET",
        f"{server.base_url}/v1/status/stream",
        params={"task_id": task_id},
        headers=auth(key),
        timeout=30,
    )


def test_a_stream_shows_progress_and_ends_with_the_completed_status(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(engine="test-sleep", test_sleep_seconds=1.5)
    key = server.account(credits=CREDITS)
    task_id = server.generate(key).json()["data"]["task_id"]
    with status_stream(server, key, task_id) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))  # ends by itself after the final event
    assert {name for name, _ in events} == {"status"}
    statuses = [data["status"] for _, data in events]
    assert statuses[-1] == "completed" and statuses.count("completed") == 1
    assert "processing" in statuses
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress) and len(set(progress)) >= 3  # it moved, in steps
    final = events[-1][1]
    assert final["task_id"] == task_id and len(final["response"]) == 2
    assert (
        final
        == server.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key)).json()[
            "data"
        ]
    )


def test_a_stream_of_a_finished_task_is_one_event(server: Server) -> None:
    key = server.account(credits=CREDITS)
    task_id = server.generate(key).json()["data"]["task_id"]
    server.wait(key, task_id)
    with status_stream(server, key, task_id) as response:
        events = list(sse_events(response))
    assert [data["status"] for _, data in events] == ["completed"]


def test_the_openai_face_streams_video_objects(start_server: Callable[..., Server]) -> None:
    server = start_server(engine="test-sleep", test_sleep_seconds=1)
    key = server.account(credits=CREDITS)
    video = server.client.post(
        "/v1/videos", json={"prompt": "a kite", "seconds": 1}, headers=auth(key)
    ).json()
    with httpx.stream(
        "GET", f"{server.base_url}/v1/videos/{video['id']}/events", headers=auth(key), timeout=30
    ) as response:
        events = [data for _, data in sse_events(response)]
    assert events[0]["object"] == "video" and events[0]["id"] == video["id"]
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == 100


def test_a_cancelled_task_ends_its_stream_with_the_failed_status(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    task_id = server.generate(key).json()["data"]["task_id"]
    with status_stream(server, key, task_id) as response:
        lines = sse_events(response)
        assert next(lines)[1]["status"] == "pending"
        server.client.post("/v1/cancel", json={"task_id": task_id}, headers=auth(key))
        rest = [data for _, data in lines]
    assert [(d["status"], d["error_message"]) for d in rest] == [("failed", "Task cancelled")]


def test_streams_refuse_strangers_and_unknown_tasks(server: Server) -> None:
    key = server.account(credits=CREDITS)
    task_id = server.generate(key).json()["data"]["task_id"]
    assert server.client.get("/v1/status/stream", params={"task_id": task_id}).status_code == 401
    other = server.account(credits=CREDITS)
    answer = server.client.get(
        "/v1/status/stream", params={"task_id": task_id}, headers=auth(other)
    )
    assert answer.status_code == 404 and answer.json()["error"] == "NOT_FOUND"
    assert server.client.get("/v1/status/stream", headers=auth(key)).status_code == 400
    missing = server.client.get("/v1/videos/task_nope/events", headers=auth(key))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_sdks_wait_follows_the_stream_instead_of_polling(
    start_server: Callable[..., Server],
) -> None:
    from openimagine.client import Client

    server = start_server(engine="test-sleep", test_sleep_seconds=1)
    key = server.account(credits=CREDITS)
    seen: list[int] = []
    with Client(api_key=key, base_url=server.base_url) as client:
        task = client.generate("a lighthouse")
        # A poll every minute would miss the 20 s budget: only the stream can make it.
        done = client.wait(
            task,
            poll_interval=60,
            timeout=20,
            on_progress=lambda current: seen.append(current.progress),
        )
    assert done.completed and len(done.response) == 2
    assert seen[-1] == 100 and len(seen) >= 3
