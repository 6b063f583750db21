"""Downloading output videos: signed URLs, Range, HEAD, and what the MP4 is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import pytest

from openimagine.media.mp4 import probe_mp4
from openimagine.storage import (
    STAGING_MAX_AGE_SECONDS,
    LocalStorage,
    clean_staging,
    scratch_prefix,
    url_expiry,
)

from conftest import Server, auth

RATIOS = ("2:3", "3:2", "1:1", "16:9", "9:16")


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert set(body) == {"code", "message", "error"}
    assert body["code"] == 403 and body["error"] == "FORBIDDEN"
    assert response.headers["content-type"].startswith("application/json")


def completed_urls(server: Server, key: str, **body: object) -> list[str]:
    response = server.generate(key, **body)
    assert response.status_code == 200, response.text
    data = server.wait(key, response.json()["data"]["task_id"])
    assert data["status"] == "completed", data
    return data["response"]


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return parts._replace(query=urlencode(query)).geturl()


@pytest.fixture
def video(server: Server) -> tuple[Server, str]:
    key = server.account()
    return server, completed_urls(server, key)[0]


def test_a_completed_video_downloads_as_mp4(video: tuple[Server, str]) -> None:
    server, url = video
    response = server.client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["accept-ranges"] == "bytes"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content[4:8] == b"ftyp"


def test_urls_need_no_api_key_so_players_can_fetch_them(video: tuple[Server, str]) -> None:
    _server, url = video
    assert httpx.get(url, headers={}).status_code == 200


def test_range_request_gets_206_with_the_right_bytes(video: tuple[Server, str]) -> None:
    server, url = video
    full = server.client.get(url).content
    size = len(full)
    assert size > 200
    part = server.client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.content == full[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{size}"
    assert part.headers["content-type"] == "video/mp4"
    middle = server.client.get(url, headers={"Range": f"bytes=100-{size - 1}"})
    assert middle.status_code == 206
    assert middle.content == full[100:]
    tail = server.client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206
    assert tail.content == full[-50:]
    open_ended = server.client.get(url, headers={"Range": f"bytes={size - 10}-"})
    assert open_ended.status_code == 206
    assert open_ended.content == full[-10:]


def test_unsatisfiable_range_is_416(video: tuple[Server, str]) -> None:
    server, url = video
    size = len(server.client.get(url).content)
    response = server.client.get(url, headers={"Range": f"bytes={size + 10}-{size + 20}"})
    assert response.status_code == 416


def test_head_gives_the_headers_without_the_body(video: tuple[Server, str]) -> None:
    server, url = video
    full = server.client.get(url).content
    head = server.client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == "video/mp4"
    assert int(head.headers["content-length"]) == len(full)


def test_head_with_a_bad_signature_is_403(video: tuple[Server, str]) -> None:
    server, url = video
    assert server.client.head(with_query(url, sig="0" * 64)).status_code == 403


def test_tampered_signature_is_403(video: tuple[Server, str]) -> None:
    server, url = video
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    flipped = ("1" if sig[0] == "0" else "0") + sig[1:]
    assert_forbidden(server.client.get(with_query(url, sig=flipped)))
    assert_forbidden(server.client.get(with_query(url, sig="")))
    assert_forbidden(server.client.get(with_query(url, sig="not-hex")))


def test_missing_signature_or_expiry_is_403(video: tuple[Server, str]) -> None:
    server, url = video
    assert_forbidden(server.client.get(with_query(url, sig=None)))
    assert_forbidden(server.client.get(with_query(url, expires=None)))
    assert_forbidden(server.client.get(urlsplit(url)._replace(query="").geturl()))


@pytest.mark.parametrize("expires", ["\u00b2", "\u0661\u0662", "9" * 5000, "-1", "1e9", " 1"])
def test_an_expiry_that_is_not_a_plain_number_is_403_not_500(server: Server, expires: str) -> None:
    """Anyone can send these without a key: a Unicode digit, an Arabic-Indic number or
    5000 nines (past int()'s digit limit) are a refused URL, never a server error."""
    assert_forbidden(
        server.client.get("/files/outputs/task_x/0.mp4", params={"expires": expires, "sig": "a"})
    )


def test_a_signature_cannot_be_stretched_to_a_later_expiry(video: tuple[Server, str]) -> None:
    server, url = video
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    assert_forbidden(server.client.get(with_query(url, expires=str(expires + 3600))))
    assert_forbidden(server.client.get(with_query(url, expires="99999999999")))


def test_a_signature_cannot_be_moved_to_another_file(video: tuple[Server, str]) -> None:
    server, url = video
    parts = urlsplit(url)
    other = parts._replace(path=parts.path.replace("/0.mp4", "/1.mp4")).geturl()
    assert other != url
    assert_forbidden(server.client.get(other))


def test_polls_within_a_step_get_the_same_urls(server: Server) -> None:
    """Expiries are rounded up to a step (a twelfth of the TTL): polls within a
    step get one URL, which browsers and CDNs can cache."""
    key = server.account()
    task_id = server.generate(key).json()["data"]["task_id"]
    server.wait(key, task_id)
    ttl = server.settings.url_ttl_seconds
    first_step = url_expiry(time.time(), ttl)
    polls = [
        server.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key)).json()[
            "data"
        ]["response"]
        for _ in range(3)
    ]
    if url_expiry(time.time(), ttl) == first_step:  # no step boundary passed
        assert polls[0] == polls[1] == polls[2]
    assert len(set(polls[0])) == 2  # one URL per video


