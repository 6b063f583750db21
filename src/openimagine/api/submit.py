"""Submitting a task, for both faces: inputs kept, task created and debited in one
transaction, workers told after the commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from openimagine import inputs
from openimagine.api.context import AppContext
from openimagine.catalog import Model
from openimagine.errors import InvalidRequest, PayloadTooLarge
from openimagine.services import idempotency, tasks
from openimagine.services.accounts import Principal


@dataclass(frozen=True)
class Submitted:
    task_id: str
    # True when an Idempotency-Key named a task made before: nothing new was created.
    replayed: bool = False


def _decoded(ref: str, index: int, max_bytes: int) -> bytes:
    """A data URI's bytes; the client's mistake (413 or 400) when they cannot be kept."""
    try:
        return inputs.decode_data_uri(ref, max_bytes=max_bytes)
    except inputs.ImageTooLarge as exc:
        raise PayloadTooLarge(
            f"Input image {index + 1} is {exc.size} bytes, over this "
            f"server's limit of {exc.limit} bytes per image"
        ) from None
    except inputs.UnsupportedImage as exc:
        raise InvalidRequest(f"Input image {index + 1}: {exc}") from None


def submit_task(
    ctx: AppContext,
    principal: Principal,
    model: Model,
    new: tasks.NewTask,
    *,
    price: int,
    uploads: Sequence[bytes] = (),
    idempotent: idempotency.IdempotentRequest | None = None,
) -> Submitted:
    """Create the task of ``new`` (its ``images`` as the client gave them, http(s) URLs
    or data URIs, then ``uploads``: image files sent as multipart parts) and debit
    ``price``. Data URIs and uploads are stored first, so status echoes a URL of
    them and never the base64; they are removed again if the task is not created.
    With an Idempotency-Key, a request made before is answered with its task."""
    claimed: idempotency.Claimed | None = None
    if idempotent is not None:
        outcome = idempotency.begin(
            ctx.db, principal.account_id, idempotent.key, idempotent.route, idempotent.request_hash
        )
        if isinstance(outcome, idempotency.Replay):
            return Submitted(outcome.task_id, replayed=True)
        claimed = outcome
    task_id = tasks.new_task_id()
    stored: list[str] = []
    images: list[str] = []
    payloads: list[bytes | str] = [*new.images, *uploads]
    try:
        for index, ref in enumerate(payloads):
            if isinstance(ref, str) and not ref.startswith("data:"):
                images.append(ref)
                continue
            data = (
                ref
                if isinstance(ref, bytes)
                else _decoded(ref, index, ctx.settings.fetch_max_bytes)
            )
            key = f"inputs/{task_id}/{index}.{inputs.sniff_image_type(data) or 'bin'}"
            ctx.storage.put_bytes(key, data)
            stored.append(key)
            images.append(tasks.STORED_PREFIX + key)
        key_answer = claimed
        tasks.submit(
            ctx.db,
            principal,
            replace(new, images=images),
            task_id=task_id,
            model=model.name,
            engine=model.engine,
            price=price,
            # Backpressure (429 TOO_MANY_TASKS, 503 when the queue is full).
            max_in_flight=ctx.settings.max_in_flight[principal.plan],
            max_queue=model.max_queue,
            also=None
            if key_answer is None
            else (lambda session, created: idempotency.record(session, key_answer, created)),
        )
    except BaseException:
        for key in stored:
            ctx.storage.delete(key)
        if claimed is not None:
            idempotency.abandon(ctx.db, claimed)
        raise
    # After the commit: a worker that gets the notice finds the row. A notice
    # that fails to go out leaves the task pending for the sweeper to resend.
    ctx.dispatcher.notify(task_id, model.name)
    return Submitted(task_id)
