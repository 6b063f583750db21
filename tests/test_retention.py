"""Retention (``OPENIMAGINE_RETENTION_DAYS``): the workers' janitor deletes the stored
inputs and outputs of tasks finished longer ago; the task's record stays, and both
faces say the files expired.

The clock is shortened two ways: a retention of a second or two (the embedded
pool's own janitor does the work), or ``now`` handed to ``expire_files`` with a
task's ``finished_at`` moved back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select, text, update

from openimagine.client import Client, OpenImagineError
from openimagine.services import retention, tasks
from openimagine.settings import Settings
from openimagine.storage import LocalStorage, S3Storage, Storage, storage_from_settings
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import Task, TaskStatus
from openimagine.timeutil import as_utc, utcnow
from openimagine.worker.dispatch import CeleryDispatcher, WakeupDispatcher
from openimagine.worker.queues import create_celery_app
from openimagine.worker.sweeper import Sweeper

from conftest import (
    Server,
    auth,
    make_principal,
    make_settings,
    openimagine_env,
    png_data_uri,
    run_cli,
    submit_task,
)
from scaleout import (  # noqa: F401 - pg_url: a fixture
    moto_server,
    pg_url,
    rabbitmq_vhost,
)

DAY = timedelta(days=1)
# An image URL the server refuses to fetch (a loopback address): no traffic leaves.
REFUSED_URL = "http://127.0.0.1:9/a.png"
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # the openai SDK's Sora notice


def completed_task(server: Server, key: str, **body: object) -> str:
    task_id = server.generate(key, **body).json()["data"]["task_id"]
    assert server.wait(key, task_id)["status"] == "completed"
    return task_id


def finished_ago(db: Database, task_id: str, ago: timedelta) -> None:
    with db.write() as session:
        session.execute(update(Task).where(Task.id == task_id).values(finished_at=utcnow() - ago))


def task_folders(root: Path, task_id: str) -> list[Path]:
    return [
        folder
        for folder in (root / "inputs" / task_id, root / "outputs" / task_id)
        if folder.exists()
    ]


def test_expired_files_are_deleted_and_the_status_keeps_the_record(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(retention_days=1)
    key = server.account(credits=1000)
    old = completed_task(server, key, images=[png_data_uri(32, 24)])
    young = completed_task(server, key, images=[png_data_uri(32, 24)])
    # Failed (a loopback URL is refused before any connection), with a stored input.
    failed = server.generate(key, images=[png_data_uri(32, 24), REFUSED_URL]).json()["data"][
        "task_id"
    ]
    assert server.wait(key, failed)["status"] == "failed"
    assert len(task_folders(server.settings.outputs_dir, failed)) == 1
    before = server.status(key, old)
    files = server.settings.outputs_dir
    assert len(task_folders(files, old)) == 2  # its stored input, its videos and stills
    urls = before["response"] + before["request"]["images"]
    assert all(server.client.get(url).status_code == 200 for url in urls)
    assert "files_expired" not in before

    finished_ago(server.db, old, DAY + timedelta(seconds=5))
    finished_ago(server.db, failed, DAY + timedelta(seconds=5))
    finished_ago(server.db, young, DAY - timedelta(minutes=5))
    retention.expire_files(server.db, storage_from_settings(server.settings), retention=DAY)

    assert task_folders(files, old) == []  # every file gone, and the task's folders
    after = server.status(key, old)
    assert after["files_expired"] is True and after["response"] == []
    assert "images" not in after["request"]  # its only image was a stored copy
    assert (after["status"], after["progress"], after["consumed_credits"]) == (
        "completed",
        100,
        before["consumed_credits"],
    )
    assert all(server.client.get(url).status_code == 404 for url in urls)
    # A failed task's stored inputs go too; an http(s) image is still listed as sent.
    assert task_folders(files, failed) == []
    failed_now = server.status(key, failed)
    assert failed_now["files_expired"] is True
    assert failed_now["request"]["images"] == [REFUSED_URL]
    # Not old enough: kept.
    assert len(task_folders(files, young)) == 2
    kept = server.status(key, young)
    assert "files_expired" not in kept and len(kept["response"]) == 2
    # The task list and the Python SDK say the same.
    listed = server.client.get("/v1/tasks", headers=auth(key)).json()["data"]["tasks"]
    assert {t["task_id"]: t.get("files_expired") for t in listed} == {
        old: True,
        young: None,
        failed: True,
    }
    with Client(api_key=key, base_url=server.base_url) as client:
        assert client.status(old).files_expired and not client.status(young).files_expired
        with pytest.raises(OpenImagineError, match="files expired") as gone:
            client.download(old, tmp_path / "videos")
        assert gone.value.code == "FILES_EXPIRED"
    env = openimagine_env(tmp_path / "cli", base_url=server.base_url, api_key=key)
    shown = run_cli(env, "status", old).stdout
    assert "files_expired: the server's retention deleted this task's files" in shown


def test_the_workers_janitor_deletes_files_once_the_retention_has_passed(
    start_server: Callable[..., Server],
) -> None:
    # 0.00002 days is 1.7 s: the embedded pool's janitor looks every second.
    server = start_server(retention_days=0.00002)
    key = server.account(credits=1000)
    task_id = completed_task(server, key, images=[png_data_uri(32, 24)])
    files = server.settings.outputs_dir
    assert task_folders(files, task_id)
    deadline = time.monotonic() + 20
    while "files_expired" not in (data := server.status(key, task_id)):
        assert time.monotonic() < deadline, "the janitor did not expire the task's files"
        time.sleep(0.1)
    assert data["response"] == [] and "images" not in data["request"]
    # The status says so once the janitor's claim commits; the deletions follow it.
    while task_folders(files, task_id):
        assert time.monotonic() < deadline, "the janitor claimed the task but left its files"
        time.sleep(0.05)
    with server.db.read() as session:
        row = session.execute(
            select(Task.finished_at, Task.files_expired_at).where(Task.id == task_id)
        ).one()
    waited = as_utc(row.files_expired_at) - as_utc(row.finished_at)
    assert timedelta(days=0.00002) <= waited < timedelta(seconds=10)


def test_without_a_retention_nothing_is_deleted(server: Server) -> None:
    key = server.account(credits=1000)
    task_id = completed_task(server, key)
    finished_ago(server.db, task_id, timedelta(days=3650))
    assert server.settings.retention is None
    janitor = retention.Janitor(server.db, storage_from_settings(server.settings), None)
    assert not janitor.enabled and janitor.run_if_due() == 0
    assert len(server.status(key, task_id)["response"]) == 2
    assert task_folders(server.settings.outputs_dir, task_id)
    video = server.client.get(f"/v1/videos/{task_id}", headers=auth(key)).json()
    assert video["expires_at"] is None


def test_the_openai_face_says_when_files_expire_and_refuses_expired_content(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(retention_days=1.5)
    key = server.account(credits=1000)
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key)
    video = client.videos.create_and_poll(prompt="a glacier", seconds="1", poll_interval_ms=50)
    assert video.completed_at is not None and video.expires_at is not None
    assert abs(video.expires_at - (video.completed_at + 36 * 3600)) <= 1
    assert client.videos.download_content(video.id).content[4:8] == b"ftyp"

    finished_ago(server.db, video.id, timedelta(days=2))
    retention.expire_files(
        server.db, storage_from_settings(server.settings), retention=timedelta(days=1.5)
    )
    expired = client.videos.retrieve(video.id)
    assert expired.status == "completed"  # the job itself is still there
    assert expired.expires_at is not None and expired.expires_at <= time.time()
    with pytest.raises(openai.NotFoundError, match="files expired"):
        client.videos.download_content(video.id)
    raw = server.client.get(
        f"/v1/videos/{video.id}/content", params={"variant": "thumbnail"}, headers=auth(key)
    )
    assert raw.status_code == 404
    error = raw.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")
    assert error["message"].startswith(f"Video {video.id}'s files expired at ")
    with pytest.raises(openai.BadRequestError, match="can no longer be remixed"):
        client.videos.remix(video.id, prompt="the glacier at night")


# -- the janitor alone, on a real SQLite file --------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, Database, LocalStorage]]:
    settings = make_settings(tmp_path, retention_days=1)
    db = Database(settings.resolved_database_url)
    migrate.upgrade(db)
    storage = storage_from_settings(settings)
    assert isinstance(storage, LocalStorage)
    yield settings, db, storage
    db.dispose()


def finished_tasks(
    db: Database, storage: Storage, count: int, *, ago: timedelta = 2 * DAY
) -> list[str]:
    """``count`` completed tasks with a video, its stills and a stored input each."""
    principal = make_principal(db, credits=40 * count)
    ids = []
    for n in range(count):
        task_id = submit_task(db, principal, f"task {n}")
        outputs = [f"outputs/{task_id}/0.mp4"]
        stored = f"inputs/{task_id}/0.png"
        for key in [*outputs, stored, *(tasks.still_key(task_id, v) for v in tasks.STILLS)]:
            storage.put_bytes(key, b"x" * 100)
        with db.write() as session:
            session.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(
                    status=TaskStatus.COMPLETED,
                    outputs=outputs,
                    images=[tasks.STORED_PREFIX + stored],
                    finished_at=utcnow() - ago + timedelta(seconds=n),
                )
            )
        ids.append(task_id)
    return ids


def expired_ids(db: Database) -> set[str]:
    with db.read() as session:
        return set(session.scalars(select(Task.id).where(Task.files_expired_at.is_not(None))))


def test_rounds_take_the_oldest_first_in_batches_up_to_their_limit(
    store: tuple[Settings, Database, LocalStorage],
) -> None:
    _, db, storage = store
    ids = finished_tasks(db, storage, 12)
    assert retention.expire_files(db, storage, retention=DAY, limit=5, batch=2) == 5
    assert expired_ids(db) == set(ids[:5])
    assert not any((storage.root / "outputs" / task_id).exists() for task_id in ids[:5])
    assert all((storage.root / "outputs" / task_id / "0.mp4").exists() for task_id in ids[5:])
    assert retention.expire_files(db, storage, retention=DAY, batch=4) == 7
    assert retention.expire_files(db, storage, retention=DAY) == 0
    assert not any(path.is_file() for path in storage.root.rglob("*"))


def test_several_janitors_at_once_delete_each_tasks_files_once(
    store: tuple[Settings, Database, LocalStorage],
) -> None:
    _, db, storage = store
    ids = finished_tasks(db, storage, 40)
    counts: list[int] = []
    barrier = threading.Barrier(4)

    def janitor() -> None:
        barrier.wait()
        counts.append(retention.expire_files(db, storage, retention=DAY, batch=3))

    threads = [threading.Thread(target=janitor) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 40 and expired_ids(db) == set(ids)
    assert not any(p.is_file() for p in storage.root.rglob("*"))


class BrokenStorage:
    """The real local storage whose deletions fail (an unreachable bucket)."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self.staging_dir = storage.staging_dir

    def put_file(self, key: str, source: Path) -> None:
        self.storage.put_file(key, source)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.storage.put_bytes(key, data)

    def read_bytes(self, key: str) -> bytes:
        return self.storage.read_bytes(key)

    def delete(self, key: str) -> None:
        raise OSError("storage unreachable")

    def url(self, key: str) -> str:
        return self.storage.url(key)


