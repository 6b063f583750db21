"""Any server speaking OpenAI's ``/v1/videos`` (SGLang diffusion, vLLM-Omni,
trtllm-serve): the request and answer shapes, in one place.

Create ``POST {base}/videos`` as multipart (vLLM-Omni takes nothing else) with
``prompt``, ``model``, ``seconds``, ``size`` and the first image as the
``input_reference`` file; poll ``GET {base}/videos/{id}``; download
``GET {base}/videos/{id}/content`` with no ``variant`` (SGLang reads it as an
output index). Statuses other than queued/completed/failed are "running"
(trtllm-serve says generating and postprocessing), and a non-2xx poll whose
body is a failed video object is a failure, not a network error (vLLM-Omni).
"""

from __future__ import annotations

from openimagine.catalog import Model
from openimagine.engines.base import MODES, RATIOS, EngineInfo, Job, frame_size
from openimagine.engines.upstream.http import Link, Rejected, Transient
from openimagine.engines.upstream.relay import (
    Poll,
    failed_poll,
    image_file,
    job_id,
    prompt_with_mode,
)

INFO = EngineInfo(
    name="openai-videos",
    description="relay to an OpenAI-videos server (SGLang, vLLM-Omni, trtllm-serve)",
    modes=MODES,
    ratios=RATIOS,
    image_input=True,
    relay=True,
)
# Video models take sizes in multiples of 16 (Wan, HunyuanVideo, LTX at 32 is a superset).
SIZE_MULTIPLE = 16
MODERATION_CODES = ("content_policy_violation", "moderation_blocked", "content_filter")


def create_fields(model: Model, job: Job) -> dict[str, tuple]:
    """Multipart parts, text fields as ``(None, value)`` so httpx sends multipart always."""
    width, height = frame_size(job.ratio, job.resolution, SIZE_MULTIPLE)
    fields: dict[str, tuple] = {
        "prompt": (None, prompt_with_mode(model, job)),
        "model": (None, model.upstream_model or ""),
        "seconds": (None, str(max(1, round(job.duration)))),
        "size": (None, f"{width}x{height}"),
    }
    if job.image_data:
        fields["input_reference"] = image_file(job.image_data[0])
    return fields


def create(link: Link, model: Model, job: Job) -> str:
    response = link.request("POST", f"{link.base_url}/videos", files=create_fields(model, job))
    return job_id(response, "id")


def read_poll(body: dict) -> Poll:
    status = body.get("status")
    progress = float(body.get("progress") or 0) / 100
    if status == "completed":
        return Poll("done", 1.0)
    if status in ("failed", "cancelled", "expired", "deleted"):
        return failed_poll(body, status, progress, MODERATION_CODES.__contains__)
    return Poll("pending" if status == "queued" else "running", progress)


def _failed_video(body: object) -> bool:
    return (
        isinstance(body, dict) and body.get("object") == "video" and body.get("status") == "failed"
    )


def poll(link: Link, upstream_id: str) -> Poll:
    url = f"{link.base_url}/videos/{upstream_id}"
    try:
        response = link.request("GET", url)
    except (Rejected, Transient) as exc:
        # A failed job answered with 4xx/5xx is that job's end, not the server's.
        if _failed_video(exc.body):
            return read_poll(exc.body)
        raise
    return read_poll(response.json() or {})


def content_url(link: Link, upstream_id: str, answer: Poll) -> str:
    return f"{link.base_url}/videos/{upstream_id}/content"
