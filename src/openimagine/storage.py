"""Where inputs and outputs live, and the URLs that hand them out.

Keys look like ``outputs/task_abc/0.mp4`` or ``inputs/task_abc/0.png``. Two
implementations of one small interface (``Storage``), chosen from the settings
in ``storage_from_settings``:

- ``LocalStorage``: files in a folder (the data folder, or ``storage_dir``
  mounted by every replica). A URL is ``{public_url}/files/{key}?expires=EPOCH&sig=HMAC``;
  the HMAC (SHA-256, keyed with the secret key) covers the key and the expiry,
  so a URL cannot be moved to another file or made to live longer.
- ``S3Storage``: objects in an S3-compatible bucket, handed out as presigned
  GET URLs.

Both hand out URLs that live at least ``url_ttl_seconds``, with the expiry
rounded up to a step of a twelfth of it (``url_expiry``): every poll within
that step gets the very same URL, so browsers and CDNs can cache the video,
and it is signed once instead of on every status request.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from openimagine.errors import Forbidden, NotFound

if TYPE_CHECKING:
    from openimagine.settings import Settings

log = logging.getLogger("openimagine.storage")

# A task's files: numbered inputs and videos, and the stills of its first video.
_KEY_RE = re.compile(
    r"^(inputs|outputs)/task_[A-Za-z0-9_-]{8,40}/"
    r"([0-9]{1,3}|thumbnail|spritesheet)\.[a-z0-9]{2,4}$"
)

MEDIA_TYPES = {
    "mp4": "video/mp4",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "webp": "image/webp",
}


def valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def media_type(key: str) -> str:
    return MEDIA_TYPES.get(key.rpartition(".")[2], "application/octet-stream")


# Scratch folders under ``staging_dir`` are named ``host~pid~token~<random>`` by the
# process that renders into them (``scratch_prefix``). A process cleans the folder
# when its runners start (``clean_staging``), and a storage folder may be shared by
# workers on several hosts, so it only removes what is certainly dead: folders of
# this host whose process has exited (or an earlier process with this pid: the token
# differs), and any folder, of any host or unnamed, left untouched this long.
STAGING_MAX_AGE_SECONDS = 6 * 3600
_PROCESS_TOKEN = secrets.token_hex(4)


def scratch_prefix() -> str:
    return f"{socket.gethostname()}~{os.getpid()}~{_PROCESS_TOKEN}~"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def _last_touched(path: Path) -> float:
    """The newest mtime of ``path`` and what it holds (a render writes into a file)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for child in path.rglob("*"):
            with contextlib.suppress(OSError):
                newest = max(newest, child.lstat().st_mtime)
    return newest


def _stale(entry: Path, now: float) -> bool:
    host, pid, token, *rest = entry.name.split("~") + ["", "", ""]
    if host == socket.gethostname() and pid.isdigit():
        if token == _PROCESS_TOKEN and int(pid) == os.getpid():
            return False  # this process's own, live
        if int(pid) == os.getpid() or not _pid_alive(int(pid)):
            return True
    return now - _last_touched(entry) > STAGING_MAX_AGE_SECONDS


_staging_cleaned: set[Path] = set()
_staging_lock = threading.Lock()


def clean_staging_once(staging: Path) -> None:
    """``clean_staging`` the first time this process asks for ``staging`` (each
    model's runner asks; one scan at start is enough)."""
    with _staging_lock:
        if staging in _staging_cleaned:
            return
        _staging_cleaned.add(staging)
    removed = clean_staging(staging)
    if removed:
        log.info("removed %d stale scratch folder(s) from %s", len(removed), staging)


def clean_staging(staging: Path, *, now: float | None = None) -> list[str]:
    """Remove the dead scratch folders (partial MP4s of killed renders) under
    ``staging``; the names removed."""
    removed: list[str] = []
    if not staging.is_dir():
        return removed
    now = time.time() if now is None else now
    for entry in staging.iterdir():
        try:
            if not _stale(entry, now):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:  # gone meanwhile, or cleaned by another process
            continue
        removed.append(entry.name)
    return removed