def test_a_failed_deletion_gives_the_tasks_back_for_a_later_round(
    store: tuple[Settings, Database, LocalStorage],
) -> None:
    _, db, storage = store
    ids = finished_tasks(db, storage, 3)
    with pytest.raises(OSError):
        retention.expire_files(db, BrokenStorage(storage), retention=DAY)
    assert expired_ids(db) == set()
    assert retention.expire_files(db, storage, retention=DAY) == 3
    assert expired_ids(db) == set(ids)


class DyingStorage(BrokenStorage):
    """Deletes ``lives`` files, then the process "dies" (SystemExit: no ``except
    Exception`` stops it, as nothing stops a SIGKILL)."""

    def __init__(self, storage: LocalStorage, lives: int) -> None:
        super().__init__(storage)
        self.lives = lives

    def delete(self, key: str) -> None:
        if self.lives == 0:
            raise SystemExit("killed")
        self.lives -= 1
        self.storage.delete(key)


def test_a_janitor_killed_mid_batch_leaves_no_file_behind(
    store: tuple[Settings, Database, LocalStorage],
) -> None:
    """Files go first and the mark after, so a janitor that dies mid-batch leaves its
    tasks unmarked (never marked expired with their files still there), and the
    next round deletes what is left."""
    _, db, storage = store
    ids = finished_tasks(db, storage, 3)
    with pytest.raises(SystemExit):
        retention.expire_files(db, DyingStorage(storage, lives=1), retention=DAY)
    expired = expired_ids(db)
    assert expired < set(ids)  # what is marked has no file left
    assert not any((storage.root / "outputs" / task_id).exists() for task_id in expired)
    assert retention.expire_files(db, storage, retention=DAY) == 3 - len(expired)
    assert expired_ids(db) == set(ids)
    assert not any(p.is_file() for p in storage.root.rglob("*"))


