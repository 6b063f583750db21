"""Fetching image URLs without server-side request forgery: address policy,
a guarded transport that connects only to checked addresses, manual redirects."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from PIL import Image

from openimagine.inputs.images import decode_image
from openimagine.inputs.refs import (
    FetchFailed,
    decode_data_uri,
    is_data_uri,
    url_problem,
)
from openimagine.patterns import whole_number
from openimagine.settings import Settings

# The whole fetch, redirects included, must finish within this many times
# ``fetch_timeout``; the per-operation timeouts alone would let a server that
# drips one byte per almost-timeout hold a worker for hours.
TOTAL_TIMEOUT_FACTOR = 3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses to try, as strings; the default asks the system.
Resolver = Callable[[str, int], Sequence[str]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(ip: IPAddress) -> bool:
    """True when ``ip`` is a globally routable unicast address.

    Explicit flags besides ``is_global`` because ``is_global`` alone lets some
    multicast ranges through. IPv6 forms that carry an IPv4 address are judged
    by that address: IPv4-mapped (``::ffff:127.0.0.1`` reaches 127.0.0.1 on a
    dual-stack socket) and NAT64 (``64:ff9b::/96``, which DNS64 hands out for
    every IPv4-only host on an IPv6-only network, so it must not be refused
    wholesale); 6to4 (``2002::/16``) must pass both tests.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
    return ip.is_global and not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a fetch may connect to, and how names are resolved.

    ``allowed_networks`` are let through even though they are not public (an
    operator's internal image host, or a test server on loopback).
    """

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = system_resolver

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        return cls(allow_private=settings.allow_private_urls)

    def permits(self, ip: IPAddress) -> bool:
        if self.allow_private or is_public_address(ip):
            return True
        return any(
            ip in network for network in self.allowed_networks if network.version == ip.version
        )

    def resolve(self, host: str, port: int) -> list[str]:
        """The checked addresses to connect to; refuses if ANY answer is refused.

        Refusing on any (not all) answer matters: a name with one public and
        one private answer would otherwise reach the private one on fallback.
        """
        try:
            answers = list(self.resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise FetchFailed(f"cannot resolve {host!r}: {exc}") from exc
        if not answers:
            raise FetchFailed(f"no addresses for {host!r}")
        checked: list[str] = []
        for answer in answers:
            try:
                ip = ipaddress.ip_address(answer)
            except ValueError as exc:
                raise FetchFailed(f"resolver gave a non-address {answer!r}") from exc
            if not self.permits(ip):
                raise FetchFailed(f"refused address {ip} for host {host!r}")
            if answer not in checked:
                checked.append(answer)
        return checked


# httpcore raises these; our transport turns them into FetchFailed.
_HTTPCORE_ERRORS: tuple[type[Exception], ...] = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves and checks every TCP connection itself, then connects to a checked IP.

    httpcore still hands the original host name to TLS, so SNI and certificate
    checks use the name while the socket goes to the address we vetted.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last_error: Exception | None = None
        for address in self._policy.resolve(host, port):
            try:
                return self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last_error = exc  # try the next checked address, like a browser would
        assert last_error is not None
        raise last_error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise FetchFailed("unix sockets are never used for fetching")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that uses ``_GuardedBackend``.

    Built on public httpcore APIs rather than patching ``HTTPTransport``'s
    private pool, so an httpx upgrade cannot silently bypass the guard.
    """

    def __init__(self, policy: AddressPolicy, *, max_connections: int = 4) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=_GuardedBackend(policy),
            max_connections=max_connections,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            core_response = self._pool.handle_request(core_request)
        except _HTTPCORE_ERRORS as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc
        assert isinstance(core_response.stream, Iterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except _HTTPCORE_ERRORS as exc:
            raise FetchFailed(f"{type(exc).__name__} while reading: {exc}") from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def guarded_transport(policy: AddressPolicy, *, max_connections: int = 4) -> httpx.BaseTransport:
    """A transport that connects only to addresses ``policy`` permits, for any outgoing
    request to a client-given URL (image fetches, webhook deliveries). Every
    connection failure, refused address included, raises ``FetchFailed``. Use it
    with ``trust_env=False`` and without following redirects blindly."""
    return _GuardedTransport(policy, max_connections=max_connections)


_REQUEST_HEADERS = {
    "Accept": "image/jpeg, image/png, image/webp, image/*;q=0.8",
    # Counting compressed bytes would not bound memory; ask for none.
    "Accept-Encoding": "identity",
    "User-Agent": "openimagine (image fetcher)",
}


def fetch_image_bytes(
    url: str, settings: Settings, *, policy: AddressPolicy | None = None
) -> bytes:
    """Download ``url`` with every SSRF and resource guard; raises ``FetchFailed``.

    ``policy`` defaults to ``AddressPolicy.from_settings(settings)``; passing one
    only changes which addresses are allowed, never how they are checked.
    """
    policy = policy or AddressPolicy.from_settings(settings)
    deadline = time.monotonic() + settings.fetch_timeout * TOTAL_TIMEOUT_FACTOR
    # trust_env=False: an HTTP(S)_PROXY from the environment would send the
    # request through a proxy whose address is the only one we would check.
    with httpx.Client(
        transport=_GuardedTransport(policy), trust_env=False, follow_redirects=False
    ) as client:
        current = url
        for hop in range(settings.fetch_max_redirects + 1):
            problem = url_problem(current)
            if problem:
                raise FetchFailed(f"hop {hop}: URL {problem}")
            try:
                next_url = _fetch_one(client, current, settings, deadline)
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc
            if isinstance(next_url, bytes):
                return next_url
            current = next_url
    raise FetchFailed(f"more than {settings.fetch_max_redirects} redirects")


def _fetch_one(client: httpx.Client, url: str, settings: Settings, deadline: float) -> bytes | str:
    """One hop: the body as bytes, or the next URL (str) when redirected."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchFailed("overall fetch deadline passed")
    timeout = httpx.Timeout(min(settings.fetch_timeout, remaining))
    with client.stream("GET", url, headers=_REQUEST_HEADERS, timeout=timeout) as response:
        if response.is_redirect:
            return str(response.url.join(response.headers["location"]))
        if not 200 <= response.status_code < 300:
            raise FetchFailed(f"HTTP {response.status_code} from {url}")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchFailed(f"unrequested content-encoding {encoding!r}")
        declared = response.headers.get("content-length")
        size = None if declared is None else whole_number(declared.strip())
        if size is not None:
            if size > settings.fetch_max_bytes:
                raise FetchFailed(f"content-length {declared} over {settings.fetch_max_bytes}")
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > settings.fetch_max_bytes:
                raise FetchFailed(f"body over {settings.fetch_max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchFailed("overall fetch deadline passed while reading")
        return bytes(body)


def load_images(
    refs: Sequence[str], settings: Settings, *, policy: AddressPolicy | None = None
) -> list[Image.Image]:
    """Fetch or decode every reference into an RGB image, in order.

    Raises ``UnsupportedImage`` or ``FetchFailed`` for the first one that fails.
    """
    images = []
    for ref in refs:
        if is_data_uri(ref):
            data = decode_data_uri(ref, max_bytes=settings.fetch_max_bytes)
        else:
            data = fetch_image_bytes(ref, settings, policy=policy)
        images.append(decode_image(data, max_pixels=settings.max_image_pixels))
    return images
