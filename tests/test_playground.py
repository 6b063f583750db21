"""The playground at ``/``: served files over HTTP, then a real headless
Chromium (Debian's ``chromium``, driven by Playwright) that pastes a key,
submits a prompt and waits until the video plays.

Without Chromium or Playwright the browser tests skip, saying why; with
``CI=true`` they fail instead, so CI cannot pass without running them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "a beautiful landscape with mountains"
VIDEOS_READY = """() => {
  const videos = [...document.querySelectorAll('video')];
  return videos.length === 2 && videos.every(v => v.readyState >= 2);
}"""
# Generous: the machine that runs the suite may be small and busy.
TIMEOUT_MS = 120_000


# --- plain HTTP ---------------------------------------------------------------------


def test_the_playground_page_and_its_assets_are_served(server: Server) -> None:
    page = server.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/playground.js"' in page.text
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for name, kind in (
        ("playground.js", "text/javascript"),
        ("playground.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        asset = server.client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert server.client.head("/").status_code == 200


def test_unknown_static_files_get_the_envelope(server: Server) -> None:
    for path in (
        "/static/nope.js",
        "/static/..%2Fapi%2Fapp.py",
        "/static/.hidden.js",
        "/static/../settings.py",
    ):
        response = server.client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "NOT_FOUND"


def test_the_page_is_not_in_the_openapi_document(server: Server) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/v1/account" in paths


# --- a real browser -------------------------------------------------------------------


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    reason = _missing_browser()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def open_(url: str, **context_options: Any) -> Any:
        context = chromium.new_context(
            **{"viewport": {"width": 1280, "height": 900}, **context_options}
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()


def paste_key(page: Any, key: str) -> None:
    page.get_by_label("Your key").fill(key)
    page.get_by_label("Your key").press("Enter")


def test_paste_a_key_submit_a_prompt_and_the_video_plays(
    start_server: Callable[..., Server], open_page: Callable[..., Any]
) -> None:
    # Bigger clips than the suite's default, so that the screenshot shows something.
    server = start_server(resolution=240, duration=2, fps=12)
    key = server.account(plan="pro", credits=1000)
    page = open_page(server.base_url + "/", color_scheme="dark")
    assert page.title() == "openimagine playground"

    paste_key(page, key)
    page.wait_for_function(
        "() => document.querySelector('#account-balance').textContent.includes('credits')"
    )
    assert page.locator("#account-plan").inner_text().lower() == "pro"
    assert page.evaluate("localStorage.getItem('openimagine.apiKey')") == f'"{key}"'

    # Keyboard only: the prompt has a label, Enter submits.
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Fun").check()
    page.get_by_label("Prompt").press("Enter")
    task = page.locator(".task").first
    task.wait_for()
    assert PROMPT in task.inner_text()

    page.wait_for_function(VIDEOS_READY, timeout=TIMEOUT_MS)
    videos = page.locator("video")
    for index in range(2):
        video = videos.nth(index)
        assert video.get_attribute("controls") is not None
        assert video.get_attribute("playsinline") is not None
        assert video.evaluate("v => v.videoWidth > 0 && !v.error")
    links = page.get_by_role("link", name="Download")
    assert links.count() == 2
    assert all("/files/" in (links.nth(i).get_attribute("href") or "") for i in range(2))
    assert task.locator(".badge").inner_text().lower() == "completed"
    page.wait_for_function(
        "() => document.querySelector('#account-balance')"
        ".textContent.replace(/[^0-9]/g, '').startsWith('960')"
    )

    page.wait_for_timeout(600)  # let both players paint a frame
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    # The README's screenshot changes only on purpose, not on every run.
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "playground.png")

    # The key and the task list survive a reload.
    page.reload()
    page.wait_for_function(VIDEOS_READY, timeout=TIMEOUT_MS)
    assert page.get_by_label("Your key").input_value() == key

    # A phone-sized screen: nothing wider than the screen, the form reachable.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.get_by_role("button", name="Generate").is_visible()
    page.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)
    assert page.js_errors == []


def test_api_errors_are_shown_readably(server: Server, open_page: Callable[..., Any]) -> None:
    page = open_page(server.base_url + "/")
    alert = page.get_by_role("alert")

    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_role("button", name="Generate").click()
    assert "Paste your API key first" in alert.inner_text()

    paste_key(page, "oi_not_a_real_key")
    alert.get_by_text("Unauthorized: invalid or revoked API key").wait_for()

    paste_key(page, server.account())
    page.get_by_label("Prompt").fill("   ")
    page.get_by_label("Prompt").press("Enter")
    alert.get_by_text("Invalid request: The prompt parameter must not be empty").wait_for()

    paste_key(page, server.account(credits=0))
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Prompt").press("Enter")
    alert.get_by_text("credits", exact=False).wait_for()
    assert alert.inner_text().startswith("Error")
    assert page.locator(".task").count() == 0
    assert page.js_errors == []


def test_a_local_image_is_read_as_a_data_uri_and_animated(
    server: Server, tmp_path: Path, open_page: Callable[..., Any]
) -> None:
    from PIL import Image

    picture = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (30, 120, 200)).save(picture)
    page = open_page(server.base_url + "/")
    paste_key(page, server.account())
    page.locator("#images summary").click()
    page.get_by_label("Images from this device").set_input_files(str(picture))
    page.get_by_role("img", name="photo.png").wait_for()
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(VIDEOS_READY, timeout=TIMEOUT_MS)
    task_id = page.locator(".task").first.get_attribute("data-task-id")
    key = page.evaluate("JSON.parse(localStorage.getItem('openimagine.apiKey'))")
    data = server.wait(key, task_id)
    # Sent as a data URI, echoed as a signed URL of the stored input.
    assert data["request"]["images"][0].startswith(server.base_url + "/files/")
    assert page.js_errors == []


def test_a_running_task_updates_live_and_can_be_cancelled(
    start_server: Callable[..., Server], open_page: Callable[..., Any]
) -> None:
    server = start_server(
        engine="test-sleep", test_sleep_seconds=30, heartbeat_seconds=0.2, lease_seconds=5
    )
    key = server.account(plan="pro", credits=1000)
    page = open_page(server.base_url + "/")
    paste_key(page, key)
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Prompt").press("Enter")
    task = page.locator(".task").first
    # Progress arrives from the live stream: the bar moves while the task runs.
    page.wait_for_function(
        "() => document.querySelector('.task .badge')?.textContent === 'processing'",
        timeout=TIMEOUT_MS,
    )
    page.wait_for_function(
        "() => document.querySelector('.task-progress')?.value > 5", timeout=TIMEOUT_MS
    )
    cancel = task.get_by_role("button", name="Cancel this task")
    assert cancel.is_visible()
    cancel.click()
    page.wait_for_function(
        "() => document.querySelector('.task .badge')?.textContent === 'failed'", timeout=TIMEOUT_MS
    )
    assert "Task cancelled" in task.locator(".task-error").inner_text()
    assert "Credits refunded" in task.locator(".task-error").inner_text()
    assert not cancel.is_visible()  # a finished task has nothing to cancel
    page.wait_for_function(
        "() => document.querySelector('#account-balance')"
        ".textContent.replace(/[^0-9]/g, '').startsWith('1000')"
    )
    assert page.js_errors == []
