"""The gateway: several models per deployment, relays to xAI and to OpenAI-videos
servers, each with its own price and concurrency.

Upstreams are ``openimagine.testing.fake_upstreams``: real HTTP servers on
loopback speaking the upstreams' documented shapes, failures included.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from openimagine.catalog import CatalogError, load_catalog
from openimagine.media.mp4 import probe_mp4
from openimagine.store.db import Database
from openimagine.store.models import LedgerEntry, Task
from openimagine.testing.fake_upstreams import FakeConfig, FakeUpstream

from conftest import Server, auth, free_port, make_settings, openimagine_env, run_cli

KEY_ENV = "OPENIMAGINE_TEST_XAI_KEY"
SECRET = "xai-secret-0123456789abcdef"
CREDITS = 1000


@pytest.fixture
def upstreams() -> Iterator[Callable[..., FakeUpstream]]:
    """Factory: a started fake upstream (``flavor``, ``FakeConfig`` knobs)."""
    started: list[FakeUpstream] = []

    def start(flavor: str, **knobs: object) -> FakeUpstream:
        fake = FakeUpstream(flavor, FakeConfig(**knobs)).start()  # type: ignore[arg-type]
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def secret_env() -> Iterator[None]:
    """The xAI key, as an operator puts it in the environment (never in the file)."""
    os.environ[KEY_ENV] = SECRET
    yield
    os.environ.pop(KEY_ENV, None)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def models_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def gateway(
    start_server: Callable[..., Server], tmp_path: Path, text: str, **overrides: object
) -> Server:
    return start_server(models_file=models_file(tmp_path, text), **overrides)


def task_row(server: Server, task_id: str) -> Task:
    with server.db.read() as session:
        return session.execute(select(Task).where(Task.id == task_id)).scalar_one()


def ledger_kinds(server: Server, task_id: str) -> list[str]:
    with server.db.read() as session:
        return sorted(
            session.scalars(select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id))
        )


def balance(server: Server, key: str) -> int:
    return server.client.get("/v1/account", headers=auth(key)).json()["data"]["balance"]


def submit(server: Server, key: str, **body: object) -> str:
    response = server.generate(key, **body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def assert_faststart_h264(server: Server, url: str, tmp_path: Path) -> dict:
    assert url.startswith(server.base_url + "/files/"), url  # ours, signed: not the upstream's
    video = server.client.get(url)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = tmp_path / f"{abs(hash(url))}.mp4"
    path.write_bytes(video.content)
    info = probe_mp4(path)
    assert (info["codec"], info["pix_fmt"], info["faststart"]) == ("h264", "yuv420p", True)
    return info


THREE_MODELS = """
default = "local"

[models.grok]
engine = "xai"
base_url = "{xai}"
api_key_env = "{key_env}"
upstream_model = "grok-imagine-video"
resolution = "480p"
price = 60

[models.wan]
engine = "openai-videos"
base_url = "{openai}"
upstream_model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
variations = 1
price = 25

