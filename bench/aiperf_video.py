"""NVIDIA AIPerf's video-generation benchmark against openimagine's /v1/videos, offline.

Starts ``openimagine serve`` (the preview engine, small clips) with an account,
writes a prompts file and a tiny word-level tokenizer (AIPerf loads one even
for a file of prompts, and a hub is not reachable here), then runs

    aiperf profile --endpoint-type video_generation --url BASE --model preview
        --api-key KEY --input-file prompts.jsonl --custom-dataset-type single_turn
        --tokenizer DIR --download-video-content --ui-type none ...

and prints AIPerf's own summary (completed requests, error rate, latency) from
``profile_export_aiperf.json``.

AIPerf is heavy and not a project dependency: install it in a venv of its own
(``python -m venv /tmp/aiperf && /tmp/aiperf/bin/pip install aiperf``) and pass
``--aiperf /tmp/aiperf/bin/aiperf``. Usage:
    python bench/aiperf_video.py --aiperf /tmp/aiperf/bin/aiperf [--requests 8] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from api_bench import bench_account, free_port, wait_ready

PROMPTS = [
    "a lighthouse in a storm",
    "a cat on the moon",
    "a paper boat on a river",
    "a city at night in the rain",
    "a fox running through snow",
]
# The tokenizer is only counted with; any small vocabulary does.
MAKE_TOKENIZER = """
import sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer.train_from_iterator(sys.argv[2:], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(sys.argv[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aiperf", default="aiperf", help="the aiperf command")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    aiperf_python = str(Path(args.aiperf).resolve().parent / "python")

    with tempfile.TemporaryDirectory(prefix="openimagine-aiperf-") as folder:
        root = Path(folder)
        prompts = root / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"text": text}) + "\n" for text in PROMPTS))
        subprocess.run(
            [aiperf_python, "-c", MAKE_TOKENIZER, str(root / "tokenizer"), *PROMPTS], check=True
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGINE_")}
        env.update(
            OPENIMAGINE_DATA_DIR=str(root / "data"),
            OPENIMAGINE_PORT=str(port),
            OPENIMAGINE_DURATION="2",
            OPENIMAGINE_RESOLUTION="240",
            OPENIMAGINE_WORKERS=str(args.concurrency),
            OPENIMAGINE_RATE_LIMITS="pro=100000",
        )
        cli = [sys.executable, "-m", "openimagine"]
        key = bench_account(env, "aiperf", plan="pro", credits=100_000)
        server = subprocess.Popen(
            [*cli, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/healthz", server)
            command = [
                args.aiperf,
                "profile",
                "--endpoint-type",
                "video_generation",
                "--url",
                base,
                "--model",
                "preview",
                "--api-key",
                key,
                "--input-file",
                str(prompts),
                "--custom-dataset-type",
                "single_turn",
                "--tokenizer",
                str(root / "tokenizer"),
                "--download-video-content",
                "--request-count",
                str(args.requests),
                "--concurrency",
                str(args.concurrency),
                "--ui-type",
                "none",
                "--artifact-dir",
                str(root / "artifacts"),
            ]
            print("$", " ".join(command).replace(key, "$KEY"), flush=True)
            subprocess.run(command, check=True, cwd=root)
        finally:
            server.terminate()
            server.wait(timeout=30)
        exported = next((root / "artifacts").rglob("profile_export_aiperf.json"))
        summary = json.loads(exported.read_text())
    print(
        json.dumps(
            {
                name: summary.get(name)
                for name in (
                    "request_count",
                    "completed_request_count",
                    "error_request_count",
                    "request_error_rate",
                    "request_latency",
                    "request_throughput",
                )
                if name in summary
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
