"""Input images: what clients may send, what the server will fetch, and what it refuses.

Every fetch here goes to a real HTTP server on 127.0.0.1. An audit hook makes
sure no test ever connects to, or asks DNS about, anything but loopback: the
refusals of private addresses must happen before any connection is made.
"""

from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from openimagine.inputs import (
    AddressPolicy,
    FetchFailed,
    InputError,
    InvalidImageReference,
    UnsupportedImage,
    decode_data_uri,
    decode_image,
    fetch_image_bytes,
    is_public_address,
    load_images,
    parse_image_refs,
    sniff_image_type,
)
from openimagine.settings import Settings

NETWORK_ERROR = "Network error, please try again later."
NOT_SUPPORTED = "File type not supported"
LOOPBACK_ONLY = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


# ---------------------------------------------------------------------------
# Network guard: a test that would touch anything but loopback fails loudly.

_guard: dict[str, object] = {"active": False, "violations": []}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_numeric_host(host: str) -> bool:
    """A literal the resolver parses without DNS (including forms like ``127.1``)."""
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)  # the C parser: accepts "127.1" and "0x7f000001" too
        return True
    except OSError:
        return False


def _audit(event: str, args: tuple) -> None:
    if not _guard["active"]:
        return
    problem = None
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            problem = f"connect to {address!r}"
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode()
        if host not in (None, "localhost") and not _is_numeric_host(host):
            problem = f"DNS lookup of {host!r}"
    if problem:
        _guard["violations"].append(problem)  # type: ignore[union-attr]
        raise RuntimeError(f"test tried to leave loopback: {problem}")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    _guard["active"] = True
    _guard["violations"] = []
    try:
        yield
    finally:
        _guard["active"] = False
    assert _guard["violations"] == [], "a test touched the network beyond loopback"


# ---------------------------------------------------------------------------
# Helpers


def image_bytes(
    fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB", **save: object
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 30, 30) if mode == "RGB" else 0).save(buffer, fmt, **save)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR says ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(image_bytes("PNG", (1, 1)))
    # Signature (8) + length (4) + b"IHDR" (4), then width and height.
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def data_uri(data: bytes, subtype: str = "png") -> str:
    return f"data:image/{subtype};base64,{base64.b64encode(data).decode()}"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "allow_private_urls": True,
        "fetch_timeout": 0.5,
        "fetch_max_bytes": 4096,
        "fetch_max_redirects": 3,
    }
    values.update(overrides)
    return Settings(**values)


PNG = image_bytes("PNG")

Route = Callable[[BaseHTTPRequestHandler], None]


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    *,
    length: bool = True,
    **headers: str,
) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    if length:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@dataclass
class LocalServer:
    host: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def start_image_server(host: str) -> tuple[LocalServer, ThreadingHTTPServer]:
    state = LocalServer(host)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.hits.append((self.path, self.headers.get("Host")))
            route = state.routes.get(self.path)
            if route is None:
                send(self, 404, b"not found")
            else:
                route(self)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False  # slow handlers must not hold up teardown
    state.port = httpd.server_address[1]
    serve = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    serve.start()
    return state, httpd


@pytest.fixture
def image_server() -> Iterator[LocalServer]:
    state, httpd = start_image_server("127.0.0.1")
    state.routes["/cat.png"] = lambda h: send(h, 200, PNG, Content_Type="image/png")
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def redirect(location: str) -> Route:
    return lambda h: send(h, 302, Location=location)


# ---------------------------------------------------------------------------
# parse_image_refs: the request's ``images`` field


def test_no_images_field_means_no_images() -> None:
    assert parse_image_refs(None) == []
    assert parse_image_refs([]) == []


def test_a_single_string_is_accepted_as_one_reference() -> None:
    assert parse_image_refs("https://example.com/cat.png") == ["https://example.com/cat.png"]


def test_urls_and_data_uris_up_to_seven_are_accepted() -> None:
    refs = ["http://example.com/a.jpg", data_uri(PNG)] + ["https://cdn.example.com/b.webp"] * 5
    assert parse_image_refs(refs) == refs


