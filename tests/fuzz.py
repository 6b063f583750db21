"""``make fuzz``: schemathesis against a live server, every check enabled.

Starts ``openimagine serve`` (a subprocess, a temporary data folder, the preview
engine making tiny clips, limits raised so the fuzzer never runs into them),
creates an account and key with the CLI, runs ``schemathesis run`` on the
server's own /openapi.json with that key, then stops the server. It passes only
with no 5xx, no schema violation, no undocumented status code and no other
failed check, on every operation of both faces. ``fuzz_hooks.py`` turns the
generated upload files into real images (a schema cannot say "a PNG").

    FUZZ_EXAMPLES   examples per operation and phase (default 25; README has the long run)
    FUZZ_SEED       schemathesis' seed (default: random; printed in its output)
    FUZZ_ARGS       more arguments for ``schemathesis run``

Not a pytest module (no ``test_`` prefix): ``make fuzz`` runs it as a script.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
BIG = 1_000_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(data_dir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "OPENIMAGINE_DATA_DIR": str(data_dir),
        "OPENIMAGINE_PORT": str(port),
        "OPENIMAGINE_SECRET_KEY": "fuzz-secret-key-0123456789",
        # The fuzzer's hundreds of requests a minute, failed authentications
        # (schemathesis' ignored_auth check) and tasks must not meet a limit.
        "OPENIMAGINE_RATE_LIMITS": f"free={BIG},pro={BIG},enterprise={BIG}",
        "OPENIMAGINE_AUTH_FAILURE_LIMIT": str(BIG),
        "OPENIMAGINE_MAX_IN_FLIGHT": f"free={BIG},pro={BIG},enterprise={BIG}",
        # Tiny clips, so tasks complete and the completed paths get fuzzed too.
        "OPENIMAGINE_ENGINE": "preview",
        "OPENIMAGINE_WORKERS": "1",
        "OPENIMAGINE_VARIATIONS": "1",
        "OPENIMAGINE_DURATION": "0.5",
        "OPENIMAGINE_FPS": "4",
        "OPENIMAGINE_RESOLUTION": "64",
        "OPENIMAGINE_POLL_SECONDS": "0.1",
        # The document cannot say "not a private address" (README, "Fuzzing"): allow
        # them, so every URL the schema allows is accepted.
        "OPENIMAGINE_ALLOW_PRIVATE_URLS": "true",
        # Generated image and webhook URLs point nowhere: give up on them fast.
        "OPENIMAGINE_FETCH_TIMEOUT": "1",
        "OPENIMAGINE_WEBHOOK_TIMEOUT": "1",
    }


def create_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [
            str(BIN / "openimagine"),
            "accounts",
            "create",
            "fuzz",
            "--plan",
            "enterprise",
            "--credits",
            str(BIG),
            "--json",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["api_key"]


def wait_ready(base: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"fuzz: the server exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"fuzz: the server did not get ready within {seconds:.0f}s")


def schemathesis_command(base: str, key: str) -> list[str]:
    command = [
        str(BIN / "schemathesis"),
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {key}",
        "--max-examples",
        os.environ.get("FUZZ_EXAMPLES", "25"),
        "--request-timeout",
        "30",
        "--no-color",
    ]
    if os.environ.get("FUZZ_SEED"):
        command += ["--seed", os.environ["FUZZ_SEED"]]
    return command + shlex.split(os.environ.get("FUZZ_ARGS", ""))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="openimagine-fuzz-") as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        base = f"http://127.0.0.1:{port}"
        env = server_env(data_dir, port)
        key = create_key(env)
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [str(BIN / "openimagine"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                try:
                    wait_ready(base, server)
                except SystemExit:
                    print(log_path.read_text(errors="replace")[-5000:], file=sys.stderr)
                    raise
                command = schemathesis_command(base, key)
                print("fuzz:", shlex.join(command).replace(key, "oi_..."), flush=True)
                hooks = Path(__file__).with_name("fuzz_hooks.py")
                code = subprocess.call(
                    command, env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)}
                )
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
        text = log_path.read_text(errors="replace")
        if "Traceback" in text:  # a fault the answers did not show (a 500 is already failed)
            print(text[-20_000:], file=sys.stderr)
            print("fuzz: the server logged a traceback", file=sys.stderr)
            return code or 1
        return code


if __name__ == "__main__":
    sys.exit(main())