def test_url_expiry_rounds_up_to_a_twelfth_of_the_ttl() -> None:
    assert url_expiry(1_000_000, 3600) == 1_003_800  # 1_003_600 rounded up to 300 s
    assert url_expiry(1_003_500, 3600) == 1_007_100  # already on a step
    assert url_expiry(1_000_000.9, 1) == 1_000_001  # a second: no rounding
    assert all(url_expiry(now, 600) - now >= 600 for now in range(1000, 1100))


def test_an_expired_url_is_403_and_status_hands_out_a_fresh_one(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(url_ttl_seconds=1)
    key = server.account()
    response = server.generate(key)
    task_id = response.json()["data"]["task_id"]
    url = server.wait(key, task_id)["response"][0]
    time.sleep(2.1)
    assert_forbidden(server.client.get(url))
    fresh = server.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key)).json()[
        "data"
    ]["response"][0]
    assert server.client.get(fresh).status_code == 200


def _raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (no client-side path normalisation)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize(
    "key",
    [
        "../secret_key",
        "outputs/../secret_key",
        "outputs/../../data/secret_key",
        "outputs/task_AAAAAAAAAAAAAAAA/../../openimagine.db",
        "openimagine.db",
        "secret_key",
    ],
)
def test_a_signed_url_outside_the_stored_files_never_serves_a_file(
    server: Server, key: str
) -> None:
    """Even a correctly signed URL (as if the secret had leaked to sign it) cannot
    reach the database, the secret key or anything outside inputs/outputs."""
    settings = server.settings
    (settings.data_dir / "secret_key").write_text("super-secret-sentinel")
    signer = LocalStorage(
        settings.outputs_dir,
        secret=settings.resolved_secret_key(),
        public_url=server.base_url,
        ttl_seconds=600,
    )
    expires = int(time.time()) + 600
    sig = signer._signature(key, expires)
    for target in (
        f"/files/{key}",
        f"/files/{quote(key, safe='')}",
        f"/files/{key.replace('..', '%2E%2E')}",
    ):
        status, raw = _raw_get(server.base_url, f"{target}?expires={expires}&sig={sig}")
        assert status in (403, 404), (target, raw[:300])
        assert b"super-secret-sentinel" not in raw
        assert b"SQLite format" not in raw