def test_unfinished_tasks_keep_their_files_and_the_janitor_uses_its_index(
    store: tuple[Settings, Database, LocalStorage],
) -> None:
    _, db, storage = store
    [done] = finished_tasks(db, storage, 1)
    waiting = submit_task(db, make_principal(db))
    storage.put_bytes(f"inputs/{waiting}/0.png", b"x")
    with db.write() as session:  # pending, with an old date: not the janitor's business
        session.execute(
            update(Task)
            .where(Task.id == waiting)
            .values(images=[f"stored:inputs/{waiting}/0.png"], created_at=utcnow() - 10 * DAY)
        )
    assert retention.expire_files(db, storage, retention=DAY) == 1
    assert expired_ids(db) == {done}
    assert (storage.root / "inputs" / waiting / "0.png").exists()
    with db.read() as session:
        plan = session.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE files_expired_at IS NULL "
                "AND finished_at < :cutoff "
                "ORDER BY finished_at LIMIT 100"
            ),
            {"cutoff": utcnow()},
        ).all()
    assert any("tasks_files_kept" in str(row) for row in plan), plan


def test_the_celery_workers_sweeper_runs_the_janitor(
    store: tuple[Settings, Database, LocalStorage],
) -> None:
    settings, db, storage = store
    ids = finished_tasks(db, storage, 2)
    sweeper = Sweeper(settings, db, WakeupDispatcher(), lambda model: 0, storage=storage)
    stop = threading.Event()
    stop.set()  # one round, then return
    sweeper.run(stop)
    assert expired_ids(db) == set(ids)
    assert Sweeper(settings, db, WakeupDispatcher(), lambda model: 0).janitor is None


