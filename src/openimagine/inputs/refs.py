"""Image references in a request: their shape (checked at submission) and the
errors that end a task while its inputs load."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from openimagine.patterns import char_class, int_range, lazy_pattern

# The contract's limit on ``images`` references (engines' ``EngineInfo.max_images``).
MAX_IMAGES = 7
MAX_URL_LENGTH = 8192


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


class ImageTooLarge(UnsupportedImage):
    """A data URI whose payload is over the byte limit (``fetch_max_bytes``)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"data URI holds {size} bytes, over the {limit} limit")
        self.size, self.limit = size, limit


class FetchFailed(InputError):
    """The URL could not be fetched: DNS, refused, timeout, non-2xx, too large, refused address."""

    public_message = "Network error, please try again later."


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
    return url_problem(ref)


def _bad_url_char(ch: str) -> bool:
    return ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F


def url_problem(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(_bad_url_char(ch) for ch in url):
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


def _netloc_char(exclude: str) -> str:
    # ASCII only: a netloc with other characters may be refused by urlsplit's NFKC check.
    return char_class(
        lambda ch: ch.isascii() and ch.isprintable() and ch not in exclude,
        negate=False,
        planes=(0,),
    )


def url_pattern() -> str:
    """``url_problem``'s rules as a pattern (narrower only in keeping the host ASCII and
    unbracketed): http(s), a host, a port of 0..65535, no space or control character."""
    return (
        "^[hH][tT][tT][pP][sS]?://"
        f"(?:{_netloc_char(' /?#[]')}*@)?{_netloc_char(' /?#[]@:')}+"
        f"(?::0*{int_range(1, 65535)}?)?"
        f"(?:[/?#]{char_class(_bad_url_char, negate=True, planes=(0,))}*)?$"
    )


URL = lazy_pattern("url", url_pattern)
# ``_DATA_URI`` with a payload that decodes (no line breaks, no NUL).
DATA_URI_PATTERN = (
    "^[dD][aA][tT][aA]:[iI][mM][aA][gG][eE]/[a-zA-Z0-9][a-zA-Z0-9.+-]*(?:;[^;,\\u0000]*)*"
    ";[bB][aA][sS][eE]64,(?:[A-Za-z0-9+/]{4})*"
    "(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
)


def url_schema(max_length: int) -> dict[str, object]:
    """The JSON schema of an http(s) URL that ``url_problem`` accepts."""
    return {"type": "string", "maxLength": max_length, **URL}


def image_ref_schema() -> dict[str, object]:
    """The JSON schema of one reference ``parse_image_refs`` accepts."""
    return {
        "anyOf": [url_schema(MAX_URL_LENGTH), {"type": "string", "pattern": DATA_URI_PATTERN}],
        "description": "an http(s) URL or a data:image/...;base64, URI",
    }


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
        raise ImageTooLarge(len(data), max_bytes)
    return data