def test_a_stored_file_outside_the_url_scheme_is_not_served(server: Server) -> None:
    """Only task inputs/outputs are served, never other files placed in the folder."""
    settings = server.settings
    stray = settings.outputs_dir / "outputs" / "notes.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("private notes")
    signer = LocalStorage(
        settings.outputs_dir,
        secret=settings.resolved_secret_key(),
        public_url=server.base_url,
        ttl_seconds=600,
    )
    expires = int(time.time()) + 600
    response = server.client.get(
        f"/files/outputs/notes.txt?expires={expires}"
        f"&sig={signer._signature('outputs/notes.txt', expires)}"
    )
    assert response.status_code == 404
    assert b"private notes" not in response.content


def test_output_videos_are_h264_faststart_with_the_requested_shape(
    server: Server, tmp_path: Path
) -> None:
    key = server.account()
    task_ids = {}
    for ratio in RATIOS:
        response = server.generate(key, ratio=ratio)
        assert response.status_code == 200
        task_ids[ratio] = response.json()["data"]["task_id"]
    for ratio, task_id in task_ids.items():
        data = server.wait(key, task_id)
        assert data["status"] == "completed", data
        assert len(data["response"]) == 2
        for index, url in enumerate(data["response"]):
            path = tmp_path / f"{ratio.replace(':', 'x')}-{index}.mp4"
            path.write_bytes(server.client.get(url).content)
            info = probe_mp4(path)
            assert info["codec"] == "h264", info
            assert info["pix_fmt"] == "yuv420p", info
            assert info["faststart"], info["boxes"]
            assert info["boxes"].index("moov") < info["boxes"].index("mdat")
            width, height = info["width"], info["height"]
            assert width % 2 == 0 and height % 2 == 0, info
            rw, rh = (int(part) for part in ratio.split(":"))
            assert abs(width / height - rw / rh) / (rw / rh) <= 0.02, (ratio, width, height)
            assert info["frames"] >= 1


def test_output_video_follows_the_configured_resolution_and_fps(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(resolution=96, fps=10, duration=1.0, variations=1)
    key = server.account()
    [url] = completed_urls(server, key, ratio="16:9")
    path = tmp_path / "clip.mp4"
    path.write_bytes(server.client.get(url).content)
    info = probe_mp4(path)
    assert min(info["width"], info["height"]) == 96
    assert info["width"] > info["height"]
    assert info["fps"] == pytest.approx(10, rel=0.05)
    assert info["frames"] == 10


def test_staging_cleanup_removes_only_scratch_that_is_certainly_dead(tmp_path: Path) -> None:
    """A storage folder may be shared by workers on several hosts: at start a process
    removes this host's scratch of exited processes at once, but another host's (or an
    unnamed) folder only after STAGING_MAX_AGE_SECONDS untouched; its own stays."""
    staging = tmp_path / ".staging"
    staging.mkdir()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    host = socket.gethostname()
    names = {
        "mine": scratch_prefix() + "a",
        "exited": f"{host}~{exited.pid}~0badf00d~b",
        "earlier_with_my_pid": f"{host}~{os.getpid()}~0badf00d~c",
        "other_host_fresh": "gpu-7~123~0badf00d~d",
        "other_host_old": "gpu-7~123~0badf00d~e",
        "unnamed_old": "tmpxyz",
    }
    for name in names.values():
        (staging / name).mkdir()
        (staging / name / "0.mp4").write_bytes(b"partial")
    old = time.time() - STAGING_MAX_AGE_SECONDS - 60
    for key in ("other_host_old", "unnamed_old"):
        for path in (staging / names[key] / "0.mp4", staging / names[key]):
            os.utime(path, (old, old))
    removed = clean_staging(staging)
    assert sorted(removed) == sorted(
        names[key] for key in ("exited", "earlier_with_my_pid", "other_host_old", "unnamed_old")
    )
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [names["mine"], names["other_host_fresh"]]
    )
