"""JSON request bodies and query parameters, read the one safe way for every route of
both faces, and their text trimmed the one way."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from starlette.requests import Request

from openimagine.errors import InvalidRequest
from openimagine.patterns import char_class, lazy_pattern, whole_number

# No field of either face nests more than three levels; unknown fields are ignored,
# but a value nested deeper than this is refused rather than handed to code (repr,
# fingerprints, the JSON parser itself near Python's recursion limit) that recurses.
MAX_DEPTH = 100
MALFORMED = "Malformed JSON body"


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def parse_json(raw: bytes, empty: Any = None) -> Any:
    """The JSON value of a request body, ``empty`` for a blank one. Anything else
    that is not JSON, including nesting past ``MAX_DEPTH`` (about 1000 levels would
    otherwise be a RecursionError and a 500), is 400 "Malformed JSON body".
    Routes call this after authenticating, so an anonymous body costs no parse."""
    if not raw.strip():
        return empty
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest(MALFORMED) from None
    if isinstance(value, (dict, list)) and _too_deep(value):
        raise InvalidRequest(f"{MALFORMED}: nested more than {MAX_DEPTH} levels deep")
    return value


def json_object(
    raw: bytes, refusal: str = "The request body must be a JSON object"
) -> dict[str, Any]:
    """``parse_json`` of a body that must be an object (``refusal`` when it is not)."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest(refusal)
    return body


def query(request: Request, *names: str) -> dict[str, str]:
    """The query parameters ``names`` that the request gives. One given twice is 400:
    which would be meant? (``query_params.get`` would quietly take the last.)"""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in names:
            if name in found:
                raise InvalidRequest(f"The {name} parameter must be given once")
            found[name] = value
    return found


def _blank(char: str) -> bool:
    # Cf: zero-width space and joiners, BOM, bidi marks: invisible, so a prompt of
    # nothing else is as empty as one of spaces (and must not be billed).
    return char.isspace() or unicodedata.category(char) == "Cf"


def not_blank_pattern() -> str:
    """A character ``trimmed`` keeps: a text matching it somewhere is not empty once
    trimmed."""
    return char_class(_blank, negate=True)


NOT_BLANK = lazy_pattern("not-blank", not_blank_pattern)


def text_schema(max_length: int) -> dict[str, Any]:
    """The JSON schema of a required text (a prompt): not empty once ``trimmed``, at
    most ``max_length`` characters (counted once trimmed), no NUL."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        **NOT_BLANK,
        "not": {"pattern": "\\u0000"},
        "description": "not empty once whitespace and invisible format characters "
        "are trimmed; no NUL",
    }


def trimmed(text: str) -> str:
    """``text`` without leading and trailing whitespace and Unicode format characters;
    those inside (a zero-width joiner in an emoji) stay."""
    start, end = 0, len(text)
    while start < end and _blank(text[start]):
        start += 1
    while end > start and _blank(text[end - 1]):
        end -= 1
    return text[start:end]


# Every list (tasks, videos, webhook deliveries) pages the same way.
MAX_LIST, DEFAULT_LIST = 100, 20
LIMIT_PARAMETER: dict[str, Any] = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": DEFAULT_LIST},
}


def page_size(text: str | None) -> int:
    """A list's ``limit`` query parameter: ``DEFAULT_LIST`` when absent, else a whole
    number from 1 to ``MAX_LIST`` (400 otherwise)."""
    count = DEFAULT_LIST if text is None else whole_number(text)
    if count is None or not 1 <= count <= MAX_LIST:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIST}")
    return count
