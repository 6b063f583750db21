"""One task's life, start to end, run in a worker thread:
moderate → load inputs → engine.generate → encode MP4s → store → finish or refund.

A runner serves one model of the catalog, with that model's settings (price,
variations, duration, resolution) and engine. A relay's results arrive as
files, which are made faststart H.264 here like every other output.

The final state is written from this thread, not from the coroutine that
waits for it, so cancelling that coroutine cannot lose the result.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from PIL import Image

from openimagine import inputs
from openimagine.catalog import Catalog, Model
from openimagine.engines import create_engine
from openimagine.engines.base import (
    Cancelled,
    Clip,
    ContentRefused,
    Engine,
    EngineFailure,
    Job,
    VideoFile,
)
from openimagine.media.mp4 import NotAVideo, encode_mp4, normalize_mp4
from openimagine.media.stills import make_stills
from openimagine.moderation import ModerationPolicy
from openimagine.services import lifecycle
from openimagine.services.lifecycle import ENGINE_FAILED, Claim
from openimagine.services.tasks import STORED_PREFIX, still_key
from openimagine.storage import Storage, clean_staging_once, scratch_prefix
from openimagine.store.db import Database

log = logging.getLogger("openimagine.worker")

INAPPROPRIATE = ContentRefused.public_message
# Share of the progress bar before the engine starts (moderation, inputs).
INPUTS_SHARE = 0.05


def create_model_engine(model: Model, catalog: Catalog) -> Engine:
    """The engine that renders ``model`` (once per worker process; may load weights)."""
    if model.relay:
        from openimagine.engines.upstream import RelayEngine

        return RelayEngine(model, catalog)
    return create_engine(model.settings)


class RunStatus(StrEnum):
    """How a run ended, for the worker that ran it (the task's own status is in its row)."""

    COMPLETED = "completed"
    FAILED = "failed"  # failed and refunded
    RELEASED = "released"  # given back to the queue (the worker is stopping)
    LOST = "lost"  # fenced out: the lease had passed to another worker
    SKIPPED = "skipped"  # never started: the task was not pending (a duplicate message)


@dataclass
class Outcome:
    status: RunStatus
    detail: str = ""


class Runner:
    def __init__(
        self, model: Model, db: Database, storage: Storage, engine: Engine, policy: ModerationPolicy
    ) -> None:
        self.model = model
        self.settings = model.settings
        self.db = db
        self.storage = storage
        self.engine = engine
        self.policy = policy
        if storage.staging_dir is not None:  # what renders killed before left behind
            clean_staging_once(storage.staging_dir)
        # An engine such as a GPU pipeline runs one job at a time per process;
        # a relay only waits on another API, so its jobs run side by side.
        self._engine_lock: threading.Lock | contextlib.nullcontext[None] = (
            contextlib.nullcontext() if engine.info.relay else threading.Lock()
        )

    def _load_image(self, ref: str) -> tuple[bytes, Image.Image]:
        if ref.startswith(STORED_PREFIX):
            data = self.storage.read_bytes(ref[len(STORED_PREFIX) :])
        else:
            data = inputs.fetch_image_bytes(ref, self.settings)
        return data, inputs.decode_image(data, max_pixels=self.settings.max_image_pixels)

    def _fail(self, claim: Claim, message: str, detail: str) -> Outcome:
        log.info("task %s failed: %s (%s)", claim.task_id, message, detail)
        written = lifecycle.fail(self.db, claim, message=message, detail=detail)
        return Outcome(RunStatus.FAILED if written else RunStatus.LOST, detail)

    def run(
        self, claim: Claim, report: Callable[[float], None], cancelled: threading.Event
    ) -> Outcome:
        try:
            return self._run(claim, report, cancelled)
        except Cancelled:
            released = lifecycle.release(self.db, claim)
            return Outcome(RunStatus.RELEASED if released else RunStatus.LOST, "cancelled")
        except (inputs.InputError, EngineFailure) as exc:
            return self._fail(claim, exc.public_message, str(exc))
        except Exception as exc:
            log.exception("task %s: engine or encoding failed", claim.task_id)
            return self._fail(claim, ENGINE_FAILED, f"{type(exc).__name__}: {exc}")

    def _run(
        self, claim: Claim, report: Callable[[float], None], cancelled: threading.Event
    ) -> Outcome:
        verdict = self.policy.check(claim.prompt)
        if not verdict.allowed:
            return self._fail(claim, INAPPROPRIATE, verdict.reason or "moderation")
        loaded = [self._load_image(ref) for ref in claim.images]
        report(INPUTS_SHARE)

        def engine_progress(fraction: float) -> None:
            report(INPUTS_SHARE + (1 - INPUTS_SHARE) * min(1.0, max(0.0, fraction)))

        def save_state(state: dict) -> None:
            # Durable before the engine goes on: a worker that takes the task
            # over resumes these upstream jobs instead of paying for new ones.
            if not lifecycle.save_upstream(self.db, claim, state):
                raise Cancelled()

        keys: list[str] = []
        seeds: list[int] = []
        rendered_by: str | None = None
        media: dict | None = None
        staging = self.storage.staging_dir
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)
        with (
            self._engine_lock,
            tempfile.TemporaryDirectory(dir=staging, prefix=scratch_prefix()) as scratch,
        ):
            job = Job(
                task_id=claim.task_id,
                prompt=claim.prompt,
                mode=claim.mode,
                ratio=claim.ratio,
                images=[image for _, image in loaded],
                variations=claim.variations or self.settings.variations,
                duration=claim.duration or self.settings.duration,
                fps=self.settings.fps,
                resolution=claim.resolution or self.settings.resolution,
                on_progress=engine_progress,
                is_cancelled=cancelled.is_set,
                image_data=[data for data, _ in loaded],
                resume=claim.upstream,
                save_state=save_state,
                scratch=Path(scratch),
                pinned=frozenset(
                    name for name in ("duration", "resolution") if getattr(claim, name) is not None
                ),
            )
            results = self.engine.generate(job)
            for index, result in enumerate(results):
                key = f"outputs/{claim.task_id}/{index}.mp4"
                # Made aside and stored when whole: no reader sees half a file.
                local = Path(scratch) / f"out-{index}.mp4"
                if isinstance(result, VideoFile):
                    try:
                        normalize_mp4(result.path, local)
                    except NotAVideo as exc:
                        raise EngineFailure(f"output {index} is not a video: {exc}") from None
                    rendered_by = result.model or rendered_by
                else:
                    self._encode(result, local)
                    if result.seed is not None:
                        seeds.append(result.seed)
                if index == 0:
                    media = self._store_stills(claim.task_id, local, Path(scratch))
                self.storage.put_file(key, local)
                keys.append(key)
        if cancelled.is_set():
            raise Cancelled()
        if not lifecycle.complete(
            self.db, claim, outputs=keys, seeds=seeds, rendered_by=rendered_by, media=media
        ):
            return Outcome(RunStatus.LOST, "lease taken over before the result was written")
        return Outcome(RunStatus.COMPLETED)

    def _store_stills(self, task_id: str, first: Path, scratch: Path) -> dict:
        """Thumbnail and spritesheet of the first video, stored beside it, and what it is."""
        thumbnail, spritesheet = scratch / "thumbnail.webp", scratch / "spritesheet.jpg"
        stills = make_stills(first, thumbnail, spritesheet)
        self.storage.put_file(still_key(task_id, "thumbnail"), thumbnail)
        self.storage.put_file(still_key(task_id, "spritesheet"), spritesheet)
        return stills.media()

    @staticmethod
    def _encode(clip: Clip, path: Path) -> None:
        # Frames may be lazy: the engine renders while the encoder writes.
        encode_mp4(clip.frames, path, fps=clip.fps, width=clip.width, height=clip.height)