class Storage(Protocol):
    """What the API and the workers need from a place for inputs and outputs."""

    # Where to write a file before ``put_file`` (None: the system's temp folder).
    staging_dir: Path | None

    def put_file(self, key: str, source: Path) -> None:
        """Store the finished file ``source`` under ``key``; ``source`` is consumed."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def read_bytes(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def url(self, key: str) -> str:
        """A URL a client can download ``key`` from, for at least the configured TTL."""
        ...


# Signed URLs kept per storage (one per output of recently polled tasks).
SIGNED_URL_CACHE_SIZE = 4096


def url_expiry(now: float, ttl_seconds: int) -> int:
    """Epoch seconds at which a URL handed out ``now`` expires: ``ttl_seconds``
    ahead, rounded up to a step of a twelfth of it (at least a second)."""
    step = max(1, ttl_seconds // 12)
    return -(-(int(now) + ttl_seconds) // step) * step


def storage_from_settings(settings: Settings) -> Storage:
    """The one place that picks the storage: S3 when a bucket is set, else a folder."""
    if settings.s3_bucket:
        return S3Storage(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            ttl_seconds=settings.url_ttl_seconds,
        )
    return LocalStorage(
        settings.outputs_dir,
        secret=settings.resolved_secret_key(),
        public_url=settings.resolved_public_url,
        ttl_seconds=settings.url_ttl_seconds,
    )


class LocalStorage:
    """Files in a folder: the data folder by default, or a folder shared by replicas."""

    def __init__(self, root: Path, *, secret: str, public_url: str, ttl_seconds: int) -> None:
        self.root = root
        self._secret = secret.encode()
        self.public_url = public_url.rstrip("/")
        self.ttl_seconds = ttl_seconds
        # Inside the root (so that put_file is a rename), under a name no key can take.
        self.staging_dir: Path | None = root / ".staging"
        self._signed_url = functools.lru_cache(SIGNED_URL_CACHE_SIZE)(self._sign_url)

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

    def put_file(self, key: str, source: Path) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, path)
        except OSError:
            # Another file system (a staging folder elsewhere): copy, then rename.
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, path)
            source.unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # The task's folder goes with its last file (one task's files have one writer
        # at a time: the request that stores its inputs, the worker that stores outputs).
        with contextlib.suppress(OSError):  # not empty, or already gone
            path.parent.rmdir()

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key: str) -> str:
        return self._signed_url(key, url_expiry(time.time(), self.ttl_seconds))

    def _sign_url(self, key: str, expires: int) -> str:
        return (
            f"{self.public_url}/files/{quote(key)}"
            f"?expires={expires}&sig={self._signature(key, expires)}"
        )

    def verify(self, key: str, expires: str | None, sig: str | None) -> Path:
        """The file's path when the signature is good and fresh; ``Forbidden`` otherwise."""
        # ASCII digits only, and few of them: str.isdigit() passes "²", which int()
        # refuses, and int() refuses more than 4300 digits (both were a 500).
        if (
            not expires
            or not sig
            or not (expires.isascii() and expires.isdigit() and len(expires) <= 20)
        ):
            raise Forbidden("Forbidden: this file URL is not signed")
        if not hmac.compare_digest(self._signature(key, int(expires)), sig):
            raise Forbidden("Forbidden: this file URL's signature is not valid")
        if int(expires) < time.time():
            raise Forbidden("Forbidden: this file URL has expired; ask /v1/status for a fresh one")
        path = self.path(key)
        if not path.is_file():
            raise NotFound("File not found")
        return path


class S3Storage:
    """Objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...), through boto3.

    Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role, ...). The
    client is thread-safe; build one per process (never before a fork).
    """

    staging_dir: Path | None = None

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        ttl_seconds: int = 3600,
    ) -> None:
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError:
            raise RuntimeError(
                "OPENIMAGINE_S3_BUCKET needs boto3: pip install 'openimagine[scale]'"
            ) from None

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.ttl_seconds = ttl_seconds
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "retries": {"max_attempts": 5, "mode": "standard"},
        }
        if endpoint_url:
            # Most S3-compatible servers want path-style URLs (no bucket subdomain).
            options["s3"] = {"addressing_style": "path"}
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=Config(**options)
        )
        self._presigned_url = functools.lru_cache(SIGNED_URL_CACHE_SIZE)(self._presign_url)

    def _object(self, key: str) -> str:
        if not valid_key(key):
            raise NotFound("File not found")
        return self.prefix + key

    def put_file(self, key: str, source: Path) -> None:
        self.client.upload_file(
            str(source), self.bucket, self._object(key), ExtraArgs={"ContentType": media_type(key)}
        )
        source.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=media_type(key)
        )

    def read_bytes(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"]
        with body:
            return body.read()  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def url(self, key: str) -> str:
        return self._presigned_url(key, url_expiry(time.time(), self.ttl_seconds))

    def _presign_url(self, key: str, expires: int) -> str:
        # Local computation, no request to the server (but about a tenth of a
        # millisecond: worth signing once per step). Valid until ``expires``.
        return self.client.generate_presigned_url(  # type: ignore[no-any-return]
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object(key)},
            ExpiresIn=max(1, expires - int(time.time())),
        )
