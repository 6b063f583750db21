"""The diffusers engines through the HTTP API, end to end on tiny real models:
the seed's requests, text-to-video and image-to-video, for every family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torch")

from openimagine.engines.base import ratio_parts  # noqa: E402
from openimagine.engines.diffusers.families import FAMILIES, plan  # noqa: E402
from openimagine.engines.diffusers.tiny import make_tiny  # noqa: E402
from openimagine.media.mp4 import probe_mp4  # noqa: E402

from conftest import Server, png_data_uri  # noqa: E402

CLIP = {"duration": 1.0, "fps": 8, "resolution": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny model folders, built on first use and shared by the module."""
    root = tmp_path_factory.mktemp("http-models")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = make_tiny(name, root / name)
        return built[name]

    return get


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "profiles.toml"
    path.write_text(
        "".join(
            f"[{family}.{mode}]\nsteps = 2\n"
            for family in FAMILIES
            for mode in ("fun", "normal", "spicy")
        )
    )
    return path


def download_and_probe(server: Server, url: str, tmp_path: Path) -> dict:
    response = server.client.get(url)
    assert response.status_code == 200
    path = tmp_path / url.split("?")[0].rsplit("/", 1)[-1]
    path.write_bytes(response.content)
    return probe_mp4(path)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_text_to_video_over_http(
    family: str,
    start_server: Callable[..., Server],
    models: Callable[[str], Path],
    profiles: Path,
    tmp_path: Path,
) -> None:
    """The seed's curl request on a real pipeline: two MP4s of the planned frames and size."""
    server = start_server(
        engine=family, model_path=models(f"{family}-t2v"), profiles=profiles, **CLIP
    )
    key = server.account()
    response = server.generate(key, mode="fun", ratio="16:9")
    assert response.status_code == 200, response.text
    data = server.wait(key, response.json()["data"]["task_id"], timeout=300)
    assert data["status"] == "completed", data
    expected = plan(FAMILIES[family], "16:9", explicit={"duration", "fps", "resolution"}, **CLIP)  # type: ignore[arg-type]
    assert len(data["response"]) == 2
    for url in data["response"]:
        info = download_and_probe(server, url, tmp_path)
        assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
        assert info["frames"] == expected.frames
        assert (info["width"], info["height"]) == (expected.out_width, expected.out_height)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_image_to_video_over_http(
    family: str,
    start_server: Callable[..., Server],
    models: Callable[[str], Path],
    profiles: Path,
    tmp_path: Path,
) -> None:
    """An image task runs the image-to-video pipeline and keeps the requested ratio."""
    server = start_server(
        engine=family,
        model_path=models(f"{family}-t2v"),
        i2v_model_path=models(f"{family}-i2v"),
        profiles=profiles,
        **CLIP,
    )
    key = server.account()
    response = server.generate(key, mode="normal", ratio="1:1", images=[png_data_uri(96, 72)])
    assert response.status_code == 200, response.text
    data = server.wait(key, response.json()["data"]["task_id"], timeout=300)
    assert data["status"] == "completed", data
    expected = plan(FAMILIES[family], "1:1", explicit={"duration", "fps", "resolution"}, **CLIP)  # type: ignore[arg-type]
    rw, rh = ratio_parts("1:1")
    for url in data["response"]:
        info = download_and_probe(server, url, tmp_path)
        assert info["frames"] == expected.frames
        assert abs(info["width"] / info["height"] - rw / rh) <= 0.02 * rw / rh


def test_engine_without_an_image_model_refuses_images_at_submission(
    start_server: Callable[..., Server], models: Callable[[str], Path], profiles: Path
) -> None:
    """No image-to-video model: an image task is a 400 before any credit is taken."""
    server = start_server(
        engine="wan", model_path=models("wan-t2v"), profiles=profiles, run_workers=False, **CLIP
    )
    key = server.account(credits=100)
    response = server.generate(key, images=[png_data_uri(96, 72)])
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "INVALID_REQUEST"
    assert "does not take images" in body["message"]
    assert server.generate(key).status_code == 200  # text still works, 60 credits left
