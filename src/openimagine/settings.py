"""Every setting of openimagine, in one validated class.

Values come from ``OPENIMAGINE_*`` environment variables (or a ``.env`` file);
tests and embedders build a ``Settings`` themselves instead of patching the
environment.
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLANS = ("free", "pro", "enterprise")
DEFAULT_RATE_LIMITS = {"free": 100, "pro": 1000, "enterprise": 5000}
DEFAULT_MAX_IN_FLIGHT = {"free": 2, "pro": 20, "enterprise": 100}


def parse_plan_numbers(value: object, defaults: dict[str, int], what: str) -> dict[str, int]:
    """Accept ``free=100,pro=1000`` (environment form) or a mapping; plans not named
    keep their ``defaults``. ``what`` names the number in errors."""
    items: list[tuple[object, object]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str):
        for part in value.split(","):
            if not part.strip():
                continue
            name, sep, number = part.partition("=")
            if not sep:
                raise ValueError(f"expected PLAN={what.upper()}, got {part.strip()!r}")
            items.append((name, number))
    else:
        raise ValueError(f"expected PLAN={what.upper()} pairs")
    numbers = dict(defaults)
    for raw_name, raw_count in items:
        name = str(raw_name).strip()
        if name not in PLANS:
            raise ValueError(f"unknown plan {name!r} (plans: {', '.join(PLANS)})")
        count = int(str(raw_count).strip())
        if count < 1:
            raise ValueError(f"{what.replace('_', ' ')} for {name} must be at least 1")
        numbers[name] = count
    return numbers


def parse_rate_limits(value: object) -> dict[str, int]:
    """Accept ``free=100,pro=1000`` (environment form) or a mapping."""
    return parse_plan_numbers(value, DEFAULT_RATE_LIMITS, "requests_per_minute")


def parse_max_in_flight(value: object) -> dict[str, int]:
    """Accept ``free=2,pro=20`` (environment form) or a mapping."""
    return parse_plan_numbers(value, DEFAULT_MAX_IN_FLIGHT, "unfinished_tasks")


DEFAULT_WEBHOOK_SCHEDULE = (
    0.0,
    5.0,
    300.0,
    1800.0,
    7200.0,
    18000.0,
    36000.0,
    50400.0,
    72000.0,
    86400.0,
)


def parse_retry_schedule(value: object) -> tuple[float, ...]:
    """Accept ``0,5,300`` (environment form) or a sequence of seconds: at least one,
    none negative."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)):
        raise ValueError("expected comma-separated seconds, e.g. 0,5,300")
    try:
        delays = tuple(float(str(part).strip()) for part in parts if str(part).strip())
    except ValueError:
        raise ValueError(f"expected comma-separated seconds, got {value!r}") from None
    if not delays:
        raise ValueError("the retry schedule needs at least one entry (the first try)")
    if any(delay < 0 for delay in delays):
        raise ValueError("retry delays must not be negative")
    return delays


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENIMAGINE_", env_file=".env", extra="ignore")

    # Where things live.
    data_dir: Path = Path(".openimagine")
    database_url: str | None = None
    public_url: str | None = None
    secret_key: str | None = None
    # Inputs and outputs: a folder (shared by replicas when they mount it), or
    # S3-compatible object storage when ``s3_bucket`` is set.
    storage_dir: Path | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""

    # Serving.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Threads for the blocking part of requests (database, Redis limiter).
    api_threads: int = Field(4, ge=1, le=64)
    # Open connections (live status streams included) before new ones get 503.
    max_connections: int = Field(1000, ge=1)
    # Addresses of reverse proxies whose X-Forwarded-For/-Proto are believed
    # (comma-separated IPs or networks, "*" for any); empty: none.
    forwarded_allow_ips: str = ""
    # Bearer token GET /metrics asks for; without it /metrics answers loopback only.
    metrics_token: str | None = None
    # One JSON line per request on stderr (``openimagine serve``).
    access_log: bool = True

    # Work.
    workers: int = Field(1, ge=0)
    engine: str = "preview"
    # Several models (local engines and upstream relays), each with its price
    # and concurrency: a TOML file (see ``catalog.py``). Without it, one model
    # named after ``engine``.
    models_file: Path | None = None
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    poll_seconds: float = Field(0.5, gt=0)
    # Scale-out dispatch: Celery on this broker (amqp://...) instead of in-process workers.
    broker_url: str | None = None
    # A task pending this long since its last dispatch may have lost its message:
    # the workers' sweeper publishes it again.
    redispatch_seconds: float = Field(30.0, gt=0)

    # Billing and limits.
    price: int = Field(40, ge=0)
    rate_limits: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS)
    )
    ratelimit_url: str = "memory://"
    # Key prefix in a shared limiter storage (deployments sharing one Redis).
    ratelimit_prefix: str | None = None
    auth_failure_limit: int = Field(30, ge=1)
    # Backpressure: an account's unfinished (pending + processing) tasks, per
    # plan; beyond it a submission is refused with 429 TOO_MANY_TASKS.
    max_in_flight: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_IN_FLIGHT)
    )
    # Pending tasks a model may hold; beyond it 503 SERVICE_UNAVAILABLE. None:
    # unbounded. A model in the models file may set its own (``max_queue``).
    max_queue: int | None = Field(None, ge=1)
    # Workers take enterprise tasks before pro before free (fairly within a
    # plan); off: every account is equal.
    plan_priority: bool = False

    # Output.
    variations: int = Field(2, ge=1, le=8)
    duration: float = Field(6.0, gt=0, le=60)
    fps: int = Field(24, ge=1, le=60)
    resolution: int = Field(480, ge=64, le=2160)
    url_ttl_seconds: int = Field(3600, ge=1)
    # Days a finished task's stored inputs and outputs are kept (fractions allowed);
    # then the workers' janitor deletes them, and the task's status says so
    # (``services/retention.py``). None: kept forever.
    retention_days: float | None = Field(None, gt=0)

    # Inputs and policy.
    allow_private_urls: bool = False
    fetch_timeout: float = Field(10.0, gt=0)
    fetch_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    fetch_max_redirects: int = Field(5, ge=0)
    max_image_pixels: int = Field(40_000_000, ge=1)
    moderation_list: Path | None = None

    # Diffusers engines.
    model_path: Path | None = None
    i2v_model_path: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False
    profiles: Path | None = None

    # Webhooks: seconds before each try, the first counted from the task's end and
    # each later one from the try before (Standard Webhooks' schedule: 10 tries over
    # about 3 days); a receiver's Retry-After may lengthen a wait.
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_WEBHOOK_SCHEDULE
    # Seconds one try may take (connect, send, the answer's headers).
    webhook_timeout: float = Field(15.0, gt=0, le=120)

    # The test-sleep engine's pause (see engines/testing.py).
    test_sleep_seconds: float = Field(5.0, ge=0)

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _parse_rate_limits(cls, value: object) -> dict[str, int]:
        return parse_rate_limits(value)

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_webhook_schedule(cls, value: object) -> tuple[float, ...]:
        return parse_retry_schedule(value)

    @field_validator("max_in_flight", mode="before")
    @classmethod
    def _parse_max_in_flight(cls, value: object) -> dict[str, int]:
        return parse_max_in_flight(value)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        if self.secret_key is not None and len(self.secret_key) < 16 and not self.is_local:
            raise ValueError(
                "secret_key must be at least 16 characters when serving beyond loopback"
            )
        return self

    @property
    def is_local(self) -> bool:
        """True when the server only listens on a loopback address."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'openimagine.db').resolve()}"

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def retention(self) -> timedelta | None:
        """How long finished tasks keep their files; None: forever."""
        return timedelta(days=self.retention_days) if self.retention_days is not None else None

    @property
    def outputs_dir(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "files"

    def resolved_secret_key(self) -> str:
        """The signing key: the setting, else one generated once and kept in the data folder."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        # O_EXCL so that two processes starting together agree on one key.
        try:
            with open(path, "x") as handle:
                handle.write(key)
            path.chmod(0o600)
        except FileExistsError:
            return path.read_text().strip()
        return key
