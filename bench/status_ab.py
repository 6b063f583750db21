"""Status polls on two source trees side by side: requests/s and the server's CPU
per request, for GET /v1/status and GET /v1/videos/{id} of a completed task.

For a change on the hot path (request accounting, the fast path): export the
trees (``git archive REV | tar -x -C DIR``), or patch one, and compare. Each side
is ``openimagine serve`` on its own SQLite database, run with ``PYTHONPATH=SRC``;
wrk (1 thread, 32 connections) alternates between them for ``--rounds`` rounds.
CPU per request (the server process's user + system time over the requests it
answered) moves less with a busy machine's noise than requests/s does.

Usage: python bench/status_ab.py BEFORE/src AFTER/src [--rounds 5] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_bench as ab  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    root = Path(tempfile.mkdtemp(prefix="openimagine-ab-"))
    targets: dict[str, tuple[str, dict[str, str], int]] = {}
    try:
        with ExitStack() as stack:
            for name, src in (("before", args.before), ("after", args.after)):
                side = ab.Deployment(name, root, stack, PYTHONPATH=str(Path(src).resolve()))
                port = ab.free_port()
                log = (root / f"{name}.log").open("w")  # the access lines go somewhere real
                process = subprocess.Popen(
                    [*ab.CLI, "serve", "--port", str(port)],
                    env=side.env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
                stack.callback(lambda p=process: (p.terminate(), p.wait(timeout=30)))
                side.url = f"http://127.0.0.1:{port}"
                ab.wait_ready(f"{side.url}/healthz", process)
                status_url = side.completed_task()
                videos_url = status_url.replace("/v1/status?task_id=", "/v1/videos/")
                targets[f"{name} status"] = (status_url, side.keys["bench"], process.pid)
                targets[f"{name} videos"] = (videos_url, side.keys["bench"], process.pid)
            for url, headers, _ in targets.values():
                ab.wrk(url, 2, headers)  # warm up
            runs: dict[str, list[dict]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, headers, pid) in targets.items():
                    used = cpu_seconds(pid)
                    result = ab.wrk(url, args.seconds, headers)
                    result["cpu_us"] = (
                        (cpu_seconds(pid) - used) / (result["rps"] * args.seconds) * 1e6
                    )
                    runs[name].append(result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"wrk: {ab.THREADS} thread, {ab.CONNECTIONS} connections, {args.seconds:g} s per run, "
        f"{args.rounds} alternating rounds"
    )
    print(
        f"{'':16} {'best req/s':>10} {'median':>8} {'p99 ms':>7} {'CPU us/req':>10}  "
        "req/s per round"
    )
    for name, results in runs.items():
        best = max(results, key=lambda r: r["rps"])
        middle = len(results) // 2
        print(
            f"{name:16} {best['rps']:10.0f} {sorted(r['rps'] for r in results)[middle]:8.0f} "
            f"{best['p99_ms']:7.2f} {sorted(r['cpu_us'] for r in results)[middle]:10.1f}  "
            + " ".join(f"{r['rps']:.0f}" for r in results)
        )
    for kind in ("status", "videos"):
        before, after = runs[f"before {kind}"], runs[f"after {kind}"]
        middle = len(before) // 2
        print(
            f"after / before, {kind}: best req/s "
            f"{max(r['rps'] for r in after) / max(r['rps'] for r in before):.3f}, median CPU "
            f"per request {sorted(r['cpu_us'] for r in after)[middle] / sorted(r['cpu_us'] for r in before)[middle]:.3f}"
        )


if __name__ == "__main__":
    main()
