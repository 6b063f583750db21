"""One task's life, start to end, run in a worker thread:
moderate → load inputs → engine.generate → encode MP4s → store → finish or refund.

The final state is written from this thread, not from the coroutine that
waits for it, so cancelling that coroutine cannot lose the result.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from openimagine import inputs
from openimagine.engines.base import Cancelled, Engine, Job
from openimagine.media.mp4 import encode_mp4
from openimagine.moderation import ModerationPolicy
from openimagine.services import lifecycle
from openimagine.services.lifecycle import ENGINE_FAILED, Claim
from openimagine.services.tasks import STORED_PREFIX
from openimagine.settings import Settings
from openimagine.storage import Storage
from openimagine.store.db import Database

log = logging.getLogger("openimagine.worker")

INAPPROPRIATE = "Inappropriate content, please try another prompt."
# Share of the progress bar before the engine starts (moderation, inputs).
INPUTS_SHARE = 0.05


@dataclass
class Outcome:
    status: str  # "completed", "failed", "released" or "lost" (fenced out)
    detail: str = ""


class Runner:
    def __init__(self, settings: Settings, db: Database, storage: Storage, engine: Engine,
                 policy: ModerationPolicy) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.engine = engine
        self.policy = policy
        # An engine such as a GPU pipeline runs one job at a time per process.
        self._engine_lock = threading.Lock()

    def _load_image(self, ref: str) -> Image.Image:
        if ref.startswith(STORED_PREFIX):
            data = self.storage.read_bytes(ref[len(STORED_PREFIX):])
        else:
            data = inputs.fetch_image_bytes(ref, self.settings)
        return inputs.decode_image(data, max_pixels=self.settings.max_image_pixels)

    def _fail(self, claim: Claim, message: str, detail: str) -> Outcome:
        log.info("task %s failed: %s (%s)", claim.task_id, message, detail)
        written = lifecycle.fail(self.db, claim, message=message, detail=detail)
        return Outcome("failed" if written else "lost", detail)

    def run(self, claim: Claim, report: Callable[[float], None],
            cancelled: threading.Event) -> Outcome:
        try:
            return self._run(claim, report, cancelled)
        except Cancelled:
            released = lifecycle.release(self.db, claim)
            return Outcome("released" if released else "lost", "cancelled")
        except inputs.InputError as exc:
            return self._fail(claim, exc.public_message, str(exc))
        except Exception as exc:
            log.exception("task %s: engine or encoding failed", claim.task_id)
            return self._fail(claim, ENGINE_FAILED, f"{type(exc).__name__}: {exc}")

    def _run(self, claim: Claim, report: Callable[[float], None],
             cancelled: threading.Event) -> Outcome:
        verdict = self.policy.check(claim.prompt)
        if not verdict.allowed:
            return self._fail(claim, INAPPROPRIATE, verdict.reason or "moderation")
        images = [self._load_image(ref) for ref in claim.images]
        report(INPUTS_SHARE)

        def engine_progress(fraction: float) -> None:
            report(INPUTS_SHARE + (1 - INPUTS_SHARE) * min(1.0, max(0.0, fraction)))

        job = Job(
            task_id=claim.task_id, prompt=claim.prompt, mode=claim.mode, ratio=claim.ratio,
            images=images, variations=self.settings.variations,
            duration=self.settings.duration, fps=self.settings.fps,
            resolution=self.settings.resolution, on_progress=engine_progress,
            is_cancelled=cancelled.is_set,
        )
        keys: list[str] = []
        seeds: list[int] = []
        staging = self.storage.staging_dir
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)
        with self._engine_lock, tempfile.TemporaryDirectory(dir=staging) as scratch:
            clips = self.engine.generate(job)
            for index, clip in enumerate(clips):
                key = f"outputs/{claim.task_id}/{index}.mp4"
                # Frames may be lazy: the engine renders while the encoder writes.
                # Encoded aside and stored when whole: no reader sees half a file.
                local = Path(scratch) / f"{index}.mp4"
                encode_mp4(clip.frames, local, fps=clip.fps, width=clip.width,
                           height=clip.height)
                self.storage.put_file(key, local)
                keys.append(key)
                if clip.seed is not None:
                    seeds.append(clip.seed)
        if cancelled.is_set():
            raise Cancelled()
        if not lifecycle.complete(self.db, claim, outputs=keys, seeds=seeds):
            return Outcome("lost", "lease taken over before the result was written")
        return Outcome("completed")
