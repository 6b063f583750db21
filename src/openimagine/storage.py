"""Where inputs and outputs live, and the signed URLs that hand them out.

Keys look like ``outputs/task_abc/0.mp4`` or ``inputs/task_abc/0.png``. A URL
is ``{public_url}/files/{key}?expires=EPOCH&sig=HMAC``; the HMAC (SHA-256,
keyed with the secret key) covers the key and the expiry, so a URL cannot be
moved to another file or made to live longer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

from openimagine.errors import Forbidden, NotFound

_KEY_RE = re.compile(r"^(inputs|outputs)/task_[A-Za-z0-9_-]{8,40}/[0-9]{1,3}\.[a-z0-9]{2,4}$")


def valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


class LocalStorage:
    """Files in a folder: the data folder by default, or a folder shared by replicas."""

    def __init__(self, root: Path, *, secret: str, public_url: str, ttl_seconds: int) -> None:
        self.root = root
        self._secret = secret.encode()
        self.public_url = public_url.rstrip("/")
        self.ttl_seconds = ttl_seconds

    def path(self, key: str) -> Path:
        if not valid_key(key):
            raise NotFound("File not found")
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key: str, *, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        return (
            f"{self.public_url}/files/{quote(key)}"
            f"?expires={expires}&sig={self._signature(key, expires)}"
        )

    def verify(self, key: str, expires: str | None, sig: str | None) -> Path:
        """The file's path when the signature is good and fresh; ``Forbidden`` otherwise."""
        if not expires or not sig or not expires.isdigit():
            raise Forbidden("Forbidden: this file URL is not signed")
        if not hmac.compare_digest(self._signature(key, int(expires)), sig):
            raise Forbidden("Forbidden: this file URL's signature is not valid")
        if int(expires) < time.time():
            raise Forbidden("Forbidden: this file URL has expired; ask /v1/status for a fresh one")
        path = self.path(key)
        if not path.is_file():
            raise NotFound("File not found")
        return path
