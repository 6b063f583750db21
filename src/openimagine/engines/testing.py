"""Engines for testing a deployment's failure handling, not for making videos.

- ``test-sleep``: the preview engine after a pause of
  ``OPENIMAGINE_TEST_SLEEP_SECONDS`` (default 5), honouring cancellation.
- ``test-fail``: raises on every job (the task fails and is refunded).
- ``test-crash``: kills its own process mid-task, as an out-of-memory kill would.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

from openimagine.engines.base import Cancelled, Clip, EngineInfo, Job
from openimagine.engines.preview import INFO as PREVIEW_INFO
from openimagine.engines.preview import PreviewEngine
from openimagine.settings import Settings

SLEEP_INFO = EngineInfo(
    name="test-sleep",
    description="preview after a pause (tests)",
    modes=PREVIEW_INFO.modes,
    ratios=PREVIEW_INFO.ratios,
)
FAIL_INFO = EngineInfo(name="test-fail", description="always raises (tests)")
CRASH_INFO = EngineInfo(name="test-crash", description="kills its own process (tests)")


class SleepEngine:
    info = SLEEP_INFO

    def __init__(self, settings: Settings) -> None:
        self.preview = PreviewEngine(settings)
        self.seconds = settings.test_sleep_seconds

    def generate(self, job: Job) -> list[Clip]:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if job.is_cancelled():
                raise Cancelled()
            remaining = deadline - time.monotonic()
            job.on_progress(0.5 * (1 - remaining / self.seconds))
            time.sleep(min(0.05, max(0.0, remaining)))
        # The pause was the first half of the progress bar; rendering is the second.
        report = job.on_progress
        return self.preview.generate(
            replace(job, on_progress=lambda fraction: report(0.5 + 0.5 * fraction))
        )


class FailEngine:
    info = FAIL_INFO

    def __init__(self, settings: Settings) -> None:
        pass

    def generate(self, job: Job) -> list[Clip]:
        raise RuntimeError("test-fail engine: failing on purpose")


class CrashEngine:
    info = CRASH_INFO

    def __init__(self, settings: Settings) -> None:
        pass

    def generate(self, job: Job) -> list[Clip]:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")
