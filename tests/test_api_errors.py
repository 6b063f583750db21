"""Every error a client can meet, as the contract's envelope over real HTTP.

An error is always ``{"code": <HTTP status>, "message": ..., "error": ...}``
and never FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from PIL import Image

from openimagine.api.app import create_app
from openimagine.services import accounts

from conftest import Server, auth, free_port, launch_server, make_settings, png_data_uri

MODES = ("fun", "normal", "spicy")
RATIOS = ("2:3", "3:2", "1:1", "16:9", "9:16")


def assert_error(
    response: httpx.Response, status: int, error: str, message: str | None = None
) -> dict:
    """The response is the contract's error envelope with ``code == status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "error"}, body
    assert body["code"] == status
    assert body["error"] == error
    assert isinstance(body["message"], str) and body["message"]
    assert "detail" not in body
    assert "Traceback" not in body["message"]
    if message is not None:
        assert body["message"] == message
    return body


def post_raw(
    server: Server, key: str | None, content: bytes | str, path: str = "/v1/generate"
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers.update(auth(key))
    return server.client.post(path, content=content, headers=headers)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, without workers: submitted tasks stay pending.

    Every test makes its own account, so per-account state (credits, the plan
    limit) never leaks between tests; the failed-authentication limit is raised
    because all tests share one client address.
    """
    settings = make_settings(
        tmp_path_factory.mktemp("idle"), port=free_port(), auth_failure_limit=10_000
    )
    server = launch_server(settings, run_workers=False)
    yield server
    server.stop()


# ---------------------------------------------------------------------------
# 400 INVALID_REQUEST on /v1/generate


def test_malformed_json_is_400(idle: Server) -> None:
    key = idle.account()
    assert_error(post_raw(idle, key, b'{"prompt": "a cat",'), 400, "INVALID_REQUEST")


def test_empty_body_is_400(idle: Server) -> None:
    key = idle.account()
    assert_error(post_raw(idle, key, b""), 400, "INVALID_REQUEST")


def test_body_not_utf8_is_400(idle: Server) -> None:
    key = idle.account()
    assert_error(post_raw(idle, key, b'{"prompt": "\xff\xfe"}'), 400, "INVALID_REQUEST")


@pytest.mark.parametrize("body", ['["a cat"]', '"a cat"', "42", "null", "true"])
def test_body_that_is_not_an_object_is_400(idle: Server, body: str) -> None:
    key = idle.account()
    assert_error(post_raw(idle, key, body), 400, "INVALID_REQUEST")


def test_missing_prompt_has_the_seed_message(idle: Server) -> None:
    key = idle.account()
    response = idle.client.post("/v1/generate", json={"mode": "fun"}, headers=auth(key))
    assert_error(
        response, 400, "INVALID_REQUEST", "Invalid request: The prompt parameter is required"
    )


def test_null_prompt_is_missing(idle: Server) -> None:
    key = idle.account()
    response = idle.client.post("/v1/generate", json={"prompt": None}, headers=auth(key))
    assert_error(
        response, 400, "INVALID_REQUEST", "Invalid request: The prompt parameter is required"
    )


@pytest.mark.parametrize(
    "prompt", ["", " ", "   \n\t  ", "\u200b\u200b\u200b", "\ufeff", " \u200b\u2060\u200e\n"]
)
def test_empty_or_whitespace_prompt_is_400(idle: Server, prompt: str) -> None:
    """Invisible format characters (zero-width space, word joiner, BOM, bidi marks)
    trim like spaces: a prompt of nothing else is empty, refused and not billed."""
    name = f"blank-{len(prompt)}-{ord(prompt[0]) if prompt else 0}"
    key = idle.account(name=name)
    assert_error(
        idle.generate(key, prompt=prompt),
        400,
        "INVALID_REQUEST",
        "Invalid request: The prompt parameter must not be empty",
    )
    assert accounts.summary(idle.db, name=name)["balance"] == 1000


def test_format_characters_inside_a_prompt_are_kept(idle: Server) -> None:
    key = idle.account()
    task_id = idle.generate(key, prompt="\u200b a \U0001f469\u200d\U0001f4bb coding \ufeff")
    assert (
        idle.status(key, task_id.json()["data"]["task_id"])["request"]["prompt"]
        == "a \U0001f469\u200d\U0001f4bb coding"
    )


def test_prompt_of_5000_characters_is_accepted_and_5001_refused(idle: Server) -> None:
    key = idle.account()
    assert idle.generate(key, prompt="a" * 5000).status_code == 200
    assert_error(idle.generate(key, prompt="a" * 5001), 400, "INVALID_REQUEST")


def test_prompt_length_counts_after_trimming(idle: Server) -> None:
    key = idle.account()
    response = idle.generate(key, prompt="  " + "a" * 5000 + "  ")
    assert response.status_code == 200, response.text
    data = idle.status(key, response.json()["data"]["task_id"])
    assert data["request"]["prompt"] == "a" * 5000


def test_prompt_length_counts_characters_not_bytes(idle: Server) -> None:
    key = idle.account()
    response = idle.generate(key, prompt="ü" * 5000)  # 10000 UTF-8 bytes
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "a cat \\ud800"}',
        b'{"prompt": "a\\u0000cat"}',
        b'{"prompt": "a cat", "images": ["http://example.com/\\udfff.png"]}',
    ],
    ids=["lone-surrogate", "nul", "surrogate-in-url"],
)
def test_text_no_database_can_store_is_400_not_500(idle: Server, body: bytes) -> None:
    """JSON allows ``\\ud800`` and ``\\u0000``; such a prompt is refused up front
    instead of failing in the database (500) or poisoning the task's status."""
    key = idle.account()
    assert_error(post_raw(idle, key, body), 400, "INVALID_REQUEST")
    assert idle.generate(key).status_code == 200  # the connection and server are fine


@pytest.mark.parametrize(
    "body",
    [
        b'{"task_id": "task_\\ud800"}',
        b'{"task_id": "task_\\u0000"}',
        '{"task_id": "task_\u00e9t\u00e9"}'.encode(),
    ],
)
def test_task_id_with_odd_characters_is_404(idle: Server, body: bytes) -> None:
    key = idle.account()
    assert_error(post_raw(idle, key, body, "/v1/status"), 404, "NOT_FOUND")
    assert_error(
        idle.client.get("/v1/status", params={"task_id": "task_\x00"}, headers=auth(key)),
        404,
        "NOT_FOUND",
    )


@pytest.mark.parametrize("prompt", [42, 1.5, True, ["a cat"], {"text": "a cat"}])
def test_non_string_prompt_is_400(idle: Server, prompt: object) -> None:
    key = idle.account()
    assert_error(idle.generate(key, prompt=prompt), 400, "INVALID_REQUEST")


@pytest.mark.parametrize("mode", ["crazy", "Normal", "", 1])
def test_unknown_mode_is_400(idle: Server, mode: object) -> None:
    key = idle.account()
    assert_error(idle.generate(key, mode=mode), 400, "INVALID_REQUEST")


@pytest.mark.parametrize("ratio", ["4:3", "1:2", "1/1", "", 1])
def test_unknown_ratio_is_400(idle: Server, ratio: object) -> None:
    key = idle.account()
    assert_error(idle.generate(key, ratio=ratio), 400, "INVALID_REQUEST")


def test_every_mode_and_ratio_is_accepted_and_echoed(idle: Server) -> None:
    key = idle.account(credits=10_000)
    for mode in MODES:
        for ratio in RATIOS:
            response = idle.generate(key, mode=mode, ratio=ratio)
            assert response.status_code == 200, (mode, ratio, response.text)
            data = idle.status(key, response.json()["data"]["task_id"])
            assert data["request"]["mode"] == mode
            assert data["request"]["ratio"] == ratio


def test_mode_and_ratio_default_to_normal_and_1_1(idle: Server) -> None:
    key = idle.account()
    response = idle.client.post("/v1/generate", json={"prompt": "a red fox"}, headers=auth(key))
    assert response.status_code == 200, response.text
    request = idle.status(key, response.json()["data"]["task_id"])["request"]
    assert request == {"mode": "normal", "prompt": "a red fox", "ratio": "1:1"}


def test_unknown_fields_are_ignored(idle: Server) -> None:
    key = idle.account()
    response = idle.generate(
        key, prompt="a red fox", seed=7, style="grok-imagine", extra={"nested": [1, 2]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {"code": 200, "message": "success", "data": {"task_id": body["data"]["task_id"]}}


@pytest.mark.parametrize(
    "images",
    [
        ["not a url"],
        ["ftp://example.com/cat.png"],
        ["file:///etc/passwd"],
        ["http://"],
        ["https://example.com/a.png"] * 8,
        ["data:image/png;base64,@@@not-base64@@@"],
        ["data:image/png;base64,"],
        ["data:text/plain;base64,aGVsbG8="],
        [42],
        {"url": "https://example.com/a.png"},
    ],
    ids=[
        "not-url",
        "ftp",
        "file",
        "no-host",
        "eight-refs",
        "bad-base64",
        "empty-data",
        "not-image-data",
        "number",
        "object",
    ],
)
def test_bad_image_reference_is_400(idle: Server, images: object) -> None:
    key = idle.account()
    assert_error(idle.generate(key, images=images), 400, "INVALID_REQUEST")


def test_seven_image_references_are_accepted(idle: Server) -> None:
    key = idle.account()
    response = idle.generate(key, images=[f"https://example.com/{n}.png" for n in range(7)])
    assert response.status_code == 200, response.text


def test_images_as_one_string_is_accepted(idle: Server) -> None:
    key = idle.account()
    response = idle.generate(key, images="https://example.com/cat.png")
    assert response.status_code == 200, response.text
    data = idle.status(key, response.json()["data"]["task_id"])
    assert data["request"]["images"] == ["https://example.com/cat.png"]


def test_images_null_or_empty_means_no_images(idle: Server) -> None:
    key = idle.account()
    for images in (None, []):
        response = idle.generate(key, images=images)
        assert response.status_code == 200, response.text
        data = idle.status(key, response.json()["data"]["task_id"])
        assert "images" not in data["request"]


def test_a_valid_data_uri_is_accepted(idle: Server) -> None:
    key = idle.account()
    assert idle.generate(key, images=[png_data_uri()]).status_code == 200


def test_a_refused_request_costs_nothing_and_creates_no_task(idle: Server) -> None:
    name = "refused-requests"
    key = idle.account(name=name, credits=100)
    idle.generate(key, prompt="")
    idle.generate(key, ratio="4:3")
    idle.generate(key, images=["ftp://x/y.png"])
    summary = accounts.summary(idle.db, name=name)
    assert summary["balance"] == 100
    assert sum(summary["usage"]["tasks"].values()) == 0


# ---------------------------------------------------------------------------
# /v1/status: task_id and the POST form


def test_status_without_task_id_is_400(idle: Server) -> None:
    key = idle.account()
    assert_error(idle.client.get("/v1/status", headers=auth(key)), 400, "INVALID_REQUEST")
    assert_error(
        idle.client.get("/v1/status", params={"task_id": ""}, headers=auth(key)),
        400,
        "INVALID_REQUEST",
    )


def test_a_query_parameter_given_twice_is_400(idle: Server) -> None:
    """Which one would be meant? Taking the last quietly accepted what the document
    refuses (a list where it says a string; found by make fuzz)."""
    key = idle.account()
    task_id = idle.generate(key).json()["data"]["task_id"]
    for path in (
        f"/v1/status?task_id=x&task_id={task_id}",
        f"/v1/status/stream?task_id=x&task_id={task_id}",
        "/v1/tasks?status=x&status=pending",
        "/v1/tasks?limit=5&limit=6",
        "/v1/webhooks/default/deliveries?limit=1&limit=2",
    ):
        assert_error(
            idle.client.get(path, headers=auth(key)),
            400,
            "INVALID_REQUEST",
            f"Invalid request: The {path.split('?')[1].split('=')[0]} parameter must be given once",
        )
    assert_error(
        idle.client.post(f"/v1/status?task_id=x&task_id={task_id}", json={}, headers=auth(key)),
        400,
        "INVALID_REQUEST",
    )
    for path in (
        "/v1/videos?order=asc&order=desc",
        f"/v1/videos/{task_id}/content?variant=video&variant=thumbnail",
    ):
        answer = idle.client.get(path, headers=auth(key))
        assert answer.status_code == 400 and "given once" in answer.json()["error"]["message"]
    # An empty status is not "any status": the document's enum has no "".
    assert_error(idle.client.get("/v1/tasks?status=", headers=auth(key)), 400, "INVALID_REQUEST")
    assert (
        idle.client.get(
            f"/v1/status?task_id={task_id}&other=1&other=2", headers=auth(key)
        ).status_code
        == 200
    )


@pytest.mark.parametrize("body", [b"{}", b"", b'{"task_id": ""}', b'{"task_id": 5}', b'["task_x"]'])
def test_post_status_without_task_id_is_400(idle: Server, body: bytes) -> None:
    key = idle.account()
    assert_error(post_raw(idle, key, body, "/v1/status"), 400, "INVALID_REQUEST")


def test_post_status_with_malformed_json_is_400(idle: Server) -> None:
    key = idle.account()
    assert_error(post_raw(idle, key, b'{"task_id": ', "/v1/status"), 400, "INVALID_REQUEST")


JSON_ROUTES = [
    "/v1/generate",
    "/v1/status",
    "/v1/cancel",
    "/v1/webhooks",
    "/v1/videos",
    "/v1/videos/video_x/remix",
]


def nested(depth: int) -> str:
    return '{"prompt": "a cat", "task_id": "task_x", "extra": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("depth", [150, 1000, 100_000])
def test_deeply_nested_json_is_400_not_500(idle: Server, path: str, depth: int) -> None:
    """A body nested far deeper than any field (about 1000 levels made the parser
    recurse out: a 500) is malformed, on every route that reads JSON, both faces."""
    key = idle.account()
    response = post_raw(idle, key, nested(depth), path)
    assert response.status_code == 400, response.text
    assert "Malformed JSON body" in response.text


def test_shallow_nesting_in_an_unknown_field_is_ignored(idle: Server) -> None:
    key = idle.account()
    assert (
        idle.client.post(
            "/v1/generate", json={"prompt": "a cat", "meta": [[{"a": [1]}]]}, headers=auth(key)
        ).status_code
        == 200
    )


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_body_is_read_only_after_the_key_is_checked(idle: Server, path: str) -> None:
    """Without a key a malformed or nested body is 401: nothing is parsed for an
    anonymous caller, and the failed authentication is counted."""
    for body in (nested(1000), '{"task_id": '):
        response = post_raw(idle, None, body, path)
        assert response.status_code == 401, response.text


def test_post_status_with_body_answers_like_get(idle: Server) -> None:
    key = idle.account()
    task_id = idle.generate(key).json()["data"]["task_id"]
    posted = idle.client.post("/v1/status", json={"task_id": task_id}, headers=auth(key))
    assert posted.status_code == 200, posted.text
    body = posted.json()
    assert body["code"] == 200 and body["message"] == "success"
    assert body["data"] == idle.status(key, task_id)


# ---------------------------------------------------------------------------
# 401 UNAUTHORIZED


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "empty", "scheme-only"],
)
def test_missing_key_is_401(idle: Server, headers: dict[str, str]) -> None:
    assert_error(
        idle.client.post("/v1/generate", json={"prompt": "a cat"}, headers=headers),
        401,
        "UNAUTHORIZED",
    )
    assert_error(
        idle.client.get("/v1/status", params={"task_id": "task_x"}, headers=headers),
        401,
        "UNAUTHORIZED",
    )


def test_wrong_scheme_is_401(idle: Server) -> None:
    key = idle.account()
    for header in (f"Basic {key}", f"Token {key}", key):
        response = idle.client.post(
            "/v1/generate", json={"prompt": "a cat"}, headers={"Authorization": header}
        )
        assert_error(response, 401, "UNAUTHORIZED")


def test_bearer_scheme_is_case_insensitive(idle: Server) -> None:
    key = idle.account()
    response = idle.client.post(
        "/v1/generate", json={"prompt": "a cat"}, headers={"Authorization": f"bearer {key}"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("token", ["oi_" + "x" * 43, "sk-not-ours", "oi_"])
def test_unknown_key_is_401(idle: Server, token: str) -> None:
    idle.account()
    assert_error(idle.generate(token), 401, "UNAUTHORIZED")


def test_revoked_key_is_401_and_other_keys_still_work(idle: Server) -> None:
    name = "revokes-a-key"
    key = idle.account(name=name)
    second = accounts.create_key(idle.db, name)
    assert idle.generate(key).status_code == 200
    accounts.revoke_key(idle.db, key[: accounts.SHOWN_PREFIX_LENGTH])
    assert_error(idle.generate(key), 401, "UNAUTHORIZED")
    assert_error(
        idle.client.get("/v1/status", params={"task_id": "task_x"}, headers=auth(key)),
        401,
        "UNAUTHORIZED",
    )
    assert idle.generate(second).status_code == 200


def test_authentication_comes_before_body_validation(idle: Server) -> None:
    """A bad body without a key is 401, not 400: nothing is said to strangers."""
    assert_error(post_raw(idle, None, b"{not json"), 401, "UNAUTHORIZED")


# ---------------------------------------------------------------------------
# 402 INSUFFICIENT_CREDITS


def test_balance_below_price_is_402_and_creates_no_task(idle: Server) -> None:
    name = "almost-broke"
    key = idle.account(name=name, credits=39)
    assert_error(idle.generate(key), 402, "INSUFFICIENT_CREDITS")
    summary = accounts.summary(idle.db, name=name)
    assert summary["balance"] == 39
    assert sum(summary["usage"]["tasks"].values()) == 0
    assert summary["usage"]["credits_spent"] == 0


def test_zero_balance_is_402(idle: Server) -> None:
    key = idle.account(credits=0)
    assert_error(idle.generate(key), 402, "INSUFFICIENT_CREDITS")


def test_balance_exactly_the_price_is_enough_once(idle: Server) -> None:
    name = "exactly-one"
    key = idle.account(name=name, credits=40)
    assert idle.generate(key).status_code == 200
    assert_error(idle.generate(key), 402, "INSUFFICIENT_CREDITS")
    summary = accounts.summary(idle.db, name=name)
    assert summary["balance"] == 0
    assert summary["usage"]["tasks"]["pending"] == 1


def stored_inputs(server: Server) -> set[str]:
    """Every file and folder under the stored inputs."""
    inputs_dir = server.settings.outputs_dir / "inputs"
    return {str(p) for p in inputs_dir.rglob("*")} if inputs_dir.exists() else set()


def test_a_402_for_a_data_uri_leaves_no_stored_input(idle: Server) -> None:
    """Neither the image nor an empty ``inputs/task_*`` folder stays behind."""
    before = stored_inputs(idle)
    key = idle.account(credits=0)
    assert_error(
        idle.generate(key, images=[png_data_uri(), png_data_uri()]), 402, "INSUFFICIENT_CREDITS"
    )
    assert stored_inputs(idle) == before


# ---------------------------------------------------------------------------
# 404 NOT_FOUND, 405


def test_unknown_task_is_404(idle: Server) -> None:
    key = idle.account()
    assert_error(
        idle.client.get("/v1/status", params={"task_id": "task_doesnotexist"}, headers=auth(key)),
        404,
        "NOT_FOUND",
    )
    assert_error(
        idle.client.post("/v1/status", json={"task_id": "task_doesnotexist"}, headers=auth(key)),
        404,
        "NOT_FOUND",
    )


def test_another_accounts_task_looks_exactly_like_an_unknown_one(idle: Server) -> None:
    owner = idle.account()
    stranger = idle.account()
    task_id = idle.generate(owner).json()["data"]["task_id"]
    theirs = idle.client.get("/v1/status", params={"task_id": task_id}, headers=auth(stranger))
    missing = idle.client.get(
        "/v1/status", params={"task_id": "task_" + "A" * 22}, headers=auth(stranger)
    )
    assert_error(theirs, 404, "NOT_FOUND")
    assert theirs.json() == missing.json()
    posted = idle.client.post("/v1/status", json={"task_id": task_id}, headers=auth(stranger))
    assert posted.json() == missing.json()
    # The owner still sees it.
    assert idle.status(owner, task_id)["task_id"] == task_id


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v2/generate", "/v1/generate/extra"])
def test_unknown_route_is_404_in_the_envelope(idle: Server, path: str) -> None:
    key = idle.account()
    assert_error(idle.client.get(path, headers=auth(key)), 404, "NOT_FOUND")


def test_wrong_method_is_405_in_the_envelope(idle: Server) -> None:
    key = idle.account()
    for method, path in (
        ("GET", "/v1/generate"),
        ("DELETE", "/v1/status"),
        ("PUT", "/v1/generate"),
        ("POST", "/healthz"),
    ):
        response = idle.client.request(method, path, headers=auth(key))
        assert_error(response, 405, "METHOD_NOT_ALLOWED")
        assert "allow" in response.headers


# ---------------------------------------------------------------------------
# 413 PAYLOAD_TOO_LARGE


@pytest.fixture
def small_body(start_server: Callable[..., Server]) -> Server:
    return start_server(run_workers=False, max_body_bytes=2048)


def test_a_data_uri_over_the_image_limit_is_413_and_nothing_is_kept(
    start_server: Callable[..., Server],
) -> None:
    """Under the body cap but over OPENIMAGINE_FETCH_MAX_BYTES: the client is told which
    image and the limit (it was a 500), and the images stored before it are removed."""
    server = start_server(run_workers=False, fetch_max_bytes=1024)
    key = server.account(name="big-image")
    big = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))  # incompressible
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 1024
    oversized = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = server.generate(key, images=[png_data_uri(), oversized])
    assert_error(
        response,
        413,
        "PAYLOAD_TOO_LARGE",
        f"Input image 2 is {len(buffer.getvalue())} bytes, over this server's "
        "limit of 1024 bytes per image",
    )
    assert stored_inputs(server) == set()
    assert accounts.summary(server.db, name="big-image")["balance"] == 1000


def test_body_over_the_limit_with_content_length_is_413(small_body: Server) -> None:
    key = small_body.account()
    response = small_body.generate(key, prompt="a" * 4000)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


def test_body_over_the_limit_without_content_length_is_413(small_body: Server) -> None:
    key = small_body.account()

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(8):
            yield b"a" * 512
        yield b'"}'

    response = small_body.client.post(
        "/v1/generate", content=chunks(), headers={**auth(key), "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


def test_body_under_the_limit_is_accepted(small_body: Server) -> None:
    key = small_body.account()
    assert small_body.generate(key, prompt="a" * 1500).status_code == 200


def test_a_413_creates_no_task(small_body: Server) -> None:
    name = "too-big"
    key = small_body.account(name=name)
    assert_error(small_body.generate(key, prompt="a" * 4000), 413, "PAYLOAD_TOO_LARGE")
    summary = accounts.summary(small_body.db, name=name)
    assert sum(summary["usage"]["tasks"].values()) == 0
    assert summary["balance"] == 1000


# ---------------------------------------------------------------------------
# Health, readiness, OpenAPI


def test_healthz_is_200(idle: Server) -> None:
    response = idle.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"code": 200, "message": "success", "data": {"status": "ok"}}


def test_readyz_is_200_when_the_database_answers(idle: Server) -> None:
    response = idle.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "ready"


def test_openapi_lists_generate_and_status(idle: Server) -> None:
    response = idle.client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "post" in paths["/v1/generate"]
    assert {"get", "post"} <= set(paths["/v1/status"])


def test_the_openapi_document_agrees_with_what_the_server_accepts(idle: Server) -> None:
    """A client generated from the document, or a fuzzer, must not send what the
    schema allows and the server refuses, nor miss what the server takes."""
    key = idle.account()
    paths = idle.client.get("/openapi.json").json()["paths"]
    body = paths["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"
    ]
    for field, values in (("mode", MODES), ("ratio", RATIOS)):
        # The deployment's own, and null: the default, in the schema too.
        assert set(body[field]["enum"]) == {*values, None}, body[field]
    assert idle.generate(key, mode=None, ratio=None).status_code == 200
    assert_error(idle.generate(key, mode="silly"), 400, "INVALID_REQUEST")
    array, one, _ = body["images"]["anyOf"]
    assert array["maxItems"] == 7 and array["items"] == one
    url, data = (branch["pattern"] for branch in one["anyOf"])
    for ref in ("https://example.com/a.png", "HTTP://example.com/a", png_data_uri()):
        assert re.search(url, ref) or re.search(data, ref), ref
        assert idle.generate(key, images=ref).status_code == 200
    for ref in (
        "",
        "not a url",
        "ftp://example.com/a.png",
        "https://",
        "http://a b",
        "http://a:99999/",
        "data:image/png;base64,!!!!",
    ):
        assert not re.search(url, ref) and not re.search(data, ref), ref
        assert_error(idle.generate(key, images=ref), 400, "INVALID_REQUEST")
    prompt = body["prompt"]
    for blank in (" ", "\u200b\ufeff", "a\x00"):
        assert not re.search(prompt["pattern"], blank) or re.search(
            prompt["not"]["pattern"], blank
        ), repr(blank)
        assert_error(idle.generate(key, prompt=blank), 400, "INVALID_REQUEST")
    task_id = paths["/v1/status"]["get"]["parameters"][0]["schema"]
    assert task_id["minLength"] == 1 and not re.search(task_id["pattern"], " ")
    assert_error(idle.client.get("/v1/status?task_id=", headers=auth(key)), 400, "INVALID_REQUEST")
    posted = paths["/v1/status"]["post"]["requestBody"]["content"]["application/json"]
    assert posted["schema"]["properties"]["task_id"] == task_id
    options = idle.client.options("/v1/status", headers=auth(key))
    assert_error(options, 405, "METHOD_NOT_ALLOWED")
    assert {"GET", "POST"} <= set(options.headers["allow"].split(", "))


def test_api_is_503_not_500_when_the_rate_limit_storage_is_unreachable(
    start_server: Callable[..., Server],
) -> None:
    """Redis down: every authenticated call answers 503 in the envelope (no
    traceback, nothing charged), and the service says it is alive."""
    pytest.importorskip("redis")
    server = start_server(run_workers=False, ratelimit_url=f"redis://127.0.0.1:{free_port()}/0")
    key = server.account(name="redis-down", credits=100)
    for response in (
        server.generate(key),
        server.client.get("/v1/status", params={"task_id": "task_x"}, headers=auth(key)),
        server.client.post("/v1/status", json={"task_id": "task_x"}, headers=auth(key)),
    ):
        assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert server.client.get("/healthz").status_code == 200
    summary = accounts.summary(server.db, name="redis-down")
    assert summary["balance"] == 100 and sum(summary["usage"]["tasks"].values()) == 0


def test_a_redis_that_stops_answering_fails_requests_fast(
    start_server: Callable[..., Server],
) -> None:
    """A port that accepts connections and never answers: a request waits at
    most the storage timeout (2 s), then 503."""
    pytest.importorskip("redis")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never replies
    try:
        server = start_server(
            run_workers=False, ratelimit_url=(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        )
        key = server.account()
        started = time.monotonic()
        response = server.client.get("/v1/status", params={"task_id": "task_x"}, headers=auth(key))
        assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert time.monotonic() - started < 4.5  # redis-py alone would wait 5 s (or forever)
    finally:
        silent.close()


@pytest.fixture
def unreachable_db(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A server whose database is a PostgreSQL port with nothing listening.

    ``start_server`` runs migrations first (which would fail here), so this
    builds the app and runs uvicorn directly.
    """
    port = free_port()
    dead = free_port()  # bound and released: nothing listens there now
    settings = make_settings(
        tmp_path, port=port, database_url=f"postgresql+psycopg://u@127.0.0.1:{dead}/x"
    )
    app = create_app(settings, run_workers=False)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="critical", access_log=False, lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_readyz_is_503_when_the_database_is_unreachable(unreachable_db: str) -> None:
    with httpx.Client(base_url=unreachable_db, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert_error(client.get("/readyz"), 503, "SERVICE_UNAVAILABLE")


def test_api_is_503_not_500_when_the_database_is_unreachable(unreachable_db: str) -> None:
    with httpx.Client(base_url=unreachable_db, timeout=30) as client:
        headers = auth("oi_" + "k" * 43)
        body = assert_error(
            client.post("/v1/generate", json={"prompt": "a cat"}, headers=headers),
            503,
            "SERVICE_UNAVAILABLE",
        )
        assert "127.0.0.1" not in body["message"] and "psycopg" not in body["message"]
        assert_error(
            client.get("/v1/status", params={"task_id": "task_x"}, headers=headers),
            503,
            "SERVICE_UNAVAILABLE",
        )