def test_data_uri_with_parameters_and_wrapped_base64_is_accepted() -> None:
    payload = base64.encodebytes(image_bytes("PNG", (64, 64))).decode()  # 76-column lines
    ref = f"data:image/png;name=cat.png;base64,{payload}"
    assert parse_image_refs([ref]) == [ref]
    assert decode_data_uri(ref) == image_bytes("PNG", (64, 64))


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("example.com/cat.png", "must be an http(s) URL"),
        ("not a url", "whitespace"),
        ("ftp://example.com/cat.png", "must be an http(s) URL"),
        ("file:///etc/passwd", "must be an http(s) URL"),
        ("http:///cat.png", "without a host"),
        ("http://example.com:99999/cat.png", "not a valid URL"),
        ("data:text/plain;base64,aGVsbG8=", "data:image/<type>;base64,"),
        ("data:image/png,rawbytes", "data:image/<type>;base64,"),
        ("data:image/png;base64,@@not-base64@@", "not valid base64"),
        ("data:image/png;base64,", "empty"),
        ("", "must be an http(s) URL"),
        (42, "must be a string"),
    ],
)
def test_a_bad_reference_is_rejected_naming_its_index(ref: object, expected: str) -> None:
    with pytest.raises(InvalidImageReference) as caught:
        parse_image_refs(["https://example.com/ok.png", ref])
    assert "images[1]" in str(caught.value)
    assert expected in str(caught.value)


def test_more_than_seven_references_are_rejected() -> None:
    with pytest.raises(InvalidImageReference, match="at most 7"):
        parse_image_refs(["https://example.com/a.png"] * 8)


def test_images_must_be_a_string_or_a_list() -> None:
    with pytest.raises(InvalidImageReference, match="string or an array"):
        parse_image_refs({"url": "https://example.com/a.png"})


def test_invalid_reference_is_a_value_error() -> None:
    # The API layer maps ValueErrors from request parsing to 400 INVALID_REQUEST.
    assert issubclass(InvalidImageReference, ValueError)


# ---------------------------------------------------------------------------
# Sniffing and decoding