[models.local]
engine = "preview"
"""


def test_three_models_each_complete_with_faststart_h264_from_our_own_urls(
    start_server: Callable[..., Server],
    upstreams: Callable[..., FakeUpstream],
    secret_env: None,
    tmp_path: Path,
) -> None:
    xai = upstreams("xai", api_key=SECRET, job_seconds=0.3)
    # The upstream's video is mpeg4: openimagine transcodes it to H.264.
    openai = upstreams("openai", job_seconds=0.3, video_codec="mpeg4")
    server = gateway(
        start_server,
        tmp_path,
        THREE_MODELS.format(xai=xai.base_url, openai=openai.base_url, key_env=KEY_ENV),
    )
    key = server.account(credits=CREDITS)

    ids = {
        name: submit(server, key, model=name, ratio="16:9", mode="fun") for name in ("grok", "wan")
    }
    ids["local"] = submit(server, key, ratio="16:9")  # no model: the default
    for name, task_id in ids.items():
        data = server.wait(key, task_id)
        assert data["status"] == "completed", (name, data)
        expected = {"grok": 2, "wan": 1, "local": 2}[name]
        assert len(data["response"]) == expected
        for url in data["response"]:
            info = assert_faststart_h264(server, url, tmp_path)
            assert abs(info["width"] / info["height"] - 16 / 9) < 0.02 * 16 / 9
        assert task_row(server, task_id).model == name
    assert balance(server, key) == CREDITS - 60 - 25 - 40  # each model's own price

    # What went upstream: one job per variation, the key only to xAI, the mode as text.
    assert xai.stats()["jobs"] == 2 and openai.stats()["jobs"] == 1
    assert set(xai.stats()["auth"]) == {f"Bearer {SECRET}"}
    sent = xai.stats()["requests"][0]
    assert sent["model"] == "grok-imagine-video" and sent["aspect_ratio"] == "16:9"
    assert sent["resolution"] == "480p" and sent["duration"] == 1
    assert sent["prompt"].startswith("a beautiful landscape") and "Playful" in sent["prompt"]
    form = openai.stats()["requests"][0]
    width, height = (int(side) for side in form["size"].split("x"))
    assert width % 16 == 0 and height % 16 == 0 and width > height
    assert openai.stats()["auth"] == [None]  # no api_key_env: no Authorization header


def test_models_are_listed_in_openai_shape_and_an_unknown_model_is_refused(
    start_server: Callable[..., Server],
    upstreams: Callable[..., FakeUpstream],
    secret_env: None,
    tmp_path: Path,
) -> None:
    xai, openai = upstreams("xai"), upstreams("openai")
    server = gateway(
        start_server,
        tmp_path,
        THREE_MODELS.format(xai=xai.base_url, openai=openai.base_url, key_env=KEY_ENV),
        run_workers=False,
    )
    key = server.account(credits=CREDITS)

    listing = server.client.get("/v1/models", headers=auth(key))
    assert listing.status_code == 200
    body = listing.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["grok", "wan", "local"]
    for entry in body["data"]:
        assert entry["object"] == "model" and entry["owned_by"] == "openimagine"
        assert isinstance(entry["created"], int)
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["local"]["default"] and not by_id["grok"]["default"]
    assert (by_id["grok"]["price"], by_id["wan"]["variations"]) == (60, 1)
    assert SECRET not in listing.text and "127.0.0.1" not in listing.text
    assert server.client.get("/v1/models").status_code == 401

    refused = server.generate(key, model="sora")
    assert refused.status_code == 400
    assert refused.json() == {
        "code": 400,
        "error": "INVALID_REQUEST",
        "message": "Invalid request: Unknown model 'sora': use one of grok, wan, local",
    }
    assert balance(server, key) == CREDITS  # nothing debited


def test_the_official_openai_sdk_lists_the_models(
    start_server: Callable[..., Server],
    upstreams: Callable[..., FakeUpstream],
    secret_env: None,
    tmp_path: Path,
) -> None:
    import openai as openai_sdk

    xai, openai = upstreams("xai"), upstreams("openai")
    server = gateway(
        start_server,
        tmp_path,
        THREE_MODELS.format(xai=xai.base_url, openai=openai.base_url, key_env=KEY_ENV),
        run_workers=False,
    )
    client = openai_sdk.OpenAI(
        base_url=server.base_url + "/v1", api_key=server.account(credits=CREDITS)
    )
    assert [model.id for model in client.models.list()] == ["grok", "wan", "local"]


# -- failures: every one ends failed with the contract's message and a full refund --

INAPPROPRIATE = "Inappropriate content, please try another prompt."
NETWORK = "Network error, please try again later."
BUILD = "video build failed"

RELAY = """
[models.relay]
engine = "{engine}"
base_url = "{url}"
upstream_model = "m"
resolution = "480p"
variations = 1
timeout = {timeout}
"""


@pytest.mark.parametrize(
    ("flavor", "knobs", "prompt", "message", "detail"),
    [
        ("xai", {}, "a forbidden scene", INAPPROPRIATE, "respect_moderation"),
        ("openai", {}, "a forbidden scene", INAPPROPRIATE, "content_policy_violation"),
        ("xai", {"outcome": "failed"}, "a cat", BUILD, "upstream render crashed"),
        ("xai", {"outcome": "expired"}, "a cat", BUILD, "expired"),
        (
            "openai",
            {"outcome": "failed", "failed_http_status": 500},
            "a cat",
            BUILD,
            "internal_error",
        ),
        ("openai", {"outcome": "not_video"}, "a cat", BUILD, "not a video"),
        ("xai", {"outcome": "not_video"}, "a cat", BUILD, "not a video"),
        ("openai", {"create_status": 400}, "a cat", BUILD, "HTTP 400"),
        ("xai", {"create_status": 401}, "a cat", BUILD, "HTTP 401"),
        ("openai", {"create_status": 500}, "a cat", NETWORK, "HTTP 500"),
        ("xai", {"poll_delay": 5.0}, "a cat", NETWORK, "timed out"),
    ],
    ids=[
        "xai-moderated",
        "openai-moderated",
        "xai-failed",
        "xai-expired",
        "openai-500-failed",
        "openai-not-video",
        "xai-not-video",
        "openai-400",
        "xai-401",
        "openai-500s",
        "slow",
    ],
)
def test_an_upstream_failure_fails_the_task_with_the_contract_message_and_refunds_it(
    start_server: Callable[..., Server],
    upstreams: Callable[..., FakeUpstream],
    tmp_path: Path,
    flavor: str,
    knobs: dict,
    prompt: str,
    message: str,
    detail: str,
) -> None:
    fake = upstreams(flavor, job_seconds=0.2, **knobs)
    engine = "xai" if flavor == "xai" else "openai-videos"
    # The slow server answers no poll within the model's 3 s budget (no request
    # waits past it); 500s are retried until that budget is spent.
    timeout = 3 if "poll_delay" in knobs or knobs.get("create_status") == 500 else 30
    server = gateway(
        start_server, tmp_path, RELAY.format(engine=engine, url=fake.base_url, timeout=timeout)
    )
    key = server.account(credits=CREDITS)
    task_id = submit(server, key, prompt=prompt)
    data = server.wait(key, task_id, timeout=30)
    assert data["status"] == "failed"
    assert data["error_message"] == message
    assert data["consumed_credits"] == 0
    assert balance(server, key) == CREDITS
    assert ledger_kinds(server, task_id) == ["debit", "refund"]
    row = task_row(server, task_id)
    assert detail in (row.error_detail or ""), row.error_detail  # the operator's detail
    status_text = server.client.get(
        "/v1/status", params={"task_id": task_id}, headers=auth(key)
    ).text
    assert detail not in status_text  # never the client's


def test_a_503_then_success_is_retried_honouring_retry_after(
    start_server: Callable[..., Server], upstreams: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    fake = upstreams("xai", job_seconds=0.2, create_failures=2)
    server = gateway(
        start_server, tmp_path, RELAY.format(engine="xai", url=fake.base_url, timeout=30)
    )
    key = server.account(credits=CREDITS)
    started = time.monotonic()
    data = server.wait(key, submit(server, key), timeout=30)
    assert data["status"] == "completed", data
    assert time.monotonic() - started >= 2.0  # two Retry-After: 1 honoured
    assert fake.stats()["creates"] == 3 and fake.stats()["jobs"] == 1  # one job paid for


def test_a_closed_port_is_a_network_error_after_the_timeout(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = gateway(
        start_server,
        tmp_path,
        RELAY.format(engine="openai-videos", url=closed_port_url(), timeout=2),
    )
    key = server.account(credits=CREDITS)
    data = server.wait(key, submit(server, key), timeout=30)
    assert (data["status"], data["error_message"]) == ("failed", NETWORK)
    assert balance(server, key) == CREDITS


def test_twelve_relayed_tasks_run_side_by_side_in_one_worker(
    start_server: Callable[..., Server], upstreams: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    fake = upstreams("openai", job_seconds=3.0)
    server = gateway(
        start_server,
        tmp_path,
        RELAY.format(engine="openai-videos", url=fake.base_url, timeout=60) + "concurrency = 16\n",
    )
    key = server.account(credits=CREDITS)
    started = time.monotonic()
    ids = [submit(server, key, prompt=f"clip {n}") for n in range(12)]
    for task_id in ids:
        assert server.wait(key, task_id, timeout=60)["status"] == "completed"
    elapsed = time.monotonic() - started
    assert elapsed < 12.0, f"12 × 3 s took {elapsed:.1f} s: not side by side"  # 36 s in a row
    assert fake.stats()["jobs"] == 12


def test_a_relay_does_not_wait_behind_a_busy_local_model(
    start_server: Callable[..., Server], upstreams: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    fake = upstreams("xai", job_seconds=0.2)
    server = gateway(
        start_server,
        tmp_path,
        RELAY.format(engine="xai", url=fake.base_url, timeout=30)
        + """
