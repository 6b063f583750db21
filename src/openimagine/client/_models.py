"""Typed views of the API's ``data`` objects.

Parsing is lenient: a field the server leaves out gets its default, and fields
the SDK does not know are kept in ``raw``, so a newer server never breaks an
older client.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "failed"})


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)  # 3.11+ reads the "Z"
    except ValueError:
        return None


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@dataclass(frozen=True)
class TaskRequest:
    """What was asked for, as the server echoes it."""

    prompt: str | None = None
    mode: str | None = None
    ratio: str | None = None
    images: list[str] = field(default_factory=list)

    @classmethod
    def from_data(cls, data: object) -> TaskRequest:
        if not isinstance(data, dict):
            return cls()
        images = data.get("images") or []
        return cls(
            prompt=data.get("prompt"),
            mode=data.get("mode"),
            ratio=data.get("ratio"),
            images=[images] if isinstance(images, str) else list(images),
        )


@dataclass(frozen=True)
class Task:
    """A generation task. ``response`` holds the video URLs once ``completed``."""

    task_id: str
    status: str = "pending"
    created_at: datetime | None = None
    consumed_credits: int = 0
    error_message: str | None = None
    request: TaskRequest = field(default_factory=TaskRequest)
    response: list[str] = field(default_factory=list)
    progress: int = 0
    # True once the server's retention deleted the task's files (``response`` is then []).
    files_expired: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_data(cls, data: dict[str, Any], *, task_id: str | None = None) -> Task:
        response = data.get("response") or []
        return cls(
            task_id=str(data.get("task_id") or task_id or ""),
            status=str(data.get("status") or "pending"),
            created_at=_parse_time(data.get("created_at")),
            consumed_credits=_int(data.get("consumed_credits")),
            error_message=data.get("error_message"),
            request=TaskRequest.from_data(data.get("request")),
            response=[response] if isinstance(response, str) else list(response),
            progress=_int(data.get("progress")),
            files_expired=data.get("files_expired") is True,
            raw=dict(data),
        )

    @property
    def done(self) -> bool:
        """True once the task is ``completed`` or ``failed``."""
        return self.status in TERMINAL_STATUSES

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        """The wire shape (``created_at`` as RFC 3339), e.g. for ``--json`` output."""
        out = asdict(self)
        out.pop("raw")
        out["created_at"] = (
            self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.created_at else None
        )
        return out


@dataclass(frozen=True)
class RecentTask:
    task_id: str
    status: str
    created_at: datetime | None


@dataclass(frozen=True)
class Account:
    """``GET /v1/account`` (an openimagine addition; the hosted API may not have it)."""

    plan: str
    balance: int
    requests_per_minute: int | None = None
    price: int | None = None
    tasks: dict[str, int] = field(default_factory=dict)
    credits_spent: int = 0
    recent_tasks: list[RecentTask] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Account:
        usage = data.get("usage") or {}
        rate = data.get("rate_limit") or {}
        return cls(
            plan=str(data.get("plan") or ""),
            balance=_int(data.get("balance")),
            requests_per_minute=rate.get("requests_per_minute"),
            price=data.get("price"),
            tasks=dict(usage.get("tasks") or {}),
            credits_spent=_int(usage.get("credits_spent")),
            recent_tasks=[
                RecentTask(
                    str(t.get("task_id")), str(t.get("status")), _parse_time(t.get("created_at"))
                )
                for t in usage.get("recent_tasks") or []
                if isinstance(t, dict)
            ],
            raw=dict(data),
        )
