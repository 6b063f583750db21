"""``RelayEngine``: one task of a relay model, handed to upstream video APIs and
brought home.

1. Create one upstream job per variation, on the model's least busy upstream
   that is up (or, before any job was accepted, on a fallback model's), and
   save the job ids on the task (``job.save_state``) before polling them.
   A task taken over after a crash comes back with those ids in
   ``job.resume`` and polls them: it never pays for a job twice.
2. Poll every job until each is done or one fails, reporting their mean
   progress; connection errors, timeouts, 429 and 5xx are retried with
   jittered backoff that honours Retry-After, until the model's ``timeout``.
3. Download each video into the task's scratch folder; the runner checks it
   is a video and makes it faststart H.264 before storing it.

Failures map to the contract's task messages (``EngineFailure`` and its
kinds); the upstream's own words go to the operator's detail only, with the
key scrubbed out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import httpx

from openimagine.catalog import Catalog, Model
from openimagine.engines.base import (
    Cancelled,
    ContentRefused,
    EngineFailure,
    EngineInfo,
    Job,
    UpstreamUnreachable,
    VideoFile,
)
from openimagine.engines.upstream import openai_videos, xai
from openimagine.engines.upstream.http import (
    Link,
    Rejected,
    Transient,
    backoff,
    new_client,
    retry_after_seconds,
    scrub,
    upstreams_of,
)
from openimagine.engines.upstream.relay import Poll

log = logging.getLogger("openimagine.upstream")

ADAPTERS: dict[str, ModuleType] = {"xai": xai, "openai-videos": openai_videos}
# Polls start quick (a short job finishes soon) and slow down to this interval.
FIRST_POLL_SECONDS = 0.25
MAX_POLL_SECONDS = 2.0
# A download larger than this is not a video clip.
MAX_DOWNLOAD_BYTES = 2 * 1024**3
CHUNK = 1024 * 1024


class RelayEngine:
    def __init__(self, model: Model, catalog: Catalog) -> None:
        self.model = model
        self.catalog = catalog
        self.info: EngineInfo = ADAPTERS[model.engine].INFO
        # One connection pool for every task of this model in this process.
        self.client = new_client()

    # -- the task ------------------------------------------------------------------

    def generate(self, job: Job) -> list[VideoFile]:
        deadline = time.monotonic() + self.model.timeout
        resumed = job.resume if isinstance(job.resume, dict) else {}
        jobs: list[dict] = [entry for entry in resumed.get("jobs", []) if isinstance(entry, dict)]
        rendering = self._model_named(resumed.get("model")) if jobs else None
        if jobs:
            log.info(
                "task %s: resuming %d upstream job(s) on %s",
                job.task_id,
                len(jobs),
                rendering.name if rendering else "?",
            )
        while len(jobs) < job.variations:
            rendering, base_url, upstream_id = self._create(job, rendering, deadline)
            jobs.append({"base_url": base_url, "id": upstream_id})
            job.save_state({"model": rendering.name, "jobs": jobs})
            log.info(
                "task %s: upstream job %s on %s (%s)",
                job.task_id,
                upstream_id,
                base_url,
                rendering.name,
            )
        assert rendering is not None
        paths = self._await_all(job, rendering, jobs, deadline)
        return [VideoFile(path, model=rendering.name) for path in paths]

    def _model_named(self, name: object) -> Model:
        if isinstance(name, str) and name in self.catalog.models:
            return self.catalog.get(name)
        return self.model  # the models file changed meanwhile: the jobs are still ours

    def _link(self, model: Model, base_url: str, deadline: float) -> Link:
        return Link(self.client, base_url, model.api_key, deadline)

    # -- creating ------------------------------------------------------------------

    def _create(self, job: Job, fixed: Model | None, deadline: float) -> tuple[Model, str, str]:
        """One upstream job: on ``fixed`` once a job was accepted, else on this model or,
        when every upstream of it is down, on its fallbacks in order."""
        candidates = (
            [fixed]
            if fixed
            else [self.model, *(self.catalog.get(name) for name in self.model.fallbacks)]
        )
        attempt = 0
        while True:
            last: Transient | None = None
            for model, base_url in self._targets(candidates):
                _check(job)
                try:
                    link = self._link(model, base_url, deadline)
                    upstream_id = ADAPTERS[model.engine].create(
                        link, model, self._job_for(model, job)
                    )
                except Transient as exc:
                    last = exc
                    if exc.cool_down:
                        upstreams_of(model.name, model.base_urls).mark_down(
                            base_url, exc.retry_after
                        )
                    continue
                except Rejected as exc:
                    raise self._rejected(model, exc, "create") from None
                except ValueError as exc:  # a 2xx answer without the job's id
                    raise EngineFailure(
                        self._scrub(model, f"create on {base_url}: {exc}")
                    ) from None
                upstreams_of(model.name, model.base_urls).started(base_url)
                return model, base_url, upstream_id
            attempt += 1
            self._wait_or_give_up(job, attempt, last, deadline)

    def _job_for(self, model: Model, job: Job) -> Job:
        """The job as ``model`` renders it: a fallback takes its own duration and
        resolution, unless the task asked for them itself (``job.pinned``)."""
        if model is self.model:
            return job
        own = {
            name: getattr(model.settings, name)
            for name in ("duration", "resolution")
            if name not in job.pinned
        }
        return replace(job, **own)

    @staticmethod
    def _targets(candidates: list[Model]) -> list[tuple[Model, str]]:
        """(model, base URL) to try in order: every upstream that is up, this model's
        first; when none is, this model's own (soonest back first)."""
        pools = [(model, upstreams_of(model.name, model.base_urls)) for model in candidates]
        up = [(model, url) for model, pool in pools if pool.any_up() for url in pool.candidates()]
        if up:
            return up
        first, pool = pools[0]
        return [(first, url) for url in pool.candidates()]

    # -- polling and downloading ---------------------------------------------------

    def _await_all(self, job: Job, model: Model, jobs: list[dict], deadline: float) -> list[Path]:
        adapter = ADAPTERS[model.engine]
        upstreams = upstreams_of(model.name, model.base_urls)
        waiting = dict(enumerate(jobs))
        progress = [0.0] * len(jobs)
        paths: dict[int, Path] = {}
        interval = FIRST_POLL_SECONDS
        attempt = 0
        try:
            while waiting:
                last: Transient | None = None
                for index, entry in list(waiting.items()):
                    _check(job)
                    link = self._link(model, entry["base_url"], deadline)
                    try:
                        answer = adapter.poll(link, entry["id"])
                        if answer.state == "done":
                            paths[index] = self._download(
                                link,
                                adapter.content_url(link, entry["id"], answer),
                                _scratch(job) / f"upstream-{index}.mp4",
                            )
                    except Transient as exc:
                        last = exc
                        continue
                    except Rejected as exc:
                        raise self._rejected(model, exc, f"job {entry['id']}") from None
                    if answer.state == "failed":
                        raise self._failed(model, entry, answer)
                    progress[index] = 1.0 if index in paths else answer.progress
                    if index in paths:
                        del waiting[index]
                        upstreams.finished(entry["base_url"])
                job.on_progress(sum(progress) / len(progress))
                if not waiting:
                    break
                if last is not None:
                    attempt += 1
                    self._wait_or_give_up(job, attempt, last, deadline)
                    continue
                attempt = 0
                if time.monotonic() >= deadline:
                    raise EngineFailure(
                        f"upstream jobs of {model.name} did not finish within "
                        f"{self.model.timeout:g} s"
                    )
                _sleep(job, min(interval, max(0.0, deadline - time.monotonic())))
                interval = min(MAX_POLL_SECONDS, interval * 1.5)
        finally:
            for entry in waiting.values():
                upstreams.finished(entry["base_url"])
        return [paths[index] for index in range(len(jobs))]

    def _download(self, link: Link, url: str, path: Path) -> Path:
        """The video into ``path``; 429/5xx and network errors are ``Transient``."""
        try:
            with link.client.stream(
                "GET", url, headers=link.headers(url), timeout=link.timeout(), follow_redirects=True
            ) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise Transient(
                        f"download {url}: HTTP {response.status_code}",
                        retry_after=retry_after_seconds(response),
                        cool_down=False,
                    )
                if response.status_code >= 400:
                    raise EngineFailure(f"download {url}: HTTP {response.status_code}")
                written = 0
                with open(path, "wb") as handle:
                    for chunk in response.iter_bytes(CHUNK):
                        written += len(chunk)
                        if written > MAX_DOWNLOAD_BYTES:
                            raise EngineFailure(f"download {url}: over {MAX_DOWNLOAD_BYTES} bytes")
                        handle.write(chunk)
        except httpx.TransportError as exc:
            raise Transient(
                f"download {url}: {type(exc).__name__}: {exc}", cool_down=False
            ) from None
        return path

    # -- failures ------------------------------------------------------------------

    def _wait_or_give_up(
        self, job: Job, attempt: int, last: Transient | None, deadline: float
    ) -> None:
        if time.monotonic() >= deadline:
            reason = str(last) if last else "no upstream answered"
            raise UpstreamUnreachable(
                self._scrub(self.model, f"gave up after {self.model.timeout:g} s: {reason}")
            )
        _sleep(
            job, backoff(attempt, retry_after=last.retry_after if last else None, deadline=deadline)
        )

    def _rejected(self, model: Model, exc: Rejected, what: str) -> EngineFailure:
        detail = self._scrub(model, f"{model.name} {what}: {exc}")
        if exc.status in (401, 403):
            # Loud: every task of this model fails until an operator fixes the key.
            log.error(
                "model %s: the upstream refused its key (HTTP %d); check the variable %s",
                model.name,
                exc.status,
                model.api_key_env or "(no api_key_env set)",
            )
        elif _is_moderation(exc.body):
            return ContentRefused(detail)
        return EngineFailure(detail)

    def _failed(self, model: Model, entry: dict, answer: Poll) -> EngineFailure:
        detail = self._scrub(
            model, f"{model.name} job {entry['id']} on {entry['base_url']}: {answer.detail}"
        )
        return ContentRefused(detail) if answer.moderated else EngineFailure(detail)

    @staticmethod
    def _scrub(model: Model, text: str) -> str:
        return scrub(text, model.api_key)


def _is_moderation(body: object) -> bool:
    """An error body whose code says content policy (xAI's or OpenAI's shape)."""
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else body.get("code")
    return xai.is_moderation(str(code or ""))


def _check(job: Job) -> None:
    if job.is_cancelled():
        raise Cancelled()


def _sleep(job: Job, seconds: float) -> None:
    """Sleep, waking to stop as soon as the task is cancelled."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        _check(job)
        time.sleep(min(0.1, left))


def _scratch(job: Job) -> Path:
    if job.scratch is None:
        raise RuntimeError("a relay needs job.scratch for its downloads")
    return job.scratch