[models.slow]
engine = "test-sleep"
test_sleep_seconds = 30
""",
    )
    key = server.account(credits=CREDITS)
    slow = submit(server, key, model="slow")
    server.wait(key, slow, until=("processing",))
    relayed = server.wait(key, submit(server, key, model="relay"), timeout=20)
    assert relayed["status"] == "completed"
    assert (
        server.client.get("/v1/status", params={"task_id": slow}, headers=auth(key)).json()["data"][
            "status"
        ]
        == "processing"
    )


# -- several upstreams per model, and fallbacks --------------------------------


def test_jobs_skip_a_dead_upstream_and_spread_over_the_live_ones(
    start_server: Callable[..., Server], upstreams: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    first, second = upstreams("openai", job_seconds=1.0), upstreams("openai", job_seconds=1.0)
    server = gateway(
        start_server,
        tmp_path,
        f"""
[models.farm]
engine = "openai-videos"
base_urls = ["{closed_port_url()}", "{first.base_url}", "{second.base_url}"]
upstream_model = "m"
variations = 1
""",
    )
    key = server.account(credits=CREDITS)
    ids = [submit(server, key, prompt=f"clip {n}") for n in range(6)]
    for task_id in ids:
        assert server.wait(key, task_id, timeout=60)["status"] == "completed"
    assert first.stats()["jobs"] + second.stats()["jobs"] == 6
    # Fewest in flight first: neither live upstream got them all.
    assert first.stats()["jobs"] >= 1 and second.stats()["jobs"] >= 1


def test_a_model_whose_upstreams_are_down_falls_back_and_keeps_its_price(
    start_server: Callable[..., Server],
    upstreams: Callable[..., FakeUpstream],
    secret_env: None,
    tmp_path: Path,
) -> None:
    backup = upstreams("xai", job_seconds=0.2, api_key=SECRET)
    server = gateway(
        start_server,
        tmp_path,
        f"""
