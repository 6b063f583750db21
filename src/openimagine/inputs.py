"""Input image references: validating them, fetching them safely, decoding them.

A request may name up to seven images, each an ``http(s)`` URL or a
``data:image/...;base64,`` URI. ``parse_image_refs`` checks their shape when
the request arrives (a bad one is the client's mistake: 400). Everything that
can only go wrong later, while a worker loads them, raises an ``InputError``
whose ``public_message`` is one of the contract's task error messages; the
exception's own text is the internal reason, for logs only.

Fetching a URL given by a client is a server-side request forgery risk, so
``fetch_image_bytes`` refuses loopback, private, link-local and other
non-global addresses (unless ``allow_private_urls``), re-checks every redirect
hop, and connects to exactly the address it checked, so a DNS answer that
changes between check and connect (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from PIL import Image, ImageOps

from openimagine.settings import Settings

MAX_IMAGES = 7
MAX_URL_LENGTH = 8192

# The whole fetch, redirects included, must finish within this many times
# ``fetch_timeout``; the per-operation timeouts alone would let a server that
# drips one byte per almost-timeout hold a worker for hours.
TOTAL_TIMEOUT_FACTOR = 3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses to try, as strings; the default asks the system.
Resolver = Callable[[str, int], Sequence[str]]


# ---------------------------------------------------------------------------
# Errors


class InvalidImageReference(ValueError):
    """A reference in the request's ``images`` field is malformed (the API answers 400)."""


class InputError(Exception):
    """An input image could not be used; the task fails with ``public_message``.

    ``str(error)`` is the internal reason (for logs); it may name addresses or
    server replies and must not be shown to the client.
    """

    public_message = "Network error, please try again later."

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedImage(InputError):
    """Not JPEG, PNG or WebP by its bytes, undecodable, or too many pixels."""

    public_message = "File type not supported"


class FetchFailed(InputError):
    """The URL could not be fetched: DNS, refused, timeout, non-2xx, too large, refused address."""

    public_message = "Network error, please try again later."


# ---------------------------------------------------------------------------
# Parsing references (request time)

# Parameters such as ``;name=a.png`` may sit between the type and ``;base64``.
_DATA_URI = re.compile(
    r"data:image/(?P<subtype>[a-z0-9][a-z0-9.+-]*)(?:;[^;,]*)*;base64,(?P<payload>.*)",
    re.IGNORECASE | re.DOTALL,
)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


def parse_image_refs(value: object) -> list[str]:
    """Validate the request's ``images`` field: None, one string, or a list of strings.

    Raises ``InvalidImageReference`` naming the bad entry by index. A data URI's
    base64 is decoded here once so that garbage is refused up front.
    """
    if value is None:
        return []
    if isinstance(value, str):
        refs: list[object] = [value]
    elif isinstance(value, list):
        refs = list(value)
    else:
        raise InvalidImageReference("images must be a string or an array of strings")
    if len(refs) > MAX_IMAGES:
        raise InvalidImageReference(
            f"images accepts at most {MAX_IMAGES} references, got {len(refs)}"
        )
    for index, ref in enumerate(refs):
        problem = _reference_problem(ref)
        if problem:
            raise InvalidImageReference(f"images[{index}] {problem}")
    return [ref for ref in refs if isinstance(ref, str)]


def _reference_problem(ref: object) -> str | None:
    """Why ``ref`` is not an acceptable reference, or None when it is."""
    if not isinstance(ref, str):
        return "must be a string"
    if is_data_uri(ref):
        match = _DATA_URI.fullmatch(ref)
        if match is None:
            return "is not a data:image/<type>;base64, URI"
        try:
            payload = _b64decode(match["payload"])
        except ValueError:
            return "has a data URI whose payload is not valid base64"
        if not payload:
            return "has an empty data URI"
        return None
    return _url_problem(ref)


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http(s) URL or a data:image/...;base64, URI"
    if not parts.hostname:
        return "is a URL without a host"
    return None


def _b64decode(payload: str) -> bytes:
    # Clients sometimes wrap base64 at 76 columns; line breaks are harmless.
    try:
        raw = payload.encode("ascii")
        return base64.b64decode(_WHITESPACE.sub(b"", raw), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError("invalid base64") from exc


def is_data_uri(ref: str) -> bool:
    return ref[:5].lower() == "data:"


def decode_data_uri(ref: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URI.

    A payload over ``max_bytes`` (``fetch_max_bytes`` when loading) raises
    ``UnsupportedImage``, not ``FetchFailed``: the data came with the request,
    so "Network error, please try again later" would send the client retrying
    something that can never work.
    """
    match = _DATA_URI.fullmatch(ref)
    if match is None:
        raise UnsupportedImage("not a data:image/...;base64, URI")
    try:
        data = _b64decode(match["payload"])
    except ValueError as exc:
        raise UnsupportedImage("data URI payload is not valid base64") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise UnsupportedImage(f"data URI holds {len(data)} bytes, over the {max_bytes} limit")
    return data


# ---------------------------------------------------------------------------
# Sniffing and decoding


def sniff_image_type(data: bytes) -> str | None:
    """"jpeg", "png" or "webp" judged by magic bytes only (never by name or header)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into an upright RGB image.

    The pixel count is checked from the header before any pixel is decoded, so
    a small file claiming huge dimensions (a decompression bomb) costs nothing.
    """
    kind = sniff_image_type(data)
    if kind is None:
        raise UnsupportedImage("not JPEG, PNG or WebP by its magic bytes")
    try:
        # ``formats`` keeps Pillow from trying every other plugin on these bytes.
        with Image.open(BytesIO(data), formats=[_PIL_FORMATS[kind]]) as image:
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise UnsupportedImage(
                    f"{width}x{height} image is over the {max_pixels} pixel limit"
                )
            image.load()
            return _upright_rgb(image)
    except UnsupportedImage:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own global guard (Image.MAX_IMAGE_PIXELS). Its warning is not
        # turned into an error here: warnings filters are process-wide and not
        # thread-safe, and the explicit check above already runs first.
        raise UnsupportedImage(f"decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # Pillow reports truncated and corrupt data with any of these.
        raise UnsupportedImage(f"cannot decode {kind}: {exc}") from exc


def _upright_rgb(image: Image.Image) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken EXIF must not reject a good picture
        upright = image
    if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
        # Flatten onto white: dropping alpha would turn transparent areas into
        # whatever colour the hidden pixels happen to hold (often black).
        rgba = upright.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return upright.convert("RGB")


# ---------------------------------------------------------------------------
# Address policy


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


# ---------------------------------------------------------------------------
# Fetching

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

    def __init__(self, policy: AddressPolicy) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=_GuardedBackend(policy),
            max_connections=4,
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
            problem = _url_problem(current)
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


def _fetch_one(
    client: httpx.Client, url: str, settings: Settings, deadline: float
) -> bytes | str:
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
        if declared is not None and declared.strip().isdigit():
            if int(declared) > settings.fetch_max_bytes:
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
