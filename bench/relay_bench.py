"""Relay benchmark: N relayed tasks against an upstream that takes S seconds a job,
run by ONE worker process, side by side vs one at a time, in one run.

Starts a fake OpenAI-videos upstream (``openimagine.testing.fake_upstreams``,
a real HTTP server on loopback) and ``openimagine serve`` with a models file of
two relay models on it: ``wide`` (concurrency N) and ``narrow`` (concurrency 1,
the one-at-a-time baseline). Submits N tasks to each, waits for all, and
prints the wall time of each and their ratio. Also prints what a task costs
the gateway beyond the upstream's own time (the wide run's time less S).

Usage: python bench/relay_bench.py [--tasks 12] [--job-seconds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from api_bench import bench_account, free_port, wait_ready

from openimagine.testing.fake_upstreams import FakeConfig, FakeUpstream

MODELS = """
[models.wide]
engine = "openai-videos"
base_url = "{url}"
upstream_model = "fake"
variations = 1
concurrency = {tasks}

[models.narrow]
engine = "openai-videos"
base_url = "{url}"
upstream_model = "fake"
variations = 1
concurrency = 1
"""


def run_batch(client: httpx.Client, key: str, model: str, tasks: int) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    ids = [
        client.post(
            "/v1/generate", headers=headers, json={"prompt": f"clip {n}", "model": model}
        ).json()["data"]["task_id"]
        for n in range(tasks)
    ]
    waiting = set(ids)
    while waiting:
        for task_id in list(waiting):
            data = client.get("/v1/status", params={"task_id": task_id}, headers=headers).json()[
                "data"
            ]
            if data["status"] == "failed":
                sys.exit(f"{model}: task {task_id} failed: {data['error_message']}")
            if data["status"] == "completed":
                waiting.discard(task_id)
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--job-seconds", type=float, default=3.0)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as folder,
        FakeUpstream("openai", FakeConfig(job_seconds=args.job_seconds)) as upstream,
    ):
        models = Path(folder) / "models.toml"
        models.write_text(MODELS.format(url=upstream.base_url, tasks=args.tasks))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGINE_")}
        env.update(
            OPENIMAGINE_DATA_DIR=f"{folder}/data",
            OPENIMAGINE_PORT=str(port),
            OPENIMAGINE_MODELS_FILE=str(models),
            OPENIMAGINE_RATE_LIMITS="pro=100000",
        )
        cli = [sys.executable, "-m", "openimagine"]
        key = bench_account(env, plan="pro", credits=100_000)
        server = subprocess.Popen(
            [*cli, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/healthz", server)
            with httpx.Client(base_url=base, timeout=30) as client:
                wide = run_batch(client, key, "wide", args.tasks)
                narrow = run_batch(client, key, "narrow", args.tasks)
        finally:
            server.terminate()
            server.wait(timeout=30)

    sequential = args.tasks * args.job_seconds
    print(f"{args.tasks} relayed tasks, upstream {args.job_seconds:g} s a job, one worker process")
    print(
        f"  one at a time (concurrency 1):    {narrow:6.2f} s   (upstream alone: {sequential:g} s)"
    )
    print(f"  side by side (concurrency {args.tasks}):  {wide:6.2f} s")
    print(f"  ratio side by side / one at a time: {wide / narrow:.3f}")
    print(
        f"  gateway time beyond the upstream's, side by side: "
        f"{wide - args.job_seconds:.2f} s for the whole batch"
    )


if __name__ == "__main__":
    main()
