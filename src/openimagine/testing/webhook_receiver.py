"""A webhook receiver on loopback: a real HTTP server that records every delivery and
answers as told (500 twice, then 200; 410; 503 with ``Retry-After`` ...).

For tests of webhook delivery, and for trying a deployment's webhooks by hand::

    python -m openimagine.testing.webhook_receiver --port 9000 --secret whsec_...

prints each delivery, and whether its Standard Webhooks signature verifies
with the secret. Set ``OPENIMAGINE_ALLOW_PRIVATE_URLS=true`` on the server so
that it may deliver to loopback.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# An answer: a status, or a status and headers to send with it.
Answer = int | tuple[int, dict[str, str]]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.time()
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> Any:
        """The parsed payload, if the signature verifies with ``secret``; else
        ``WebhookVerificationError``."""
        return Webhook(secret).verify(self.body, self.headers)


class _Server(ThreadingHTTPServer):
    # A receiver that comes back up takes its port again at once.
    allow_reuse_address = True
    daemon_threads = True


class WebhookReceiver:
    """Answers the first requests with ``answers`` in turn, later ones with ``then``."""

    def __init__(
        self,
        *,
        port: int = 0,
        answers: Iterable[Answer] = (),
        then: Answer = 200,
        delay: float = 0.0,
    ) -> None:
        self.port = port
        self.answers = list(answers)
        self.then = then
        # Seconds to wait before answering (a slow receiver).
        self.delay = delay
        self.received: list[Received] = []
        self._lock = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if receiver.delay:
                    time.sleep(receiver.delay)
                status, headers = receiver._next_answer()
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.time(),
                            status,
                        )
                    )
                    receiver._lock.notify_all()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _next_answer(self) -> tuple[int, dict[str, str]]:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else self.then
        return (answer, {}) if isinstance(answer, int) else answer

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The first ``count`` deliveries, once they have arrived."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.received)} of {count} webhook deliveries "
                        f"arrived within {timeout}s"
                    )
                self._lock.wait(left)
            return list(self.received[:count])


def main() -> None:  # pragma: no cover - a tool for people
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="whsec_... to verify signatures with")
    args = parser.parse_args()
    receiver = WebhookReceiver(port=args.port).start()
    print(f"listening on {receiver.url}", flush=True)
    seen = 0
    try:
        while True:
            try:
                arrived = receiver.wait_for(seen + 1, timeout=60)[seen:]
            except AssertionError:
                continue  # nothing yet
            for item in arrived:
                verdict = ""
                if args.secret:
                    try:
                        item.verify(args.secret)
                        verdict = " (signature verifies)"
                    except WebhookVerificationError as exc:
                        verdict = f" (signature does NOT verify: {exc})"
                print(
                    f"{item.headers.get('webhook-id')}{verdict}: {item.body.decode()}", flush=True
                )
                seen += 1
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
