"""The fake upstreams speak the upstream shapes over real HTTP (loopback sockets, httpx)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openimagine.media.mp4 import probe_mp4
from openimagine.testing.fake_upstreams import FakeConfig, FakeUpstream

XAI_BODY = {
    "model": "grok-imagine-video",
    "prompt": "a cat on the moon",
    "duration": 2,
    "aspect_ratio": "16:9",
    "resolution": "480p",
}
OPENAI_FORM = {"prompt": "a cat on the moon", "model": "wan", "seconds": "4", "size": "832x480"}
FINAL = {"done", "failed", "expired", "completed"}


def multipart(fields: dict[str, str]) -> dict[str, tuple[None, str]]:
    """Text fields as multipart parts: httpx sends ``data=`` alone urlencoded; the SDK never."""
    return {name: (None, value) for name, value in fields.items()}


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeUpstream]]:
    """Factory: ``fake(flavor, **knobs)`` → a started FakeUpstream, stopped after the test."""
    started: list[FakeUpstream] = []

    def start(flavor: str, **knobs: Any) -> FakeUpstream:
        knobs.setdefault("job_seconds", 0.3)
        upstream = FakeUpstream(flavor, FakeConfig(**knobs)).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


def poll_until_final(client: httpx.Client, url: str) -> tuple[list[httpx.Response], httpx.Response]:
    """Poll ``url`` until its status is final; returns every answer and the last one."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = client.get(url)
        answers.append(answer)
        if answer.json().get("status") in FINAL:
            return answers, answer
        time.sleep(0.02)
    raise AssertionError(f"{url} never reached a final status: {answers[-1].json()}")


def xai_job(client: httpx.Client, up: FakeUpstream, **body: Any) -> httpx.Response:
    created = client.post(f"{up.base_url}/videos/generations", json={**XAI_BODY, **body})
    assert created.status_code == 200, created.text
    return poll_until_final(client, f"{up.base_url}/videos/{created.json()['request_id']}")[1]


# ---------------------------------------------------------------------- xai