[models.primary]
engine = "openai-videos"
base_urls = ["{closed_port_url()}", "{closed_port_url()}"]
upstream_model = "m"
fallbacks = ["backup"]
price = 30
variations = 1

[models.backup]
engine = "xai"
base_url = "{backup.base_url}"
api_key_env = "{KEY_ENV}"
upstream_model = "grok-imagine-video"
resolution = "480p"
price = 90
""",
    )
    key = server.account(credits=CREDITS)
    task_id = submit(server, key, model="primary")
    assert server.wait(key, task_id)["status"] == "completed"
    row = task_row(server, task_id)
    assert (row.model, row.rendered_by, row.price) == ("primary", "backup", 30)
    assert row.upstream["model"] == "backup"
    assert balance(server, key) == CREDITS - 30
    assert backup.stats()["jobs"] == 1  # the primary's variations, on the backup


# -- the models file -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[models.a]\nengine = "preview"\npric = 3\n', "models.a: unknown key(s) pric"),
        ('[models.a]\nengine = "dalle"\n', "models.a: engine 'dalle' is not one of"),
        ('default = "b"\n[models.a]\nengine = "preview"\n', "default 'b' names no model"),
        (
            '[models.a]\nengine = "xai"\nbase_url = "http://x/v1"\nupstream_model = "m"\n'
            'api_key_env = "OPENIMAGINE_TEST_UNSET_KEY"\n',
            "api_key_env names OPENIMAGINE_TEST_UNSET_KEY, which is not set",
        ),
        (
            '[models.a]\nengine = "openai-videos"\nbase_url = "http://x/v1"\n'
            'upstream_model = "m"\nfallbacks = ["b"]\n[models.b]\nengine = "preview"\n',
            "fallback 'b' must be a relay model",
        ),
        ('[models.a]\nengine = "preview"\nprice = -1\n', "models.a: price"),
        ('[models.a]\nengine = "xai"\nupstream_model = "m"\n', "a relay needs base_url"),
        (
            '[models.a]\nengine = "xai"\nbase_url = "http://x/v1"\nupstream_model = "m"\n'
            "resolution = 1080\n",
            "resolution must be 480p or 720p",
        ),
        (
            '[models.a]\nengine = "preview"\nbase_url = "http://x/v1"\n',
            "base_url only apply to relay engines",
        ),
        ("[models\n", "not valid TOML"),
        ("", "no [models.NAME] table"),
    ],
)
def test_a_bad_models_file_is_refused_with_one_line(tmp_path: Path, text: str, says: str) -> None:
    settings = make_settings(tmp_path, models_file=models_file(tmp_path, text))
    with pytest.raises(CatalogError) as caught:
        load_catalog(settings)
    message = str(caught.value)
    assert says in message and "\n" not in message
    assert message.startswith(f"models file {settings.models_file}: ")


def test_serve_with_a_bad_models_file_exits_1_with_one_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    path = models_file(tmp_path, '[models.a]\nengine = "dalle"\n')
    env = openimagine_env(tmp_path / "data", models_file=path, port=free_port())
    for command in (["serve"], ["worker"], ["models", "list"]):
        result = run_cli(env, *command, check=False)
        assert result.returncode == 1, command
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == [
            f"error: models file {path}: models.a: engine 'dalle' is not one of "
            "cogvideox, ltx, openai-videos, preview, test-crash, test-fail, "
            "test-sleep, wan, xai"
        ], command


def test_without_a_models_file_the_one_model_is_named_after_the_engine(tmp_path: Path) -> None:
    catalog = load_catalog(make_settings(tmp_path, engine="test-sleep", price=7, workers=3))
    assert catalog.names == ["test-sleep"] and catalog.default == "test-sleep"
    model = catalog.get("test-sleep")
    assert (model.engine, model.price, model.concurrency) == ("test-sleep", 7, 3)


def test_models_list_shows_each_model_and_never_the_key(
    upstreams: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    xai = upstreams("xai")
    path = models_file(
        tmp_path, THREE_MODELS.format(xai=xai.base_url, openai=closed_port_url(), key_env=KEY_ENV)
    )
    env = openimagine_env(tmp_path / "data", models_file=path)
    env[KEY_ENV] = SECRET
    listed = json.loads(run_cli(env, "models", "list", "--json").stdout)
    by_name = {row["name"]: row for row in listed}
    assert list(by_name) == ["grok", "wan", "local"]
    assert by_name["grok"]["ready"] and by_name["local"]["ready"]
    assert by_name["grok"]["api_key_env"] == KEY_ENV and by_name["grok"]["price"] == 60
    assert not by_name["wan"]["ready"] and "unreachable" in by_name["wan"]["problems"][0]
    table = run_cli(env, "models", "list")
    for output in (json.dumps(listed), table.stdout, table.stderr):
        assert SECRET not in output


def test_an_upstream_key_never_reaches_logs_errors_or_status(
    start_server: Callable[..., Server],
    upstreams: Callable[..., FakeUpstream],
    secret_env: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The upstream refuses the key (401) and echoes it back in its error body.
    fake = upstreams("xai", api_key="another-key")
    server = gateway(
        start_server,
        tmp_path,
        f"""
