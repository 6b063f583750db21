"""The OpenAI Videos face, driven by the official ``openai`` package against a live
server: what SGLang/vLLM-style clients, the SDK and AIPerf rely on."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from openimagine.media.mp4 import probe_mp4

from conftest import Server, auth

# The SDK marks the videos resource deprecated (OpenAI's Sora API is closing); the
# shape lives on in open serving stacks, which is why openimagine speaks it.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CREDITS = 1000
PRICE = 40  # default: 2 variations, so one video costs 20


def sdk(server: Server, key: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, **options)  # type: ignore[arg-type]


def png_bytes(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def balance(server: Server, key: str) -> int:
    return server.client.get("/v1/account", headers=auth(key)).json()["data"]["balance"]


def test_create_and_poll_renders_one_video_at_the_requested_size_and_charges_one_video(
    server: Server, tmp_path: Path
) -> None:
    key = server.account(credits=CREDITS)
    client = sdk(server, key)
    video = client.videos.create_and_poll(
        prompt="a lighthouse in a storm", size="1280x720", seconds="1", poll_interval_ms=50
    )
    assert video.status == "completed" and video.progress == 100
    assert video.id.startswith("task_") and video.model == "preview"
    assert video.completed_at is not None and video.completed_at >= video.created_at
    width, height = (int(side) for side in video.size.split("x"))
    assert abs(width / height - 16 / 9) < 0.02 * 16 / 9
    assert video.seconds == "1" and video.error is None
    assert balance(server, key) == CREDITS - PRICE // 2

    content = client.videos.download_content(video.id)
    path = tmp_path / "video.mp4"
    content.write_to_file(path)
    info = probe_mp4(path)
    assert (info["codec"], info["pix_fmt"], info["faststart"]) == ("h264", "yuv420p", True)
    assert f"{info['width']}x{info['height']}" == video.size
    thumbnail = client.videos.download_content(video.id, variant="thumbnail").content
    assert thumbnail[:4] == b"RIFF" and thumbnail[8:12] == b"WEBP"
    assert Image.open(io.BytesIO(thumbnail)).size == (width, height)
    sheet = client.videos.download_content(video.id, variant="spritesheet").content
    assert sheet[:3] == b"\xff\xd8\xff"  # JPEG
    assert Image.open(io.BytesIO(sheet)).format == "JPEG"


def test_an_image_file_and_an_image_url_both_reach_the_task(server: Server) -> None:
    key = server.account(credits=CREDITS)
    client = sdk(server, key)
    with_file = client.videos.create_and_poll(
        prompt="the red card comes alive",
        seconds="1",
        input_reference=("card.png", png_bytes(), "image/png"),
        poll_interval_ms=50,
    )
    assert with_file.status == "completed", with_file.error
    data_url = (
        "data:image/png;base64," + __import__("base64").b64encode(png_bytes((30, 30, 200))).decode()
    )
    # This SDK's create() takes only a file for input_reference; a URL goes as a
    # nested object, which it sends as the multipart field input_reference[image_url].
    created = client.videos.create(
        prompt="the blue card comes alive",
        seconds="1",
        extra_body={"input_reference": {"image_url": data_url}},
    )
    with_url = client.videos.poll(created.id, poll_interval_ms=50)
    assert with_url.status == "completed", with_url.error
    for video in (with_file, with_url):
        status = server.client.get(
            "/v1/status", params={"task_id": video.id}, headers=auth(key)
        ).json()["data"]
        assert len(status["request"]["images"]) == 1  # stored, echoed as a signed URL
        assert status["request"]["images"][0].startswith(server.base_url + "/files/")


def test_the_same_task_is_seen_from_both_faces(server: Server) -> None:
    key = server.account(credits=CREDITS)
    client = sdk(server, key)
    grok = server.generate(key, prompt="a fox", ratio="16:9").json()["data"]["task_id"]
    server.wait(key, grok)
    seen = client.videos.retrieve(grok)
    assert (seen.id, seen.status, seen.prompt) == (grok, "completed", "a fox")
    made_here = client.videos.create_and_poll(prompt="an owl", seconds="1", poll_interval_ms=50)
    status = server.wait(key, made_here.id)
    assert status["status"] == "completed" and len(status["response"]) == 1
    assert status["consumed_credits"] == PRICE // 2


def test_list_pages_through_every_video_newest_first(server: Server) -> None:
    key = server.account(credits=CREDITS)
    client = sdk(server, key)
    made = [client.videos.create(prompt=f"clip {n}", seconds="1").id for n in range(5)]
    other = sdk(server, server.account(credits=CREDITS))
    other.videos.create(prompt="not yours", seconds="1")
    first_page = client.videos.list(limit=2)
    assert [v.id for v in first_page.data] == made[::-1][:2] and first_page.has_more
    listed = [video.id for video in client.videos.list(limit=2)]  # auto-paging
    assert listed == made[::-1]
    assert [video.id for video in client.videos.list(limit=2, order="asc")] == made


def test_remix_keeps_model_size_seconds_and_images_with_a_new_prompt(server: Server) -> None:
    key = server.account(credits=CREDITS)
    client = sdk(server, key)
    source = client.videos.create_and_poll(
        prompt="a paper boat",
        size="720x1280",
        seconds="1",
        input_reference=("boat.png", png_bytes(), "image/png"),
        poll_interval_ms=50,
    )
    remix = client.videos.remix(source.id, prompt="a paper boat at night")
    assert remix.remixed_from_video_id == source.id and remix.prompt == "a paper boat at night"
    done = client.videos.poll(remix.id, poll_interval_ms=50)
    assert done.status == "completed"
    assert (done.size, done.seconds, done.model) == (source.size, source.seconds, source.model)
    status = server.client.get(
        "/v1/status", params={"task_id": remix.id}, headers=auth(key)
    ).json()["data"]
    assert len(status["request"]["images"]) == 1


def test_delete_removes_the_files_and_then_the_video_is_not_found(server: Server) -> None:
    key = server.account(credits=CREDITS)
    client = sdk(server, key)
    video = client.videos.create_and_poll(prompt="a comet", seconds="1", poll_interval_ms=50)
    url = server.client.get("/v1/status", params={"task_id": video.id}, headers=auth(key)).json()[
        "data"
    ]["response"][0]
    assert server.client.get(url).status_code == 200
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    assert server.client.get(url).status_code == 404  # the file is gone
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(video.id)
    assert (
        server.client.get("/v1/status", params={"task_id": video.id}, headers=auth(key)).status_code
        == 404
    )


def test_deleting_a_queued_video_cancels_and_refunds_it(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    client = sdk(server, key)
    video = client.videos.create(prompt="never rendered", seconds="1")
    assert video.status == "queued" and balance(server, key) == CREDITS - PRICE // 2
    client.videos.delete(video.id)
    assert balance(server, key) == CREDITS


def test_each_error_raises_the_sdks_matching_exception(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False, rate_limits="free=3")
    key = server.account(credits=CREDITS)
    client = sdk(server, key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.create(prompt="x", size="wide")
    assert bad.value.body["param"] == "size" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="Unknown model 'sora-2'"):
        client.videos.create(prompt="x", model="sora-2")
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        sdk(server, "oi_wrong", max_retries=0).videos.list()
    assert unauthorized.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("task_nope")
    poor = sdk(server, server.account(credits=5), max_retries=0)
    with pytest.raises(openai.APIStatusError) as broke:
        poor.videos.create(prompt="x")
    assert broke.value.status_code == 402 and broke.value.code == "insufficient_quota"
    free = sdk(server, server.account(plan="free", credits=CREDITS), max_retries=0)
    for _ in range(3):
        free.videos.list()
    with pytest.raises(openai.RateLimitError) as limited:
        free.videos.list()
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1000
    assert limited.value.code == "rate_limit_exceeded"


def test_a_server_error_is_the_sdks_internal_server_error(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    # The database goes away under the server: 503 server_error.
    server.db.dispose()
    (Path(server.settings.resolved_database_url.removeprefix("sqlite:///"))).rename(
        tmp_path / "moved.db"
    )
    server.settings.data_dir.chmod(0o500)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            sdk(server, key, max_retries=0).videos.create(prompt="x")
    finally:
        server.settings.data_dir.chmod(0o700)
    assert failed.value.status_code >= 500
    assert failed.value.body["type"] == "server_error"


def test_retrieve_says_when_to_poll_again_and_sends_openais_rate_limit_headers(
    server: Server,
) -> None:
    key = server.account(credits=CREDITS)
    created = httpx.post(
        f"{server.base_url}/v1/videos", headers=auth(key), json={"prompt": "a kite", "seconds": 1}
    )
    assert created.status_code == 200, created.text
    answer = server.client.get(f"/v1/videos/{created.json()['id']}", headers=auth(key))
    assert int(answer.headers["openai-poll-after-ms"]) >= 500
    for name in (
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit",
    ):
        assert name in answer.headers, name
    assert answer.headers["x-ratelimit-reset-requests"].endswith("s")


def test_a_remix_of_a_video_that_has_not_completed_is_409(
    start_server: Callable[..., Server],
) -> None:
    """A valid request at the wrong moment, like a cancel of a finished video (found by
    make fuzz: it was 400, which says the request itself is wrong)."""
    server = start_server(run_workers=False)
    key = server.account(credits=CREDITS)
    created = server.client.post("/v1/videos", json={"prompt": "x"}, headers=auth(key))
    assert created.status_code == 200, created.text
    answer = server.client.post(
        f"/v1/videos/{created.json()['id']}/remix", json={"prompt": "y"}, headers=auth(key)
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "conflict"
    assert "queued" in answer.json()["error"]["message"]
    assert balance(server, key) == CREDITS - PRICE // 2  # only the source was charged


def test_bad_input_gets_openais_error_object_never_the_envelope(server: Server) -> None:
    key = server.account(credits=CREDITS)
    cases = [
        (
            "POST",
            "/v1/videos",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("POST", "/v1/videos", {"json": {"prompt": ""}}, 400),
        ("POST", "/v1/videos", {"json": {"prompt": "\u200b\u200b\ufeff"}}, 400),  # invisible
        ("POST", "/v1/videos/task_missing/remix", {"json": {"prompt": "\u200b"}}, 400),
        ("POST", "/v1/videos", {"json": {"prompt": "x", "seconds": "soon"}}, 400),
        (
            "POST",
            "/v1/videos",
            {
                "files": {
                    "prompt": (None, "x"),
                    "input_reference": ("notes.txt", b"hello", "text/plain"),
                }
            },
            400,
        ),
        ("GET", "/v1/videos?limit=0", {}, 400),
        ("GET", "/v1/videos/task_missing/content", {}, 404),
        ("GET", "/v1/videos/task_missing/nothing", {}, 404),
        ("PUT", "/v1/videos", {}, 405),
        ("POST", "/v1/videos/task_missing/remix", {"json": {"prompt": "x"}}, 404),
        # Found by make fuzz: a model that is not a string was a 500 (unhashable dict),
        # a Unicode digit passed isdigit() and then failed int(): 500.
        ("POST", "/v1/videos", {"json": {"prompt": "x", "model": {}}}, 400),
        ("POST", "/v1/videos", {"json": {"prompt": "x", "model": ["preview"]}}, 400),
        ("POST", "/v1/videos", {"json": {"prompt": "x", "seconds": "\u00b2"}}, 400),
        ("GET", "/v1/videos?limit=\u00b2", {}, 400),
        # What the document refuses, the server refuses too.
        ("POST", "/v1/videos", {"json": {"prompt": "x", "seconds": "08"}}, 400),
        ("POST", "/v1/videos", {"json": {"prompt": "x", "size": "0720x1280"}}, 400),
        ("POST", "/v1/videos", {"json": {"prompt": "x", "input_reference": "a.png"}}, 400),
        (
            "POST",
            "/v1/videos",
            {
                "json": {
                    "prompt": "x",
                    "input_reference": {"image_url": ["https://example.com/a.png"]},
                }
            },
            400,
        ),
        (
            "POST",
            "/v1/videos",
            {"json": {"prompt": "x", "input_reference": {"image_url": ""}}},
            400,
        ),
    ]
    for method, path, options, status in cases:
        headers = {**auth(key), **options.pop("headers", {})}
        answer = server.client.request(method, path, headers=headers, **options)
        assert answer.status_code == status, (method, path, answer.text)
        body = answer.json()
        assert set(body) == {"error"}, (path, body)
        assert {"message", "type", "param", "code"} <= set(body["error"])
        assert "Traceback" not in answer.text
    assert balance(server, key) == CREDITS  # nothing was charged


def test_the_openapi_document_describes_the_face(server: Server) -> None:
    document = server.client.get("/openapi.json").json()
    paths = document["paths"]
    for path, method in [
        ("/v1/videos", "post"),
        ("/v1/videos", "get"),
        ("/v1/videos/{video_id}", "get"),
        ("/v1/videos/{video_id}", "delete"),
        ("/v1/videos/{video_id}/content", "get"),
        ("/v1/videos/{video_id}/remix", "post"),
    ]:
        operation = paths[path][method]
        error = operation["responses"]["404" if "{" in path else "401"]
        assert error["content"]["application/json"]["schema"]["required"] == ["error"]
    video = paths["/v1/videos"]["post"]["responses"]["200"]["content"]["application/json"]
    assert video["schema"]["properties"]["object"] == {"const": "video"}
    assert "multipart/form-data" in paths["/v1/videos"]["post"]["requestBody"]["content"]
