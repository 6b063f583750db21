"""schemathesis hooks for ``make fuzz`` (``tests/fuzz.py`` loads them).

A schema can say that ``input_reference`` is a file, not that its bytes are a
JPEG, PNG or WebP image; random bytes are refused with 400, rightly. So every
generated file becomes a small real PNG: the server then sees what the document
means, and a 400 for a request the schema allows stays a failure.
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
