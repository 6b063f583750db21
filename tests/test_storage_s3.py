"""Outputs and inputs in S3-compatible object storage, against a real S3-speaking
server (moto's standalone server in a subprocess), so every replica can hand
out every file.

What a user relies on: ``response`` holds presigned GET URLs that download
the videos straight from the bucket; an input sent as a data URI is stored in
the bucket and echoed as such a URL; nothing is left on the API machine's disk.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from openimagine.errors import NotFound
from openimagine.settings import Settings
from openimagine.storage import S3Storage, storage_from_settings, url_expiry

from conftest import Server, auth
from scaleout import moto_server

BUCKET = "openimagine-test"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import boto3

    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with pytest.MonkeyPatch.context() as patch, moto_server(log) as endpoint:
        # The standard AWS credential chain, as in a deployment (moto accepts any keys).
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.delenv("AWS_PROFILE", raising=False)
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=BUCKET)
        yield endpoint


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_settings_pick_s3_when_a_bucket_is_set(tmp_path: Path, s3_endpoint: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        s3_bucket=BUCKET,
        s3_endpoint_url=s3_endpoint,
        s3_region=REGION,
        s3_prefix="/tenant-a/",
    )
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    assert storage.prefix == "tenant-a/" and storage.staging_dir is None


def test_s3_storage_stores_reads_signs_and_deletes(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    storage = S3Storage(
        BUCKET, prefix="unit", endpoint_url=s3_endpoint, region=REGION, ttl_seconds=600
    )
    image = png_bytes()
    storage.put_bytes("inputs/task_abcdefgh12/0.png", image)
    assert storage.read_bytes("inputs/task_abcdefgh12/0.png") == image

    video = tmp_path / "0.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100)
    storage.put_file("outputs/task_abcdefgh12/0.mp4", video)
    assert not video.exists()  # consumed

    step = url_expiry(time.time(), 600)
    url = storage.url("outputs/task_abcdefgh12/0.mp4")
    again = storage.url("outputs/task_abcdefgh12/0.mp4")
    if url_expiry(time.time(), 600) == step:  # no step boundary passed in between
        assert again == url  # signed once per step, the same URL for every poll
    assert url.startswith(f"{s3_endpoint}/{BUCKET}/unit/outputs/task_abcdefgh12/0.mp4?")
    query = parse_qs(urlsplit(url).query)
    # Valid for the TTL at least, rounded up to a step of a twelfth of it.
    assert "X-Amz-Signature" in query and 600 <= int(query["X-Amz-Expires"][0]) <= 650
    download = httpx.get(url)
    assert download.status_code == 200
    assert download.headers["content-type"] == "video/mp4"
    assert download.content[4:8] == b"ftyp"
    # Under the prefix, and nowhere else.
    keys = [
        item["Key"]
        for item in boto3.client(
            "s3", endpoint_url=s3_endpoint, region_name=REGION
        ).list_objects_v2(Bucket=BUCKET, Prefix="unit/")["Contents"]
    ]
    assert sorted(keys) == [
        "unit/inputs/task_abcdefgh12/0.png",
        "unit/outputs/task_abcdefgh12/0.mp4",
    ]

    storage.delete("inputs/task_abcdefgh12/0.png")
    storage.delete("inputs/task_abcdefgh12/0.png")  # missing: not an error
    with pytest.raises(ClientError, match="NoSuchKey"):
        storage.read_bytes("inputs/task_abcdefgh12/0.png")
    with pytest.raises(NotFound):
        storage.url("../secrets/0.mp4")


def test_the_service_hands_out_presigned_urls_for_outputs_and_inputs(
    start_server: Callable[..., Server], s3_endpoint: str
) -> None:
    server = start_server(
        s3_bucket=BUCKET, s3_endpoint_url=s3_endpoint, s3_region=REGION, s3_prefix="service"
    )
    key = server.account(credits=1000)
    image = png_bytes()
    data_uri = "data:image/png;base64," + base64.b64encode(image).decode()
    task_id = server.generate(key, images=[data_uri]).json()["data"]["task_id"]
    data = server.wait(key, task_id)
    assert data["status"] == "completed", data

    assert len(data["response"]) == 2
    for url in data["response"]:
        assert url.startswith(f"{s3_endpoint}/{BUCKET}/service/outputs/{task_id}/")
        video = httpx.get(url)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        assert video.headers["content-type"] == "video/mp4"
    [echoed] = data["request"]["images"]
    assert echoed.startswith(f"{s3_endpoint}/{BUCKET}/service/inputs/{task_id}/0.png?")
    assert httpx.get(echoed).content == image

    # Nothing on the API machine's disk, and /files serves nothing in this mode.
    files = server.settings.outputs_dir
    assert not files.exists() or not any(p.is_file() for p in files.rglob("*"))
    local = server.client.get(
        f"/files/outputs/{task_id}/0.mp4", params={"expires": "1", "sig": "x"}
    )
    assert local.status_code == 404 and local.json()["error"] == "NOT_FOUND"
    again = server.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key))
    assert again.json()["data"]["response"][0].startswith(s3_endpoint)
