"""Regular expressions for the OpenAPI document, built from the very predicates
the server checks text with, so the documented ``pattern`` and the check agree.

The patterns use only what ECMA-262, Python's ``re`` and Rust's regex crates
read alike: classes, ``\\uXXXX`` escapes for the Basic Multilingual Plane and
literal characters beyond it, alternation, no lookaround.

A character class costs tens of milliseconds to compute (every code point of a
plane through a predicate), and only the OpenAPI document needs it: a schema
names its pattern with ``lazy_pattern`` and the document fills it in when it is
first built (``api/openapi.py``), so no process pays for it at import.

``whole_number`` is the one check of "a count written in digits" (query
parameters, headers from other servers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable


def whole_number(text: str) -> int | None:
    """``text`` as a whole number, or None when it is not ASCII digits: ``str.isdigit``
    alone lets "²" through to ``int``, which refuses it."""
    return int(text) if text.isascii() and text.isdigit() else None


# ``{PATTERN: name}`` in a schema: ``"pattern"``, computed by the builder registered
# under ``name``, when the document is built.
PATTERN = "x-openimagine-pattern"
_BUILDERS: dict[str, Callable[[], str]] = {}


def lazy_pattern(name: str, build: Callable[[], str]) -> dict[str, str]:
    """The schema fragment that stands for ``"pattern": build()`` until the document
    is built (``build`` is cached: computed once per process)."""
    _BUILDERS[name] = functools.cache(build)
    return {PATTERN: name}


def pattern(name: str) -> str:
    """The pattern registered under ``name``."""
    return _BUILDERS[name]()


# Space and format characters exist only in these planes (0: BMP, 1: SMP, 14: SSP).
TEXT_PLANES = (0, 1, 14)


def _escape(code: int) -> str:
    if code > 0xFFFF:
        return chr(code)
    return f"\\u{code:04x}"


def char_class(
    predicate: Callable[[str], bool], *, negate: bool, planes: Iterable[int] = TEXT_PLANES
) -> str:
    """``[...]`` (``[^...]`` with ``negate``) of the characters of ``planes`` for which
    ``predicate`` holds, as ranges."""
    ranges: list[tuple[int, int]] = []
    for plane in planes:
        for code in range(plane << 16, (plane + 1) << 16):
            if 0xD800 <= code <= 0xDFFF or not predicate(chr(code)):
                continue
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    body = "".join(
        _escape(low) if low == high else f"{_escape(low)}-{_escape(high)}" for low, high in ranges
    )
    return f"[{'^' if negate else ''}{body}]"


def int_range(low: int, high: int) -> str:
    """A group matching the decimal numbers ``low..high`` written without leading zeros."""
    parts: list[str] = ["0"] if low == 0 else []
    start = max(low, 1)
    while start <= high:  # spans that share a prefix and end in whole runs of any digit
        step = 1
        while start % (step * 10) == 0 and start + step * 10 - 1 <= high:
            step *= 10
        digits = len(str(step)) - 1
        parts.append(str(start)[: len(str(start)) - digits] + "[0-9]" * digits)
        start += step
    return "(?:" + "|".join(parts) + ")"
