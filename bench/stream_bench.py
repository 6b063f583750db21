"""Live status at scale: N open SSE streams on ONE API process, its memory, and how
fast every stream hears the end of its task.

Starts ``openimagine serve --no-worker`` (tasks stay pending, so streams stay
open), submits T tasks, opens N streams spread over them
(``GET /v1/status/stream``), reads the server's RSS before and with them open,
times a status poll meanwhile, then cancels every task and times until every
stream has received its final event and closed.

Usage: python bench/stream_bench.py [--streams 2000] [--tasks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from api_bench import bench_account, free_port, wait_ready


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def follow(
    client: httpx.AsyncClient,
    task_id: str,
    opened: asyncio.Event,
    counter: list[int],
    finals: list[float],
) -> None:
    async with client.stream("GET", "/v1/status/stream", params={"task_id": task_id}) as answer:
        if answer.status_code != 200:
            raise RuntimeError(f"stream refused: {answer.status_code}")
        counter[0] += 1
        if counter[0] == counter[1]:
            opened.set()
        async for line in answer.aiter_lines():
            if line.startswith("data:") and json.loads(line[5:])["status"] == "failed":
                finals.append(time.monotonic())


async def run(base: str, key: str, pid: int, streams: int, task_ids: list[str]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=httpx.Timeout(120, connect=60)
    ) as client:
        idle = rss_mib(pid)
        opened = asyncio.Event()
        counter = [0, streams]
        finals: list[float] = []
        started = time.monotonic()
        followers = [
            asyncio.create_task(
                follow(client, task_ids[n % len(task_ids)], opened, counter, finals)
            )
            for n in range(streams)
        ]
        await asyncio.wait_for(opened.wait(), 300)
        open_seconds = time.monotonic() - started
        await asyncio.sleep(3)  # let the server settle with every stream open
        loaded = rss_mib(pid)
        poll_started = time.monotonic()
        async with httpx.AsyncClient(base_url=base, headers=headers) as other:
            polled = await other.get("/v1/status", params={"task_id": task_ids[0]})
        poll_ms = (time.monotonic() - poll_started) * 1000
        assert polled.status_code == 200, polled.text
        cancel_started = time.monotonic()
        # A connection per cancel: a kept-alive one can be closed by the server's
        # keep-alive timer just as the next request goes out, while this busy
        # process reads 2,000 streams (seen as a rare ReadError).
        async with httpx.AsyncClient(
            base_url=base, headers={**headers, "Connection": "close"}, timeout=60
        ) as other:
            for task_id in task_ids:
                answer = await other.post("/v1/cancel", json={"task_id": task_id})
                assert answer.status_code == 200, answer.text
        cancelled = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*followers), 300)
        last = max(finals) - cancelled
    print(f"{streams} open streams over {len(task_ids)} tasks on one API process")
    print(f"  opened in                      {open_seconds:8.2f} s")
    print(f"  server RSS idle                {idle:8.1f} MiB")
    print(
        f"  server RSS with streams open   {loaded:8.1f} MiB "
        f"(+{(loaded - idle) * 1024 / streams:.1f} KiB a stream)"
    )
    print(f"  a status poll meanwhile        {poll_ms:8.1f} ms")
    print(f"  final events received          {len(finals):8d} of {streams}")
    print(f"  {len(task_ids)} cancels, one after another {cancelled - cancel_started:8.2f} s")
    print(f"  last cancel -> last final event {last:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 3 * args.streams + 100))  # both ends' sockets, and slack
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    with tempfile.TemporaryDirectory(prefix="openimagine-streams-") as folder:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGINE_")}
        env.update(
            OPENIMAGINE_DATA_DIR=f"{folder}/data",
            OPENIMAGINE_PORT=str(port),
            OPENIMAGINE_RATE_LIMITS="enterprise=100000000",
            OPENIMAGINE_MAX_IN_FLIGHT=f"enterprise={args.tasks + 10}",
        )
        cli = [sys.executable, "-m", "openimagine"]
        key = bench_account(env)
        log = Path(folder) / "server.log"
        server = subprocess.Popen(
            [*cli, "serve", "--no-worker"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/healthz", server)
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
                task_ids = [
                    c.post("/v1/generate", json={"prompt": f"clip {n}"}).json()["data"]["task_id"]
                    for n in range(args.tasks)
                ]
            asyncio.run(run(base, key, server.pid, args.streams, task_ids))
        except BaseException:
            print(f"the server said:\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
