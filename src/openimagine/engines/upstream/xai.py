"""xAI's Grok Imagine over REST: the request and answer shapes, in one place.

Create ``POST {base}/videos/generations`` → ``{"request_id"}``; poll
``GET {base}/videos/{request_id}`` → ``{"status": pending|done|failed|expired,
"progress", "video": {"url", "duration", "respect_moderation"}, "error"}``. A
failed job may come with HTTP 200, so the body decides. Parts of this field
list are confirmed only by third-party clients: correct them here.
"""

from __future__ import annotations

from openimagine.catalog import Model
from openimagine.engines.base import MODES, RATIOS, EngineInfo, Job
from openimagine.engines.upstream.http import Link
from openimagine.engines.upstream.relay import Poll, data_url, failed_poll, job_id, prompt_with_mode

INFO = EngineInfo(
    name="xai",
    description="relay to xAI Grok Imagine (REST)",
    modes=MODES,
    ratios=RATIOS,
    image_input=True,
    relay=True,
    resolutions=(480, 720),
)
# xAI takes whole seconds, 1 to 15.
MIN_SECONDS, MAX_SECONDS = 1, 15


def create_body(model: Model, job: Job) -> dict:
    body: dict = {
        "model": model.upstream_model,
        "prompt": prompt_with_mode(model, job),
        "duration": min(MAX_SECONDS, max(MIN_SECONDS, round(job.duration))),
        "aspect_ratio": job.ratio,
        "resolution": f"{job.resolution}p",
    }
    if job.image_data:
        if model.images == "reference":
            # Reference-to-video: every image guides, none is the first frame.
            body["reference_images"] = [{"url": data_url(data)} for data in job.image_data]
        else:
            # xAI animates one start image and does not combine it with references.
            body["image"] = {"url": data_url(job.image_data[0])}
    return body


def create(link: Link, model: Model, job: Job) -> str:
    response = link.request(
        "POST", f"{link.base_url}/videos/generations", json=create_body(model, job)
    )
    return job_id(response, "request_id")


def read_poll(body: dict) -> Poll:
    status = body.get("status")
    video = body.get("video") or {}
    progress = float(body.get("progress") or 0) / 100
    if status == "done" or (status is None and video.get("url")):
        if video.get("respect_moderation") is False:
            return Poll("failed", 1.0, moderated=True, detail="respect_moderation: false")
        if not video.get("url"):
            return Poll("failed", 1.0, detail="done without a video url")
        return Poll("done", 1.0, video_url=video["url"])
    if status in ("failed", "expired"):
        return failed_poll(body, status, progress, is_moderation)
    return Poll("running" if progress else "pending", progress)


def is_moderation(code: str) -> bool:
    return any(word in code.lower() for word in ("moderation", "content_policy", "safety"))


def poll(link: Link, upstream_id: str) -> Poll:
    response = link.request("GET", f"{link.base_url}/videos/{upstream_id}")
    return read_poll(response.json() or {})


def content_url(link: Link, upstream_id: str, answer: Poll) -> str:
    assert answer.video_url is not None
    return answer.video_url