@pytest.mark.parametrize(("fmt", "kind"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp")])
def test_supported_types_are_recognised_by_their_bytes(fmt: str, kind: str) -> None:
    data = image_bytes(fmt)
    assert sniff_image_type(data) == kind
    image = decode_image(data, max_pixels=1000)
    assert (image.mode, image.size) == ("RGB", (8, 6))


@pytest.mark.parametrize("data", [image_bytes("GIF"), image_bytes("BMP"), b"hello, world", b""])
def test_other_types_are_refused_as_file_type_not_supported(data: bytes) -> None:
    assert sniff_image_type(data) is None
    with pytest.raises(UnsupportedImage) as caught:
        decode_image(data, max_pixels=1000)
    assert caught.value.public_message == NOT_SUPPORTED


def test_declared_type_does_not_matter_only_bytes_do(tmp_path: Path) -> None:
    # A PNG sent as "image/gif" is still a PNG; a GIF sent as "image/png" is not.
    [image] = load_images([data_uri(PNG, "gif")], make_settings(tmp_path))
    assert image.size == (8, 6)
    with pytest.raises(UnsupportedImage):
        load_images([data_uri(image_bytes("GIF"), "png")], make_settings(tmp_path))


def test_pixel_limit_is_enforced_from_the_header() -> None:
    data = image_bytes("PNG", (20, 20))
    assert decode_image(data, max_pixels=400).size == (20, 20)
    with pytest.raises(UnsupportedImage, match="pixel limit"):
        decode_image(data, max_pixels=399)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_claiming(100_000, 100_000)  # 10 gigapixels in a ~70-byte file
    started = time.monotonic()
    with pytest.raises(UnsupportedImage) as caught:
        decode_image(bomb, max_pixels=40_000_000)
    assert time.monotonic() - started < 1
    assert caught.value.public_message == NOT_SUPPORTED


def test_pillows_own_bomb_guard_also_maps_to_unsupported() -> None:
    # Even with our own limit set absurdly high, Pillow's hard limit holds.
    with pytest.raises(UnsupportedImage, match="decompression bomb"):
        decode_image(png_claiming(100_000, 100_000), max_pixels=10**12)


@pytest.mark.parametrize(
    "data",
    [
        image_bytes("PNG", (64, 64))[:60],  # truncated
        image_bytes("JPEG", (64, 64))[:200],  # truncated
        b"\xff\xd8\xff" + b"\x00" * 100,  # JPEG magic, garbage after
        b"RIFF\x10\x00\x00\x00WEBPVP8 garbage",  # WebP magic, garbage after
    ],
)
def test_truncated_or_corrupt_images_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        decode_image(data, max_pixels=10_000)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    data = image_bytes("JPEG", (20, 10), exif=exif.tobytes())
    assert decode_image(data, max_pixels=1000).size == (10, 20)


def test_transparent_png_is_flattened_onto_white() -> None:
    data = image_bytes("PNG", (4, 4), mode="RGBA")  # fully transparent black
    image = decode_image(data, max_pixels=1000)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_oversized_data_uri_is_unsupported_not_a_network_error(tmp_path: Path) -> None:
    big = image_bytes("PNG", (8, 6)) + b"\x00" * 5000
    with pytest.raises(UnsupportedImage, match="over the 4096 limit"):
        load_images([data_uri(big)], make_settings(tmp_path))


def test_errors_keep_internal_reason_apart_from_public_message() -> None:
    error = FetchFailed("refused address 10.0.0.1 for host 'intranet'")
    assert isinstance(error, InputError)
    assert error.public_message == NETWORK_ERROR
    assert "10.0.0.1" in str(error) and "10.0.0.1" not in error.public_message


# ---------------------------------------------------------------------------
# Fetching from a real local server


def test_a_reachable_image_is_fetched_and_decoded(
    image_server: LocalServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    assert fetch_image_bytes(image_server.url("/cat.png"), settings) == PNG
    images = load_images([image_server.url("/cat.png"), data_uri(PNG)], settings)
    assert [(image.mode, image.size) for image in images] == [("RGB", (8, 6))] * 2


def test_not_found_is_a_network_error(image_server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="HTTP 404") as caught:
        fetch_image_bytes(image_server.url("/missing.png"), make_settings(tmp_path))
    assert caught.value.public_message == NETWORK_ERROR


def test_server_error_is_a_network_error(image_server: LocalServer, tmp_path: Path) -> None:
    image_server.routes["/boom"] = lambda h: send(h, 500, b"oops")
    with pytest.raises(FetchFailed, match="HTTP 500"):
        fetch_image_bytes(image_server.url("/boom"), make_settings(tmp_path))


def test_body_exactly_at_the_cap_is_accepted(image_server: LocalServer, tmp_path: Path) -> None:
    image_server.routes["/exact"] = lambda h: send(h, 200, b"x" * 4096)
    assert len(fetch_image_bytes(image_server.url("/exact"), make_settings(tmp_path))) == 4096


def test_declared_content_length_over_the_cap_is_refused(
    image_server: LocalServer, tmp_path: Path
) -> None:
    image_server.routes["/big"] = lambda h: send(h, 200, b"x" * 4097)
    with pytest.raises(FetchFailed, match="content-length 4097"):
        fetch_image_bytes(image_server.url("/big"), make_settings(tmp_path))


def test_undeclared_body_over_the_cap_is_cut_off(image_server: LocalServer, tmp_path: Path) -> None:
    # HTTP/1.0 style: no Content-Length, the body ends when the server closes.
    image_server.routes["/stream"] = lambda h: send(h, 200, b"x" * 100_000, length=False)
    with pytest.raises(FetchFailed, match="body over 4096"):
        fetch_image_bytes(image_server.url("/stream"), make_settings(tmp_path))


def test_a_server_that_never_answers_times_out(image_server: LocalServer, tmp_path: Path) -> None:
    image_server.routes["/slow"] = lambda h: time.sleep(3)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="Timeout"):
        fetch_image_bytes(image_server.url("/slow"), make_settings(tmp_path, fetch_timeout=0.3))
    assert time.monotonic() - started < 1.5


def test_a_server_dripping_bytes_hits_the_overall_deadline(
    image_server: LocalServer, tmp_path: Path
) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(1000):  # each byte well inside the read timeout
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)

    image_server.routes["/drip"] = drip
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="deadline"):
        fetch_image_bytes(image_server.url("/drip"), make_settings(tmp_path, fetch_timeout=0.3))
    assert time.monotonic() - started < 2  # 3 x 0.3s deadline, plus slack


