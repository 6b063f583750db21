"""schemathesis hooks for ``make fuzz`` (``tests/fuzz.py`` loads them).

A schema can say that ``input_reference`` is a file, not that its bytes are a
JPEG, PNG or WebP image; random bytes are refused with 400, rightly. So every
generated file becomes a small real PNG: the server then sees what the document
means, and a 400 for a request the schema allows stays a failure. And a form's
fields are text, so a multipart case whose "invalid" field is not (``filter_case``)
is left out rather than sent as what may be a valid request.
"""

from __future__ import annotations

import io
from typing import Any

import schemathesis
from PIL import Image
from schemathesis.transport.serialization import Binary  # a generated file part

_buffer = io.BytesIO()
Image.new("RGB", (16, 16), (40, 120, 200)).save(_buffer, format="PNG")
PNG = _buffer.getvalue()


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("input_reference"), Binary):
        return {**body, "input_reference": Binary(PNG)}
    return body


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """A form carries text only: a field that is a number, null or a list goes on the
    wire as text, as no field, or as the field repeated, which may well be a valid
    request. Such a case can claim to be schema-invalid and be right only on paper,
    so multipart cases keep to text (JSON bodies are mutated as they please)."""
    if case.media_type == "multipart/form-data" and isinstance(case.body, dict):
        return all(isinstance(value, str) for value in case.body.values())
    return True