def test_xai_happy_path_serves_mp4_with_moov_at_end(
    fake: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    up = fake("xai")
    with httpx.Client() as client:
        created = client.post(f"{up.base_url}/videos/generations", json=XAI_BODY)
        assert created.status_code == 200
        request_id = created.json()["request_id"]
        first = client.get(f"{up.base_url}/videos/{request_id}").json()
        assert first["status"] == "pending" and 0 <= first["progress"] < 100
        assert up.stats()["in_flight"] == 1
        answers, done = poll_until_final(client, f"{up.base_url}/videos/{request_id}")
        body = done.json()
        assert body["status"] == "done" and body["progress"] == 100
        assert body["model"] == "grok-imagine-video"
        assert body["video"]["duration"] == 2 and body["video"]["respect_moderation"] is True
        # Progress only moves forward while pending.
        progress = [a.json()["progress"] for a in answers]
        assert progress == sorted(progress)

        video = client.get(body["video"]["url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = tmp_path / "out.mp4"
    path.write_bytes(video.content)
    info = probe_mp4(path)
    assert info["codec"] == "h264" and info["frames"] > 0
    assert info["faststart"] is False and info["boxes"].index("mdat") < info["boxes"].index("moov")

    stats = up.stats()
    assert stats["creates"] == 1 and stats["downloads"] == 1 and stats["in_flight"] == 0
    assert stats["polls"] == len(answers) + 1
    assert stats["requests"] == [XAI_BODY] and stats["auth"] == [None]


def test_xai_validation_errors_use_xai_shape(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("xai")
    bad: list[dict[str, Any]] = [
        {"prompt": ""},
        {"duration": 20},
        {"aspect_ratio": "21:9"},
        {"resolution": "1080p"},
        {"image": {"url": "data:,x"}, "reference_images": [{"url": "data:,y"}]},
    ]
    with httpx.Client() as client:
        for change in bad:
            answer = client.post(f"{up.base_url}/videos/generations", json={**XAI_BODY, **change})
            assert answer.status_code == 400, change
            assert answer.json()["code"] == "Client specified an invalid argument"
            assert answer.json()["error"]
        missing = client.get(f"{up.base_url}/videos/nope")
    assert missing.status_code == 404 and set(missing.json()) == {"code", "error"}


def test_xai_moderated_failed_and_expired(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("xai", job_seconds=0.2)
    with httpx.Client() as client:
        moderated = xai_job(client, up, prompt="something Forbidden here").json()
        assert moderated["status"] == "done"
        assert moderated["video"] == {"url": None, "duration": 0, "respect_moderation": False}

        up.configure(outcome="failed")
        failed = xai_job(client, up)
        assert failed.status_code == 200
        assert failed.json()["status"] == "failed"
        assert failed.json()["error"]["code"] == "internal_error"

        up.configure(outcome="expired")
        expired = xai_job(client, up)
        assert expired.status_code == 200 and expired.json() == {"status": "expired"}
    assert up.stats()["in_flight"] == 0


def test_xai_503_then_success_with_retry_after(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("xai", create_failures=2)
    with httpx.Client() as client:
        answers = [
            client.post(f"{up.base_url}/videos/generations", json=XAI_BODY) for _ in range(3)
        ]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["retry-after"] == "1"
    assert answers[0].json() == {"code": "Service unavailable", "error": answers[0].json()["error"]}
    assert "request_id" in answers[2].json()
    assert up.stats()["creates"] == 3 and up.stats()["jobs"] == 1
    assert up.config.create_failures == 0


def test_xai_api_key_and_create_status(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("xai", api_key="k-123")
    url = f"{up.base_url}/videos/generations"
    with httpx.Client() as client:
        assert client.post(url, json=XAI_BODY).status_code == 401
        wrong = client.post(url, json=XAI_BODY, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "Unauthenticated"
        good = client.post(url, json=XAI_BODY, headers={"Authorization": "Bearer k-123"})
        assert good.status_code == 200
        job_url = f"{up.base_url}/videos/{good.json()['request_id']}"
        assert client.get(job_url).status_code == 401
        assert client.get(job_url, headers={"Authorization": "Bearer k-123"}).status_code == 200

        up.configure(create_status=403)
        refused = client.post(url, json=XAI_BODY, headers={"Authorization": "Bearer k-123"})
        assert refused.status_code == 403 and set(refused.json()) == {"code", "error"}
    assert up.stats()["auth"] == [None, "Bearer nope", "Bearer k-123", "Bearer k-123"]


def test_control_endpoints(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("xai")
    root = up.base_url.removesuffix("/v1")
    with httpx.Client() as client:
        assert client.post(f"{root}/_fake/config", json={"create_status": 500}).status_code == 200
        assert up.config.create_status == 500
        answer = client.post(f"{up.base_url}/videos/generations", json=XAI_BODY)
        assert answer.status_code == 500 and answer.json()["code"] == "Internal error"
        assert client.post(f"{root}/_fake/config", json={"nope": 1}).status_code == 400
        assert client.post(f"{root}/_fake/config", json={"outcome": "odd"}).status_code == 400
        stats = client.get(f"{root}/_fake/stats").json()
    assert stats["creates"] == 1 and stats["requests"] == [XAI_BODY]


# ---------------------------------------------------------------------- openai


def test_openai_multipart_create_with_input_reference(
    fake: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    up = fake("openai", api_key="sk-x")
    headers = {"Authorization": "Bearer sk-x"}
    image = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    with httpx.Client(headers=headers) as client:
        created = client.post(
            f"{up.base_url}/videos",
            files={**multipart(OPENAI_FORM), "input_reference": ("start.png", image, "image/png")},
        )
        assert created.status_code == 200, created.text
        video = created.json()
        assert video["id"].startswith("video_") and video["object"] == "video"
        assert video["status"] == "queued" and video["progress"] == 0
        assert {k: video[k] for k in ("model", "seconds", "size", "prompt")} == {
            "model": "wan",
            "seconds": "4",
            "size": "832x480",
            "prompt": "a cat on the moon",
        }
        assert isinstance(video["created_at"], int)
        early = client.get(f"{up.base_url}/videos/{video['id']}/content")
        assert early.status_code == 404 and early.json()["error"]["code"] == "not_found"

        answers, done = poll_until_final(client, f"{up.base_url}/videos/{video['id']}")
        assert done.json()["status"] == "completed" and done.json()["progress"] == 100
        assert "completed_at" in done.json()
        assert all(a.json()["progress"] <= 99 for a in answers[:-1])
        content = client.get(f"{up.base_url}/videos/{video['id']}/content")
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
        (tmp_path / "v.mp4").write_bytes(content.content)
        assert probe_mp4(tmp_path / "v.mp4")["faststart"] is False

        deleted = client.delete(f"{up.base_url}/videos/{video['id']}")
        assert deleted.json() == {"id": video["id"], "object": "video", "deleted": True}
        assert client.get(f"{up.base_url}/videos/{video['id']}").status_code == 404

    stats = up.stats()
    assert stats["requests"] == [
        {
            **OPENAI_FORM,
            "input_reference": {
                "filename": "start.png",
                "content_type": "image/png",
                "size": len(image),
            },
        }
    ]
    assert stats["auth"] == ["Bearer sk-x"] and stats["downloads"] == 2


def test_openai_create_errors(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("openai")
    url = f"{up.base_url}/videos"
    with httpx.Client() as client:
        as_json = client.post(url, json=OPENAI_FORM)
        assert as_json.status_code == 415
        assert set(as_json.json()["error"]) == {"message", "type", "param", "code"}
        assert client.post(url, data=OPENAI_FORM).status_code == 415  # urlencoded: same
        odd_size = client.post(url, files=multipart({**OPENAI_FORM, "size": "830x480"}))
        assert odd_size.status_code == 400
        assert odd_size.json()["error"]["type"] == "invalid_request_error"
        no_prompt = client.post(url, files=multipart({"model": "wan"}))
        assert no_prompt.status_code == 400

        # SGLang takes extra fields; trtllm-serve refuses them with 422.
        extra = {**OPENAI_FORM, "seed": "7", "negative_prompt": "blur"}
        assert client.post(url, files=multipart(extra)).status_code == 200
        up.configure(strict_fields=True)
        strict = client.post(url, files=multipart(extra))
        assert strict.status_code == 422 and "seed" in strict.json()["error"]["message"]
        assert client.post(url, files=multipart(OPENAI_FORM)).status_code == 200
    assert up.stats()["requests"][0] == OPENAI_FORM


def test_openai_trtllm_statuses_in_order(fake: Callable[..., FakeUpstream]) -> None:
    # Queued and postprocessing each last a tenth of the job: 0.1 s windows for 20 ms polls.
    up = fake("openai", statuses="trtllm", job_seconds=1.0)
    with httpx.Client() as client:
        video = client.post(f"{up.base_url}/videos", files=multipart(OPENAI_FORM))
        answers, _ = poll_until_final(client, f"{up.base_url}/videos/{video.json()['id']}")
    seen: list[str] = []
    for answer in [video, *answers]:
        if not seen or seen[-1] != answer.json()["status"]:
            seen.append(answer.json()["status"])
    assert seen == ["queued", "generating", "postprocessing", "completed"]


def test_openai_failed_with_500_body_and_moderation(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("openai", outcome="failed", failed_http_status=500, job_seconds=0.2)
    with httpx.Client() as client:
        video = client.post(f"{up.base_url}/videos", files=multipart(OPENAI_FORM)).json()
        _, failed = poll_until_final(client, f"{up.base_url}/videos/{video['id']}")
        assert failed.status_code == 500
        body = failed.json()
        assert body["id"] == video["id"] and body["object"] == "video"
        assert body["status"] == "failed" and body["error"]["code"] == "internal_error"

        up.configure(outcome="ok", failed_http_status=200)
        banned = client.post(
            f"{up.base_url}/videos", files=multipart({**OPENAI_FORM, "prompt": "a forbidden scene"})
        ).json()
        _, moderated = poll_until_final(client, f"{up.base_url}/videos/{banned['id']}")
    assert moderated.status_code == 200
    assert moderated.json()["error"]["code"] == "content_policy_violation"


def test_openai_variant_not_video_and_mpeg4(
    fake: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    up = fake("openai", outcome="not_video", job_seconds=0.2)
    with httpx.Client() as client:
        html = client.post(f"{up.base_url}/videos", files=multipart(OPENAI_FORM)).json()
        up.configure(outcome="ok", video_codec="mpeg4")
        mpeg4 = client.post(f"{up.base_url}/videos", files=multipart(OPENAI_FORM)).json()
        for video in (html, mpeg4):
            poll_until_final(client, f"{up.base_url}/videos/{video['id']}")

        content = f"{up.base_url}/videos/{html['id']}/content"
        assert client.get(content, params={"variant": "video"}).status_code == 404
        page = client.get(content)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text == "<html>oops</html>"
        data = client.get(f"{up.base_url}/videos/{mpeg4['id']}/content").content
    (tmp_path / "m.mp4").write_bytes(data)
    assert probe_mp4(tmp_path / "m.mp4")["codec"] == "mpeg4"


def test_poll_delay_and_in_flight(fake: Callable[..., FakeUpstream]) -> None:
    up = fake("openai", job_seconds=5, poll_delay=0.3)
    with httpx.Client() as client:
        for _ in range(2):
            client.post(f"{up.base_url}/videos", files=multipart(OPENAI_FORM))
        assert up.stats()["in_flight"] == 2
        video = client.post(f"{up.base_url}/videos", files=multipart(OPENAI_FORM)).json()
        began = time.monotonic()
        assert client.get(f"{up.base_url}/videos/{video['id']}").status_code == 200
        assert time.monotonic() - began >= 0.3
        assert up.stats()["in_flight"] == 3
        client.delete(f"{up.base_url}/videos/{video['id']}")
    # A deleted job stops counting; the two others are still rendering.
    assert up.stats()["in_flight"] == 2


# ---------------------------------------------------------------------- CLI


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openimagine.testing.fake_upstreams",
            "--flavor",
            "openai",
            "--port",
            "0",
            "--job-seconds",
            "0.2",
            "--api-key",
            "cli-key",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("base_url=http://127.0.0.1:"), (line, proc.poll())
        base_url = line.removeprefix("base_url=")
        with httpx.Client(headers={"Authorization": "Bearer cli-key"}) as client:
            video = client.post(f"{base_url}/videos", files=multipart(OPENAI_FORM))
            assert video.status_code == 200
            _, done = poll_until_final(client, f"{base_url}/videos/{video.json()['id']}")
            assert done.json()["status"] == "completed"
            stats = client.get(base_url.removesuffix("/v1") + "/_fake/stats").json()
            assert stats["creates"] == 1 and stats["auth"] == ["Bearer cli-key"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
