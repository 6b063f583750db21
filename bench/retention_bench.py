"""Retention benchmark: disk use under a steady load, with and without
``OPENIMAGINE_RETENTION_DAYS``, side by side in one run.

Two ``openimagine serve`` processes (preview engine, one embedded worker each,
SQLite and a storage folder in a data folder of their own) get the same load: a
task every ``1/--rate`` seconds, each with a stored input image (a data URI)
and two videos. One keeps files for ``--retention`` seconds (expressed in
days), the other forever. Every ``--every`` seconds it prints, for each: tasks
completed so far, task folders on disk, the size of the stored files and of the
whole data folder (the SQLite database, whose rows stay, included).

Expected: with retention the stored files level off at about rate x
(retention + a janitor round) x one task's files and stay flat; without it
they grow with every task. The database grows on both sides (the records stay).

Usage: python bench/retention_bench.py [--seconds 90] [--rate 1] [--retention 10]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import bench_account, free_port, start_process, wait_ready  # noqa: E402

CLI = [sys.executable, "-m", "openimagine"]
# Small clips, so that two servers keep up on a shared two-core machine.
CLIP = {
    "OPENIMAGINE_DURATION": "2",
    "OPENIMAGINE_FPS": "12",
    "OPENIMAGINE_RESOLUTION": "256",
    "OPENIMAGINE_WORKERS": "1",
}


def noise_png() -> str:
    """A 160x160 PNG of noise (about 75 KB: it does not compress), as a data URI."""
    image = Image.frombytes("RGB", (160, 160), os.urandom(160 * 160 * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def disk_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # deleted meanwhile
            continue
    return total


def task_folders(files: Path) -> int:
    return sum(
        1
        for part in ("inputs", "outputs")
        if (files / part).is_dir()
        for _ in (files / part).iterdir()
    )


class Side:
    """One server with its own data folder, account and client."""

    def __init__(self, name: str, root: Path, stack: ExitStack, **settings: str) -> None:
        self.name = name
        self.data = root / name
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGINE_")}
        self.env.update(CLIP, OPENIMAGINE_DATA_DIR=str(self.data), **settings)
        headers = {"Authorization": f"Bearer {bench_account(self.env)}"}
        port = free_port()
        process = start_process(stack, [*CLI, "serve", "--port", str(port)], self.env)
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/healthz", process)
        self.client = stack.enter_context(httpx.Client(base_url=url, headers=headers, timeout=30))
        self.submitted: list[str] = []

    def submit(self, image: str) -> None:
        answer = self.client.post(
            "/v1/generate", json={"prompt": "a lighthouse in a storm", "images": [image]}
        )
        answer.raise_for_status()
        self.submitted.append(answer.json()["data"]["task_id"])

    def completed(self) -> int:
        usage = self.client.get("/v1/account").json()["data"]["usage"]["tasks"]
        return int(usage["completed"])

    def status(self, task_id: str) -> dict:
        return self.client.get("/v1/status", params={"task_id": task_id}).json()["data"]

    def sample(self) -> tuple[int, int, float, float]:
        files = self.data / "files"
        return (
            self.completed(),
            task_folders(files),
            disk_bytes(files) / 1e6,
            disk_bytes(self.data) / 1e6,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="how long tasks are sent")
    parser.add_argument("--rate", type=float, default=1.0, help="tasks per second, each side")
    parser.add_argument(
        "--retention",
        type=float,
        default=10.0,
        help="seconds finished tasks keep their files (as days on the server)",
    )
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    days = args.retention / 86400

    with tempfile.TemporaryDirectory(prefix="oi-retention-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        sides = [
            Side("kept", root, stack),
            Side("retention", root, stack, OPENIMAGINE_RETENTION_DAYS=f"{days:.10f}"),
        ]
        print(
            f"retention {args.retention:g} s (OPENIMAGINE_RETENTION_DAYS={days:.10f}), "
            f"{args.rate:g} task/s on each side for {args.seconds:g} s; each task: one "
            f"stored PNG input (~75 KB) and two {CLIP['OPENIMAGINE_DURATION']} s videos"
        )
        header = (
            f"{'t (s)':>6} | {'side':<9} {'sent':>5} {'done':>5} {'folders':>8} "
            f"{'files MB':>9} {'data MB':>8}"
        )
        print(header)
        print("-" * len(header))
        started = time.monotonic()
        next_sample = started
        sent = 0
        rows: dict[str, list[float]] = {side.name: [] for side in sides}
        while (now := time.monotonic()) - started < args.seconds:
            if now >= next_sample:
                for side in sides:
                    done, folders, files_mb, data_mb = side.sample()
                    rows[side.name].append(files_mb)
                    print(
                        f"{now - started:6.0f} | {side.name:<9} {len(side.submitted):5d} "
                        f"{done:5d} {folders:8d} {files_mb:9.2f} {data_mb:8.2f}",
                        flush=True,
                    )
                next_sample += args.every
            due = started + sent / args.rate
            if now >= due:
                image = noise_png()
                for side in sides:
                    side.submit(image)
                sent += 1
            time.sleep(max(0.01, min(due, next_sample) - time.monotonic()))
        # Once the last tasks have had time to finish and expire:
        time.sleep(min(5.0, args.retention))
        for side in sides:
            done, folders, files_mb, data_mb = side.sample()
            print(
                f"{time.monotonic() - started:6.0f} | {side.name:<9} {len(side.submitted):5d} "
                f"{done:5d} {folders:8d} {files_mb:9.2f} {data_mb:8.2f}  (end)"
            )
        kept, expiring = sides
        first = expiring.status(expiring.submitted[0])
        print(
            f"\nfirst task, retention side: status {first['status']}, "
            f"files_expired={first.get('files_expired', False)}, response={first['response']}"
        )
        # Under load, once a retention and a janitor round have passed:
        steady = int((args.retention + 2) / args.every) + 1
        late = rows["retention"][steady:]
        if late:
            print(
                f"stored files under load after {steady * args.every:g} s: with retention "
                f"{min(late):.2f}-{max(late):.2f} MB; kept forever "
                f"{rows['kept'][steady]:.2f} -> {rows['kept'][-1]:.2f} MB"
            )


if __name__ == "__main__":
    main()
