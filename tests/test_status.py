"""/v1/status through a task's life: what a polling client sees at each step."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from conftest import Server, auth

STATUS_KEYS = {
    "task_id",
    "status",
    "created_at",
    "consumed_credits",
    "error_message",
    "request",
    "response",
    "progress",
}
CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def status(server: Server, key: str, task_id: str) -> dict:
    response = server.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 200 and body["message"] == "success"
    assert set(body["data"]) == STATUS_KEYS
    return body["data"]


def submit(server: Server, key: str, **body: object) -> str:
    response = server.generate(key, **body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 120, 240)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_task_without_a_worker_stays_pending(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False)
    key = server.account()
    task_id = submit(server, key, mode="fun", ratio="16:9", prompt="a red fox in snow")
    for _ in range(3):
        data = status(server, key, task_id)
        assert data["status"] == "pending"
        assert data["progress"] == 0
        assert data["response"] == []
        assert data["error_message"] is None
        assert data["consumed_credits"] == 40
        assert data["request"] == {"mode": "fun", "prompt": "a red fox in snow", "ratio": "16:9"}
        time.sleep(0.2)


def test_a_running_task_is_processing_with_rising_progress(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(engine="test-sleep", test_sleep_seconds=3)
    key = server.account()
    task_id = submit(server, key)
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = status(server, key, task_id)
        if data["status"] == "processing":
            assert 0 <= data["progress"] < 100
            assert data["response"] == []
            assert data["error_message"] is None
            assert data["consumed_credits"] == 40
            seen.append(data["progress"])
        elif data["status"] == "completed":
            break
        else:
            assert data["status"] == "pending", data
        time.sleep(0.1)
    else:
        raise AssertionError("task did not complete")
    assert len(seen) >= 3, seen
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert seen[-1] > seen[0], f"progress never rose: {seen}"
    assert any(0 < value < 100 for value in seen), seen


def test_a_completed_task_lists_absolute_video_urls(server: Server) -> None:
    key = server.account()
    task_id = submit(server, key, mode="spicy", ratio="9:16")
    data = server.wait(key, task_id)
    assert data["status"] == "completed", data
    assert data["progress"] == 100
    assert data["consumed_credits"] == 40
    assert data["error_message"] is None
    assert len(data["response"]) == 2
    assert len(set(data["response"])) == 2
    for url in data["response"]:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == server.base_url
        assert parts.path.startswith(f"/files/outputs/{task_id}/")
        assert parts.path.endswith(".mp4")
        query = parse_qs(parts.query)
        assert set(query) == {"expires", "sig"}
        assert server.client.get(url).status_code == 200


def test_the_number_of_variations_is_configurable(start_server: Callable[..., Server]) -> None:
    server = start_server(variations=3, price=7)
    key = server.account()
    data = server.wait(key, submit(server, key))
    assert data["status"] == "completed"
    assert len(data["response"]) == 3
    assert data["consumed_credits"] == 7


def test_a_failed_task_says_why_and_consumes_nothing(start_server: Callable[..., Server]) -> None:
    server = start_server(engine="test-fail")
    key = server.account()
    data = server.wait(key, submit(server, key))
    assert data["status"] == "failed"
    assert data["error_message"] == "video build failed"
    assert data["consumed_credits"] == 0
    assert data["response"] == []
    assert 0 <= data["progress"] < 100


def test_created_at_is_rfc3339_utc_whole_seconds(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False)
    key = server.account()
    before = datetime.now(UTC).replace(microsecond=0)
    data = status(server, key, submit(server, key))
    after = datetime.now(UTC)
    assert CREATED_AT.match(data["created_at"]), data["created_at"]
    created = datetime.strptime(data["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= created <= after


def test_task_ids_are_prefixed_unguessable_and_unique(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False, max_in_flight="pro=50")  # 50 waiting at once
    key = server.account(credits=40 * 50)
    ids = [submit(server, key) for _ in range(50)]
    assert len(set(ids)) == 50
    for task_id in ids:
        assert task_id.startswith("task_")
        random_part = task_id[len("task_") :]
        assert URLSAFE.match(random_part), task_id
        # base64url carries 6 bits a character: 16 characters are 96 bits.
        assert len(random_part) * 6 >= 96, task_id
    # The random part is not a counter or a timestamp: no common prefix.
    assert len({task_id[:9] for task_id in ids}) > 25


def test_request_images_echo_urls_as_sent_and_data_uris_as_signed_urls(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account()
    png = png_bytes()
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    http_url = "https://images.example.com/cats/one.png?size=large&v=2"
    task_id = submit(server, key, images=[http_url, data_uri])
    images = status(server, key, task_id)["request"]["images"]
    assert len(images) == 2
    assert images[0] == http_url
    stored = images[1]
    assert "base64" not in stored and len(stored) < 500
    parts = urlsplit(stored)
    assert f"{parts.scheme}://{parts.netloc}" == server.base_url
    assert parts.path.startswith(f"/files/inputs/{task_id}/")
    assert set(parse_qs(parts.query)) == {"expires", "sig"}
    download = server.client.get(stored)
    assert download.status_code == 200
    assert download.content == png
    assert download.headers["content-type"] == "image/png"


def test_request_has_no_images_key_without_images(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False)
    key = server.account()
    assert "images" not in status(server, key, submit(server, key))["request"]


def test_response_is_empty_until_completed(start_server: Callable[..., Server]) -> None:
    server = start_server(engine="test-sleep", test_sleep_seconds=1)
    key = server.account()
    task_id = submit(server, key)
    statuses = set()
    while True:
        data = status(server, key, task_id)
        statuses.add(data["status"])
        if data["status"] == "completed":
            assert len(data["response"]) == 2
            break
        assert data["response"] == [], data
        time.sleep(0.05)
    assert "processing" in statuses


def test_later_status_calls_hand_out_urls_that_live_longer(
    start_server: Callable[..., Server],
) -> None:
    """Each answer's URLs live the TTL from that call at least (with a 12 s TTL
    the expiry moves in steps of a second), and the older ones stay valid."""
    server = start_server(url_ttl_seconds=12)
    key = server.account()
    task_id = submit(
        server, key, images=["data:image/png;base64," + base64.b64encode(png_bytes()).decode()]
    )
    first = server.wait(key, task_id)
    assert first["status"] == "completed", first
    time.sleep(1.1)
    second = status(server, key, task_id)
    for old, new in zip(
        first["response"] + first["request"]["images"],
        second["response"] + second["request"]["images"],
        strict=True,
    ):
        old_q, new_q = parse_qs(urlsplit(old).query), parse_qs(urlsplit(new).query)
        assert urlsplit(old).path == urlsplit(new).path
        assert int(new_q["expires"][0]) > int(old_q["expires"][0])
        assert new_q["sig"] != old_q["sig"]
        # Both stay valid until they expire.
        assert server.client.get(old).status_code == 200
        assert server.client.get(new).status_code == 200


def test_urls_live_the_configured_ttl_rounded_up_to_a_twelfth(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(url_ttl_seconds=600)
    key = server.account()
    data = server.wait(key, submit(server, key))
    now = time.time()
    expires = int(parse_qs(urlsplit(data["response"][0]).query)["expires"][0])
    assert now + 600 - 5 <= expires <= now + 600 + 50 + 1
    assert expires % 50 == 0


def test_post_status_sees_the_same_life_as_get(server: Server) -> None:
    key = server.account()
    task_id = submit(server, key)
    data = server.wait(key, task_id)
    posted = server.client.post("/v1/status", json={"task_id": task_id}, headers=auth(key))
    assert posted.status_code == 200
    got = posted.json()["data"]
    assert got["status"] == "completed"
    assert {k: v for k, v in got.items() if k != "response"} == {
        k: v for k, v in data.items() if k != "response"
    }
    assert [urlsplit(u).path for u in got["response"]] == [
        urlsplit(u).path for u in data["response"]
    ]


def test_head_status_answers_like_get_without_a_body(server: Server) -> None:
    key = server.account()
    task_id = submit(server, key)
    head = server.client.head("/v1/status", params={"task_id": task_id}, headers=auth(key))
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert int(head.headers["X-RateLimit-Limit"]) > 0
    missing = server.client.head("/v1/status", params={"task_id": "task_nope"}, headers=auth(key))
    assert missing.status_code == 404 and missing.content == b""


def test_other_methods_on_status_are_405_in_the_envelope(server: Server) -> None:
    key = server.account()
    for method in ("PUT", "DELETE", "PATCH"):
        response = server.client.request(
            method, "/v1/status", params={"task_id": "task_x"}, headers=auth(key)
        )
        assert response.status_code == 405, method
        assert response.json() == {
            "code": 405,
            "message": "Method not allowed for this endpoint",
            "error": "METHOD_NOT_ALLOWED",
        }


@pytest.mark.parametrize("spelling", ["task_id", " task_id "])
def test_task_id_surrounding_whitespace_is_ignored(
    start_server: Callable[..., Server], spelling: str
) -> None:
    server = start_server(run_workers=False)
    key = server.account()
    task_id = submit(server, key)
    response = server.client.get(
        "/v1/status", params={"task_id": spelling.replace("task_id", task_id)}, headers=auth(key)
    )
    assert response.status_code == 200
    assert response.json()["data"]["task_id"] == task_id


def test_status_is_readable_by_every_key_of_the_account(
    start_server: Callable[..., Server],
) -> None:
    from openimagine.services import accounts

    server = start_server(run_workers=False)
    key = server.account(name="two-keys")
    other = accounts.create_key(server.db, "two-keys")
    task_id = submit(server, key)
    assert status(server, other, task_id)["task_id"] == task_id
    with httpx.Client(base_url=server.base_url) as fresh:
        assert (
            fresh.get("/v1/status", params={"task_id": task_id}, headers=auth(other)).status_code
            == 200
        )
