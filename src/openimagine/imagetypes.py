"""Which image type bytes hold, by their magic numbers alone: shared by the
server's input checks and the client SDK (so it has no dependencies)."""

from __future__ import annotations


def sniff_image_type(data: bytes) -> str | None:
    """ "jpeg", "png" or "webp" judged by magic bytes only (never by name or header)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None