[models.grok]
engine = "xai"
base_url = "{fake.base_url}"
api_key_env = "{KEY_ENV}"
upstream_model = "grok-imagine-video"
resolution = "480p"
""",
    )
    key = server.account(credits=CREDITS)
    with caplog.at_level("INFO"):
        task_id = submit(server, key)
        data = server.wait(key, task_id)
    assert (data["status"], data["error_message"]) == ("failed", BUILD)
    row = task_row(server, task_id)
    assert "HTTP 401" in (row.error_detail or "")
    # One loud line naming the model and the variable to check.
    assert any(
        f"model grok: the upstream refused its key (HTTP 401); check the variable "
        f"{KEY_ENV}" in record.getMessage()
        for record in caplog.records
    )
    everything = caplog.text + (row.error_detail or "") + json.dumps(data)
    assert SECRET not in everything


def test_a_relay_polls_saved_upstream_jobs_instead_of_creating_new_ones(
    start_server: Callable[..., Server], upstreams: Callable[..., FakeUpstream], tmp_path: Path
) -> None:
    """What a worker taking a task over relies on: ids on the row are polled, not re-paid."""
    fake = upstreams("openai", job_seconds=0.2)
    text = RELAY.format(engine="openai-videos", url=fake.base_url, timeout=30)
    server = gateway(start_server, tmp_path, text, run_workers=False)
    key = server.account(credits=CREDITS)
    task_id = submit(server, key)
    created = httpx.post(
        f"{fake.base_url}/videos",
        files={"prompt": (None, "earlier attempt"), "size": (None, "480x480")},
    ).json()
    with server.db.write() as session:
        session.get(Task, task_id).upstream = {
            "model": "relay",
            "jobs": [{"base_url": fake.base_url, "id": created["id"]}],
        }
    server.stop()
    restarted = gateway(start_server, tmp_path, text, data_dir=server.settings.data_dir)
    assert restarted.wait(key, task_id)["status"] == "completed"
    assert fake.stats()["jobs"] == 1  # only the one made before the "crash"


# -- crashes: no double spending upstream ----------------------------------------


@pytest.mark.parametrize("stop", ["kill", "stop"], ids=["SIGKILL", "SIGTERM"])
def test_a_server_stopped_mid_relay_resumes_the_same_upstream_jobs_after_restart(
    spawn_server: Callable,
    upstreams: Callable[..., FakeUpstream],
    tmp_path: Path,
    open_db: Callable[[Path], Database],
    stop: str,
) -> None:
    fake = upstreams("xai", job_seconds=4.0)
    path = models_file(
        tmp_path,
        RELAY.format(engine="xai", url=fake.base_url, timeout=60).replace(
            "variations = 1", "variations = 2"
        ),
    )
    data_dir = tmp_path / "data"

    def row_of(task_id: str) -> Task:
        with db.read() as session:
            return session.execute(select(Task).where(Task.id == task_id)).scalar_one()

    settings = {
        "models_file": path,
        "lease_seconds": 2,
        "heartbeat_seconds": 0.5,
        "poll_seconds": 0.05,
    }
    first = spawn_server(data_dir, **settings)
    db = open_db(data_dir)
    key = run_cli(first.env, "accounts", "create", "alice", "--credits", str(CREDITS), "--json")
    api_key = json.loads(key.stdout)["api_key"]
    client = httpx.Client(base_url=first.base_url, timeout=30)
    task_id = client.post(
        "/v1/generate", json={"prompt": "a lighthouse"}, headers=auth(api_key)
    ).json()["data"]["task_id"]
    deadline = time.monotonic() + 30
    while (row := row_of(task_id)).upstream is None or len(row.upstream["jobs"]) < 2:
        assert time.monotonic() < deadline, "the upstream jobs were never saved"
        time.sleep(0.05)
    client.close()
    saved = row.upstream["jobs"]
    getattr(first, stop)()  # mid-relay: both upstream jobs still running
    assert fake.stats()["in_flight"] == 2

    second = spawn_server(data_dir, **settings)
    client = httpx.Client(base_url=second.base_url, timeout=30)
    try:
        from conftest import wait_for_task

        data = wait_for_task(client, api_key, task_id, timeout=60)
        assert data["status"] == "completed", data
        assert len(data["response"]) == 2
    finally:
        client.close()
    assert fake.stats()["jobs"] == 2  # exactly one create per variation, ever
    row = row_of(task_id)
    assert row.upstream["jobs"] == saved  # polled, not replaced
    assert row.attempts == (2 if stop == "kill" else 1)  # SIGTERM gives the attempt back