def test_connection_refused_is_a_network_error(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the fetch
    with pytest.raises(FetchFailed, match="ConnectError"):
        fetch_image_bytes(f"http://127.0.0.1:{port}/cat.png", make_settings(tmp_path))


def test_compressed_responses_are_refused(image_server: LocalServer, tmp_path: Path) -> None:
    # We ask for identity; a compressed body could expand past the byte cap.
    image_server.routes["/gz"] = lambda h: send(h, 200, gzip.compress(PNG), Content_Encoding="gzip")
    with pytest.raises(FetchFailed, match="content-encoding"):
        fetch_image_bytes(image_server.url("/gz"), make_settings(tmp_path))


def test_redirects_are_followed_up_to_the_limit(image_server: LocalServer, tmp_path: Path) -> None:
    image_server.routes["/r1"] = redirect("/r2")
    image_server.routes["/r2"] = redirect(image_server.url("/r3"))  # absolute
    image_server.routes["/r3"] = redirect("cat.png")  # relative
    assert fetch_image_bytes(image_server.url("/r1"), make_settings(tmp_path)) == PNG


def test_too_many_redirects_is_a_network_error(image_server: LocalServer, tmp_path: Path) -> None:
    for hop in range(5):
        image_server.routes[f"/r{hop}"] = redirect(f"/r{hop + 1}")
    image_server.routes["/r5"] = image_server.routes["/cat.png"]
    with pytest.raises(FetchFailed, match="more than 3 redirects"):
        fetch_image_bytes(image_server.url("/r0"), make_settings(tmp_path))
    assert len(image_server.hits) == 4  # the first request plus three redirects, no more
    with pytest.raises(FetchFailed, match="more than 0 redirects"):
        fetch_image_bytes(image_server.url("/r4"), make_settings(tmp_path, fetch_max_redirects=0))


def test_redirect_loop_ends(image_server: LocalServer, tmp_path: Path) -> None:
    image_server.routes["/loop"] = redirect("/loop")
    with pytest.raises(FetchFailed, match="redirects"):
        fetch_image_bytes(image_server.url("/loop"), make_settings(tmp_path))


def test_redirect_to_another_scheme_is_refused(image_server: LocalServer, tmp_path: Path) -> None:
    image_server.routes["/ftp"] = redirect("ftp://127.0.0.1/cat.png")
    image_server.routes["/file"] = redirect("file:///etc/passwd")
    for path in ("/ftp", "/file"):
        with pytest.raises(FetchFailed, match="http"):
            fetch_image_bytes(image_server.url(path), make_settings(tmp_path))


# ---------------------------------------------------------------------------
# Address policy: refused before any connection is made


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/cat.png",
        "http://127.0.0.1:8000/cat.png",
        "http://[::1]/cat.png",
        "http://10.0.0.1/cat.png",
        "http://172.16.5.4/cat.png",
        "http://192.168.1.1/cat.png",
        "http://100.64.0.1/cat.png",  # carrier-grade NAT
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://224.0.0.1/cat.png",
        "http://0.0.0.0/cat.png",
        "http://255.255.255.255/cat.png",
        "http://[::]/cat.png",
        "http://[::ffff:127.0.0.1]/cat.png",
        "http://[::ffff:169.254.169.254]/cat.png",
        "http://[64:ff9b::7f00:1]/cat.png",  # NAT64 of 127.0.0.1
        "http://[2002:7f00:1::1]/cat.png",  # 6to4 of 127.0.0.1
        "http://[fe80::1]/cat.png",
        "http://[fc00::1]/cat.png",
        "http://[ff02::1]/cat.png",
        "http://2130706433/cat.png",  # 127.0.0.1 as one number
        "http://127.1/cat.png",
        "http://0x7f000001/cat.png",
        "https://localhost/cat.png",
        "http://LOCALHOST:8000/cat.png",
    ],
)
def test_private_and_special_addresses_are_refused(url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allow_private_urls=False)
    with pytest.raises(FetchFailed, match="refused address") as caught:
        fetch_image_bytes(url, settings)
    assert caught.value.public_message == NETWORK_ERROR


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("64:ff9b::808:808", True),  # NAT64 of a public address (IPv6-only hosts)
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("100.64.0.1", False),
        ("198.18.0.1", False),  # benchmarking
        ("192.0.2.1", False),  # documentation
        ("240.0.0.1", False),  # reserved
        ("239.255.255.250", False),
        ("::ffff:10.0.0.1", False),
        ("2001:db8::1", False),
        ("2001::1", False),  # Teredo
    ],
)
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_allow_private_urls_lets_an_operator_fetch_from_their_network(
    image_server: LocalServer, tmp_path: Path
) -> None:
    url = image_server.url("/cat.png")
    with pytest.raises(FetchFailed, match="refused address"):
        fetch_image_bytes(url, make_settings(tmp_path, allow_private_urls=False))
    assert image_server.hits == []  # refused before connecting
    assert fetch_image_bytes(url, make_settings(tmp_path, allow_private_urls=True)) == PNG


def test_a_name_with_any_private_answer_is_refused(tmp_path: Path) -> None:
    # One public and one private answer: never fall back to the private one.
    policy = AddressPolicy(resolver=lambda host, port: ["93.184.216.34", "10.0.0.5"])
    with pytest.raises(FetchFailed, match="refused address 10.0.0.5"):
        fetch_image_bytes(
            "https://images.example.test/cat.png",
            make_settings(tmp_path, allow_private_urls=False),
            policy=policy,
        )