def test_the_janitor_runs_at_most_every_interval() -> None:
    assert retention.janitor_interval(timedelta(seconds=2)) == 1.0
    assert retention.janitor_interval(timedelta(minutes=5)) == 30.0
    assert retention.janitor_interval(DAY) == 60.0


def test_expired_files_are_deleted_from_s3(tmp_path: Path) -> None:
    import boto3

    with pytest.MonkeyPatch.context() as patch, moto_server(tmp_path / "moto.log") as endpoint:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.delenv("AWS_PROFILE", raising=False)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="retention")
        settings = make_settings(
            tmp_path,
            retention_days=1,
            s3_bucket="retention",
            s3_endpoint_url=endpoint,
            s3_region="us-east-1",
            s3_prefix="r",
        )
        storage = storage_from_settings(settings)
        assert isinstance(storage, S3Storage)
        db = Database(settings.resolved_database_url)
        migrate.upgrade(db)
        try:
            old = finished_tasks(db, storage, 2)
            young = finished_tasks(db, storage, 1, ago=DAY / 2)
            assert retention.expire_files(db, storage, retention=DAY) == 2
            keys = [
                item["Key"] for item in s3.list_objects_v2(Bucket="retention").get("Contents", [])
            ]
            assert keys and all(young[0] in key for key in keys)
            assert not any(task_id in key for key in keys for task_id in old)
            assert httpx.get(storage.url(f"outputs/{old[0]}/0.mp4")).status_code == 404
        finally:
            db.dispose()


