"""``openimagine serve``'s connection limits and forwarded headers (``api/serving.py``),
on the real command: these are uvicorn options, which an in-process test server
would not see."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

from conftest import Spawned

BAD_KEY = {"Authorization": "Bearer oi_not_a_key"}


def failed_auth_codes(server: Spawned, tries: int) -> list[int]:
    """Status codes of ``tries`` bad-key requests, each claiming another client address."""
    return [
        httpx.get(
            f"{server.base_url}/v1/status",
            params={"task_id": "task_x"},
            headers={**BAD_KEY, "X-Forwarded-For": f"203.0.113.{n}"},
            timeout=10,
        ).status_code
        for n in range(tries)
    ]


def test_forwarded_addresses_are_not_believed_by_default(
    spawn_server: Callable[..., Spawned],
) -> None:
    """From the same host, a new X-Forwarded-For per try must not escape the
    failed-authentication limit (uvicorn believes 127.0.0.1 unless told otherwise)."""
    server = spawn_server(auth_failure_limit=5)
    codes = failed_auth_codes(server, 8)
    assert codes[:5] == [401] * 5
    assert set(codes[5:]) == {429}, codes


def test_an_operator_can_name_the_proxies_whose_forwarded_address_counts(
    spawn_server: Callable[..., Spawned],
) -> None:
    server = spawn_server(auth_failure_limit=5, forwarded_allow_ips="127.0.0.1")
    assert failed_auth_codes(server, 8) == [401] * 8  # each address counted on its own


def test_connections_past_max_connections_get_503(spawn_server: Callable[..., Spawned]) -> None:
    """Held connections (slow or idle clients) cannot take more than their share:
    past OPENIMAGINE_MAX_CONNECTIONS new requests are turned away, not queued."""
    server = spawn_server(max_connections=3)
    port = int(server.base_url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        time.sleep(0.3)
        assert httpx.get(f"{server.base_url}/healthz", timeout=10).status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.base_url}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the server did not recover its connections"
        time.sleep(0.1)


def test_a_request_that_is_not_valid_http_gets_uvicorns_plain_400(
    spawn_server: Callable[..., Spawned],
) -> None:
    """As README's Errors section says: answered before openimagine sees it."""
    server = spawn_server()
    port = int(server.base_url.rsplit(":", 1)[1])
    for head in (
        b"Content-Length: abc\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n" + head + b"\r\nhello")
            answer = sock.recv(1024)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert answer.endswith(b"Invalid HTTP request received."), answer