def test_unresolvable_names_are_a_network_error(tmp_path: Path) -> None:
    def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(FetchFailed, match="cannot resolve") as caught:
        fetch_image_bytes(
            "https://nowhere.example.test/cat.png",
            make_settings(tmp_path, allow_private_urls=False),
            policy=AddressPolicy(resolver=nxdomain),
        )
    assert caught.value.public_message == NETWORK_ERROR


def test_connection_goes_to_the_checked_address_with_the_original_host(
    image_server: LocalServer, tmp_path: Path
) -> None:
    # The name exists only in our resolver: had anything looked it up again
    # (the DNS-rebinding gap), the network guard would have failed this test.
    policy = AddressPolicy(
        allowed_networks=LOOPBACK_ONLY.allowed_networks,
        resolver=lambda host, port: ["127.0.0.1"] if host == "cdn.example.test" else [],
    )
    url = f"http://cdn.example.test:{image_server.port}/cat.png"
    settings = make_settings(tmp_path, allow_private_urls=False)
    assert fetch_image_bytes(url, settings, policy=policy) == PNG
    assert image_server.hits == [("/cat.png", f"cdn.example.test:{image_server.port}")]


def test_every_new_connection_is_checked_again(image_server: LocalServer, tmp_path: Path) -> None:
    # A name that answers loopback first and a private address next time, as a
    # rebinding attacker would: the second connection (after a redirect) is refused.
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    policy = AddressPolicy(
        allowed_networks=LOOPBACK_ONLY.allowed_networks,
        resolver=lambda host, port: next(answers),
    )
    image_server.routes["/hop"] = redirect("/cat.png")
    with pytest.raises(FetchFailed, match="refused address 10.0.0.1"):
        fetch_image_bytes(
            f"http://rebind.example.test:{image_server.port}/hop",
            make_settings(tmp_path, allow_private_urls=False),
            policy=policy,
        )
    assert [path for path, _ in image_server.hits] == ["/hop"]


def test_a_redirect_to_a_refused_address_is_checked_again(
    image_server: LocalServer, tmp_path: Path
) -> None:
    # 127.0.0.1 is allowed for this test; the redirect targets are not. A
    # second server really listens on 127.0.0.2, so a missing check would show
    # up as a hit there.
    try:
        other, other_httpd = start_image_server("127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 is not available on this machine")
    try:
        other.routes["/cat.png"] = image_server.routes["/cat.png"]
        image_server.routes["/to-other"] = redirect(other.url("/cat.png"))
        image_server.routes["/to-private"] = redirect("http://10.0.0.1/cat.png")
        image_server.routes["/to-metadata"] = redirect("http://169.254.169.254/latest/meta-data/")
        settings = make_settings(tmp_path, allow_private_urls=False)
        first_hop = image_server.url("/cat.png")
        assert fetch_image_bytes(first_hop, settings, policy=LOOPBACK_ONLY) == PNG
        for path, refused in [
            ("/to-other", "127.0.0.2"),
            ("/to-private", "10.0.0.1"),
            ("/to-metadata", "169.254.169.254"),
        ]:
            with pytest.raises(FetchFailed, match=f"refused address {refused}"):
                fetch_image_bytes(image_server.url(path), settings, policy=LOOPBACK_ONLY)
        assert other.hits == []
    finally:
        other_httpd.shutdown()
        other_httpd.server_close()


def self_signed_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize(("cert_name", "works"), [("cdn.example.test", True), ("evil.test", False)])
def test_https_verifies_the_host_name_while_connecting_to_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cert_name: str, works: bool
) -> None:
    # The socket goes to the vetted 127.0.0.1, but TLS must still send the
    # URL's name as SNI and check the certificate against that name.
    cert, key = self_signed_cert(tmp_path, cert_name)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
    state, httpd = start_image_server("127.0.0.1")
    state.routes["/cat.png"] = lambda h: send(h, 200, PNG)
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    policy = AddressPolicy(
        allowed_networks=LOOPBACK_ONLY.allowed_networks,
        resolver=lambda host, port: ["127.0.0.1"] if host == "cdn.example.test" else [],
    )
    url = f"https://cdn.example.test:{state.port}/cat.png"
    settings = make_settings(tmp_path, allow_private_urls=False)
    try:
        if works:
            assert fetch_image_bytes(url, settings, policy=policy) == PNG
        else:
            with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED|certificate"):
                fetch_image_bytes(url, settings, policy=policy)
        assert server_names[:1] == ["cdn.example.test"]
    finally:
        httpd.shutdown()
        httpd.server_close()
