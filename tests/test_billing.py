"""Credits: debited with the task, refunded exactly once when it fails, never
overdrawn however many requests race."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from openimagine.services import accounts
from openimagine.store.models import Account, LedgerEntry, Task

from conftest import Server, auth, free_port

INAPPROPRIATE = "Inappropriate content, please try another prompt."
NETWORK = "Network error, please try again later."
UNSUPPORTED = "File type not supported"
ENGINE_FAILED = "video build failed"


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (250, 180, 20)).save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(fmt: str, subtype: str | None = None) -> str:
    return (
        f"data:image/{subtype or fmt.lower()};base64," + base64.b64encode(image_bytes(fmt)).decode()
    )


def account_id(server: Server, name: str) -> int:
    with server.db.read() as session:
        return session.scalar(select(Account.id).where(Account.name == name))


def ledger(server: Server, name: str) -> list[LedgerEntry]:
    with server.db.read() as session:
        return list(
            session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.account_id == account_id(server, name))
                .order_by(LedgerEntry.id)
            )
        )


def assert_ledger_consistent(server: Server, name: str) -> None:
    """One debit per task, at most one refund, refunds only for failed tasks, and
    the balance is exactly grants - debits + refunds."""
    entries = ledger(server, name)
    balance = accounts.summary(server.db, name=name)["balance"]
    assert balance >= 0
    assert balance == sum(entry.amount for entry in entries)
    kinds = Counter((entry.task_id, entry.kind) for entry in entries if entry.task_id)
    assert all(count == 1 for count in kinds.values()), kinds
    with server.db.read() as session:
        tasks = {
            t.id: t
            for t in session.scalars(
                select(Task).where(Task.account_id == account_id(server, name))
            )
        }
    for task_id, task in tasks.items():
        assert kinds[(task_id, "debit")] == 1, task_id
        debit = next(e for e in entries if e.task_id == task_id and e.kind == "debit")
        assert debit.amount == -task.price
        refunded = kinds[(task_id, "refund")]
        if task.status == "failed":
            assert refunded == 1, task_id
            refund = next(e for e in entries if e.task_id == task_id and e.kind == "refund")
            assert refund.amount == task.price
            assert task.consumed_credits == 0
        else:
            assert refunded == 0, (task_id, task.status)
            assert task.consumed_credits == task.price
    for entry in entries:
        assert entry.kind in ("grant", "debit", "refund")
        if entry.kind == "grant":
            assert entry.task_id is None and entry.amount > 0


def submit(server: Server, key: str, **body: object) -> str:
    response = server.generate(key, **body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def balance(server: Server, name: str) -> int:
    return accounts.summary(server.db, name=name)["balance"]


# ---------------------------------------------------------------------------
# Debit


def test_the_price_is_debited_at_submission(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False, price=7)
    key = server.account(name="payer", credits=100)
    task_id = submit(server, key)
    assert balance(server, "payer") == 93
    data = server.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key)).json()[
        "data"
    ]
    assert data["status"] == "pending"
    assert data["consumed_credits"] == 7
    debits = [e for e in ledger(server, "payer") if e.kind == "debit"]
    assert [(e.task_id, e.amount) for e in debits] == [(task_id, -7)]
    assert_ledger_consistent(server, "payer")


def test_a_completed_task_keeps_its_price(server: Server) -> None:
    key = server.account(name="happy", credits=100)
    data = server.wait(key, submit(server, key))
    assert data["status"] == "completed"
    assert data["consumed_credits"] == 40
    assert balance(server, "happy") == 60
    assert_ledger_consistent(server, "happy")


def test_a_free_price_still_records_the_task(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False, price=0)
    key = server.account(name="gratis", credits=0)
    task_id = submit(server, key)
    assert balance(server, "gratis") == 0
    assert any(e.task_id == task_id for e in ledger(server, "gratis"))
    assert_ledger_consistent(server, "gratis")


def test_usage_summary_counts_spent_credits(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False)
    key = server.account(name="spender", credits=200)
    submit(server, key)
    submit(server, key)
    summary = accounts.summary(server.db, name="spender")
    assert summary["balance"] == 120
    assert summary["usage"]["credits_spent"] == 80
    assert summary["usage"]["tasks"]["pending"] == 2


# ---------------------------------------------------------------------------
# Refunds: each failure path refunds exactly once, with the contract's message


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path.startswith("/missing"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_host() -> Iterator[str]:
    """A real HTTP server on loopback that serves a PNG (and 404 under /missing)."""
    handler = type("Handler", (_ImageHandler,), {"body": image_bytes("PNG")})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def assert_refunded(
    server: Server, key: str, name: str, task_id: str, message: str, credits: int
) -> None:
    data = server.wait(key, task_id)
    assert data["status"] == "failed", data
    assert data["error_message"] == message
    assert data["consumed_credits"] == 0
    assert data["response"] == []
    assert balance(server, name) == credits
    refunds = [e for e in ledger(server, name) if e.kind == "refund"]
    assert [(e.task_id, e.amount) for e in refunds] == [(task_id, server.settings.price)]
    assert_ledger_consistent(server, name)


def test_an_engine_failure_is_refunded(start_server: Callable[..., Server]) -> None:
    server = start_server(engine="test-fail")
    key = server.account(name="unlucky", credits=100)
    task_id = submit(server, key)
    assert_refunded(server, key, "unlucky", task_id, ENGINE_FAILED, 100)


def test_a_moderated_prompt_is_refunded(server: Server) -> None:
    key = server.account(name="rude", credits=100)
    task_id = submit(server, key, prompt="A video about CSAM, please")
    assert_refunded(server, key, "rude", task_id, INAPPROPRIATE, 100)


def test_an_unreachable_image_url_is_refunded(start_server: Callable[..., Server]) -> None:
    server = start_server(allow_private_urls=True, fetch_timeout=5)
    key = server.account(name="offline", credits=100)
    task_id = submit(server, key, images=[f"http://127.0.0.1:{free_port()}/cat.png"])
    assert_refunded(server, key, "offline", task_id, NETWORK, 100)


def test_an_image_url_answering_404_is_refunded(
    start_server: Callable[..., Server], image_host: str
) -> None:
    server = start_server(allow_private_urls=True)
    key = server.account(name="gone", credits=100)
    task_id = submit(server, key, images=[f"{image_host}/missing.png"])
    assert_refunded(server, key, "gone", task_id, NETWORK, 100)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://localhost/x.png",
    ],
)
def test_a_private_address_is_refused_and_refunded(server: Server, url: str) -> None:
    key = server.account(name="ssrf", credits=100)
    task_id = submit(server, key, images=[url])
    assert_refunded(server, key, "ssrf", task_id, NETWORK, 100)


def test_a_private_address_is_refused_even_when_it_serves_an_image(
    server: Server, image_host: str
) -> None:
    """allow_private_urls is off by default: a loopback image host is never fetched."""
    key = server.account(name="ssrf-live", credits=100)
    task_id = submit(server, key, images=[f"{image_host}/cat.png"])
    assert_refunded(server, key, "ssrf-live", task_id, NETWORK, 100)


def test_an_unsupported_image_type_is_refunded(server: Server) -> None:
    key = server.account(name="gif-fan", credits=100)
    task_id = submit(server, key, images=[data_uri("GIF")])
    assert_refunded(server, key, "gif-fan", task_id, UNSUPPORTED, 100)


def test_bytes_that_lie_about_their_type_are_refunded(server: Server) -> None:
    """A GIF labelled image/png is judged by its bytes."""
    key = server.account(name="liar", credits=100)
    task_id = submit(server, key, images=[data_uri("GIF", "png")])
    assert_refunded(server, key, "liar", task_id, UNSUPPORTED, 100)


def test_a_truncated_png_is_refunded(server: Server) -> None:
    key = server.account(name="truncated", credits=100)
    truncated = image_bytes("PNG")[:40]
    task_id = submit(
        server, key, images=["data:image/png;base64," + base64.b64encode(truncated).decode()]
    )
    assert_refunded(server, key, "truncated", task_id, UNSUPPORTED, 100)


def test_an_http_served_png_is_used(start_server: Callable[..., Server], image_host: str) -> None:
    server = start_server(allow_private_urls=True)
    key = server.account(name="fetcher", credits=100)
    task_id = submit(server, key, images=[f"{image_host}/cat.png"])
    data = server.wait(key, task_id)
    assert data["status"] == "completed", data
    assert data["consumed_credits"] == 40
    assert data["request"]["images"] == [f"{image_host}/cat.png"]
    assert balance(server, "fetcher") == 60
    assert_ledger_consistent(server, "fetcher")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_each_supported_data_uri_type_is_used(server: Server, fmt: str) -> None:
    key = server.account(name=f"type-{fmt}", credits=100)
    data = server.wait(key, submit(server, key, images=[data_uri(fmt)]))
    assert data["status"] == "completed", data


def test_mixed_outcomes_keep_the_ledger_exact(start_server: Callable[..., Server]) -> None:
    server = start_server(workers=2)
    key = server.account(name="mixed", credits=400)
    ids = [
        submit(server, key),
        submit(server, key, prompt="jailbait"),
        submit(server, key, images=[data_uri("GIF")]),
        submit(server, key, images=[data_uri("PNG")]),
        submit(server, key, images=["http://127.0.0.1:9/x.png"]),
    ]
    outcomes = [server.wait(key, task_id)["status"] for task_id in ids]
    assert outcomes == ["completed", "failed", "failed", "completed", "failed"]
    assert balance(server, "mixed") == 400 - 2 * 40
    assert_ledger_consistent(server, "mixed")


# ---------------------------------------------------------------------------
# No overdraft under concurrency


def test_concurrent_submissions_never_overdraw(start_server: Callable[..., Server]) -> None:
    """Credits for exactly 5 generations, 30 simultaneous requests: 5 succeed."""
    server = start_server(run_workers=False, price=40)
    name = "racer"
    key = server.account(name=name, credits=200)
    attempts = 30
    barrier = threading.Barrier(attempts)
    results: list[httpx.Response | BaseException] = [None] * attempts  # type: ignore[list-item]

    def fire(index: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            # Connect before the barrier so that the requests really overlap.
            client.get("/healthz")
            barrier.wait(timeout=30)
            try:
                results[index] = client.post(
                    "/v1/generate", json={"prompt": f"race {index}"}, headers=auth(key)
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                results[index] = exc

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    codes = Counter(r.status_code for r in results)  # type: ignore[union-attr]
    assert codes == {200: 5, 402: 25}, codes
    for response in results:
        body = response.json()  # type: ignore[union-attr]
        if response.status_code == 402:  # type: ignore[union-attr]
            assert body["error"] == "INSUFFICIENT_CREDITS" and body["code"] == 402
        else:
            assert body["data"]["task_id"].startswith("task_")
    summary = accounts.summary(server.db, name=name)
    assert summary["balance"] == 0
    assert summary["usage"]["tasks"]["pending"] == 5
    with server.db.read() as session:
        count = session.scalar(
            select(func.count())
            .select_from(Task)
            .where(Task.account_id == account_id(server, name))
        )
    assert count == 5
    assert_ledger_consistent(server, name)


def test_concurrent_submissions_from_two_keys_share_one_balance(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_workers=False, price=40)
    first = server.account(name="shared", credits=120)
    second = accounts.create_key(server.db, "shared")
    barrier = threading.Barrier(12)
    codes: list[int] = []
    lock = threading.Lock()

    def fire(key: str) -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            client.get("/healthz")
            barrier.wait(timeout=30)
            code = client.post("/v1/generate", json={"prompt": "x"}, headers=auth(key)).status_code
            with lock:
                codes.append(code)

    threads = [threading.Thread(target=fire, args=(first if i % 2 else second,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert Counter(codes) == {200: 3, 402: 9}
    assert balance(server, "shared") == 0
    assert_ledger_consistent(server, "shared")