def test_several_janitors_at_once_on_postgres(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    settings = make_settings(tmp_path, database_url=pg_url, retention_days=1)
    db = Database(pg_url)
    migrate.upgrade(db)
    storage = storage_from_settings(settings)
    try:
        ids = finished_tasks(db, storage, 30)
        young = finished_tasks(db, storage, 2, ago=DAY / 2)
        with ThreadPoolExecutor(4) as pool:
            counts = list(
                pool.map(
                    lambda _: retention.expire_files(db, storage, retention=DAY, batch=2), range(4)
                )
            )
        assert sum(counts) == 30 and expired_ids(db) == set(ids)
        assert all((settings.outputs_dir / "outputs" / task_id).exists() for task_id in young)
        assert not any((settings.outputs_dir / "outputs" / task_id).exists() for task_id in ids)
    finally:
        db.dispose()


def test_migration_0009_keeps_the_usage_triggers_both_ways(tmp_path: Path) -> None:
    """A plain ADD COLUMN (and DROP COLUMN back): SQLite does not rebuild ``tasks``,
    so the triggers of 0005 that keep the accounts' task counts stay."""
    from alembic import command

    db = Database(f"sqlite:///{tmp_path / 'migrations.db'}")
    config = migrate.alembic_config(db.url.render_as_string(hide_password=False))

    def schema() -> tuple[set[str], set[str]]:
        with db.connect() as connection:
            names = set(
                connection.scalars(
                    text(
                        "SELECT name FROM sqlite_master WHERE tbl_name = 'tasks' AND type IN "
                        "('trigger', 'index') AND name NOT LIKE 'sqlite_%'"
                    )
                )
            )
            columns = {row[1] for row in connection.execute(text("PRAGMA table_info(tasks)"))}
        return names, columns

    try:
        migrate.upgrade(db)
        names, columns = schema()
        triggers = {name for name in names if name.startswith("tasks_count_")}
        assert triggers and "tasks_files_kept" in names and "files_expired_at" in columns
        command.downgrade(config, "0008")
        names, columns = schema()
        assert triggers <= names and "tasks_files_kept" not in names
        assert "files_expired_at" not in columns
        migrate.upgrade(db)
        assert schema()[0] == names | {"tasks_files_kept"}
    finally:
        db.dispose()


def test_a_celery_workers_sweeper_deletes_expired_files(tmp_path: Path, pg_url: str) -> None:  # noqa: F811 - the fixture
    """``openimagine worker`` on a broker: its sweeper thread runs the janitor."""
    with rabbitmq_vhost() as amqp_url:
        settings = {
            "database_url": pg_url,
            "broker_url": amqp_url,
            "storage_dir": tmp_path / "storage",
            "secret_key": "retention-0123456789",
            "duration": 0.5,
            "fps": 8,
            "resolution": 64,
            "lease_seconds": 5,
            "heartbeat_seconds": 0.5,
            "retention_days": 0.00002,
        }
        db = Database(pg_url)
        migrate.upgrade(db)
        log = tmp_path / "worker.log"
        worker = subprocess.Popen(
            [sys.executable, "-m", "openimagine", "worker"],
            env=openimagine_env(tmp_path / "worker", **settings),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # with its forked child
        try:
            task_id = submit_task(db, make_principal(db))
            conf = Settings(**settings)  # type: ignore[arg-type]
            storage = storage_from_settings(conf)
            CeleryDispatcher(create_celery_app(conf)).notify(task_id, "preview")
            deadline = time.monotonic() + 90
            while True:
                with db.read() as session:
                    row = session.execute(
                        select(Task.status, Task.outputs, Task.files_expired_at).where(
                            Task.id == task_id
                        )
                    ).one()
                if row.files_expired_at is not None:
                    break
                assert worker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert row.status == TaskStatus.COMPLETED and row.outputs
            assert isinstance(storage, LocalStorage)
            while task_folders(storage.root, task_id):  # deleted after the claim commits
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
            db.dispose()
