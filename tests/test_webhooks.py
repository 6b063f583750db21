"""Signed webhooks, as a receiver sees them: a real HTTP receiver on loopback, a real
server, real SQLite. Every delivery's signature is checked with the
``standardwebhooks`` package (and the ``openai`` SDK's ``webhooks.unwrap`` for
the OpenAI face), the way users verify them.

What users rely on: each task's end is announced once per receiver (retried
with the same ``webhook-id`` until a 2xx), even across a server crash; 410
stops the sending; ``Retry-After`` is honoured; nothing goes to a private
address unless the operator allows it; the delivery log shows every try.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from openimagine.services import lifecycle, webhooks
from openimagine.store import migrate
from openimagine.store.db import Database
from openimagine.store.models import WebhookDelivery
from openimagine.testing.webhook_receiver import Received, WebhookReceiver

from conftest import (
    FAST,
    Server,
    Spawned,
    auth,
    free_port,
    make_principal,
    make_settings,
    openimagine_env,
    run_cli,
    submit_task,
    wait_for_task,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's videos

# Tries 0.2 s apart: a whole schedule runs out in about two seconds.
FAST_RETRIES = "0,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2"
BLOCKED = "forbiddenword"


@pytest.fixture
def hooks_server(start_server: Callable[..., Server], tmp_path: Path) -> Server:
    """A server allowed to deliver to loopback (where the receivers are), retrying fast."""
    words = tmp_path / "moderation.txt"
    words.write_text(f"{BLOCKED}\n")
    return start_server(
        allow_private_urls=True, webhook_retry_schedule=FAST_RETRIES, moderation_list=words
    )


def add_endpoint(server: Server, key: str, url: str, **body: object) -> dict:
    response = server.client.post("/v1/webhooks", json={"url": url, **body}, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]


def default_secret(server: Server, key: str) -> str:
    response = server.client.get("/v1/webhooks/default/secret", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]["key"]


def submit(server: Server, key: str, **body: object) -> str:
    response = server.generate(key, **body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def delivery_log(server: Server, key: str, webhook_id: str) -> list[dict]:
    response = server.client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]["deliveries"]


def wait_for_log(
    server: Server,
    key: str,
    webhook_id: str,
    done: Callable[[list[dict]], bool],
    timeout: float = 30,
) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not done(log := delivery_log(server, key, webhook_id)):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    return log


def verified(received: list[Received], secret: str) -> list[dict]:
    """Every delivery's payload, each signature checked by both verifiers users have."""
    payloads = []
    for item in received:
        payload = Webhook(secret).verify(item.body, item.headers)
        openai.OpenAI(api_key="unused").webhooks.verify_signature(
            item.body, item.headers, secret=secret
        )
        payloads.append(payload)
    return payloads


# --- delivery, retries, signatures ---------------------------------------------------------


def test_a_receiver_that_fails_twice_gets_the_third_try_with_the_same_webhook_id(
    hooks_server: Server,
) -> None:
    key = hooks_server.account()
    with (
        WebhookReceiver(answers=[500, 500]) as endpoint_receiver,
        WebhookReceiver(answers=[502, 500]) as callback_receiver,
    ):
        endpoint = add_endpoint(hooks_server, key, endpoint_receiver.url)
        assert endpoint["secret"].startswith("whsec_")
        assert endpoint["events"] == list(webhooks.EVENT_TYPES)  # all, unless told
        task_id = submit(hooks_server, key, callback_url=callback_receiver.url)
        status = hooks_server.wait(key, task_id)

        for receiver, secret in (
            (endpoint_receiver, endpoint["secret"]),
            (callback_receiver, default_secret(hooks_server, key)),
        ):
            tries = receiver.wait_for(3)
            assert [t.answered for t in tries][2] == 200
            assert len({t.webhook_id for t in tries}) == 1  # one message, three tries
            payloads = verified(tries, secret)
            assert all(p == payloads[0] for p in payloads[1:])
            event = payloads[0]
            assert event["type"] == "task.completed" and event["id"] == tries[0].webhook_id
            assert event["data"] == status  # the GET /v1/status data of the task
            # Each try is signed when it is sent (receivers refuse old timestamps).
            assert [int(t.headers["webhook-timestamp"]) for t in tries] == sorted(
                int(t.headers["webhook-timestamp"]) for t in tries
            )

        # The other endpoint's secret does not verify this one's deliveries.
        with pytest.raises(Exception, match="signature"):
            Webhook(default_secret(hooks_server, key)).verify(
                endpoint_receiver.received[0].body, endpoint_receiver.received[0].headers
            )

        log = wait_for_log(
            hooks_server, key, endpoint["id"], lambda log: log and log[0]["status"] == "delivered"
        )
        assert len(log) == 1
        delivery = log[0]
        assert (delivery["task_id"], delivery["type"], delivery["event_id"]) == (
            task_id,
            "task.completed",
            endpoint_receiver.received[0].webhook_id,
        )
        attempts = delivery["attempts"]
        assert [a["status_code"] for a in attempts] == [500, 500, 200]
        assert [a["attempt"] for a in attempts] == [1, 2, 3]
        assert all(a["latency_ms"] >= 0 and a["at"].endswith("Z") for a in attempts)
        assert attempts[0]["next_attempt_at"] and attempts[1]["next_attempt_at"]
        assert attempts[2]["next_attempt_at"] is None and delivery["next_attempt_at"] is None
        callbacks = delivery_log(hooks_server, key, "default")
        assert [a["status_code"] for a in callbacks[0]["attempts"]] == [502, 500, 200]

        time.sleep(1)  # delivered means delivered: no fourth try
        assert len(endpoint_receiver.received) == len(callback_receiver.received) == 3


def test_a_failed_task_is_announced_as_task_failed_with_its_error(hooks_server: Server) -> None:
    key = hooks_server.account()
    with WebhookReceiver() as receiver:
        endpoint = add_endpoint(hooks_server, key, receiver.url, events=["task.failed"])
        completed = submit(hooks_server, key, prompt="a calm lake")
        failed = submit(hooks_server, key, prompt=f"a {BLOCKED} scene")
        hooks_server.wait(key, completed)
        status = hooks_server.wait(key, failed)
        (event,) = verified(receiver.wait_for(1), endpoint["secret"])
        assert event["type"] == "task.failed"
        assert event["data"] == status and status["consumed_credits"] == 0
        assert event["data"]["error_message"] == "Inappropriate content, please try another prompt."
        time.sleep(0.5)
        assert len(receiver.received) == 1  # the completed task is not an event it takes


def test_an_openai_face_video_is_announced_in_openais_event_shape(hooks_server: Server) -> None:
    key = hooks_server.account()
    client = openai.OpenAI(base_url=hooks_server.base_url + "/v1", api_key=key)
    with WebhookReceiver() as receiver:
        video = client.videos.create(prompt="a paper plane", extra_body={"webhook": receiver.url})
        (delivery,) = receiver.wait_for(1)
        secret = default_secret(hooks_server, key)
        event = client.webhooks.unwrap(delivery.body, delivery.headers, secret=secret)
        body = json.loads(delivery.body)
        assert body == {
            "id": delivery.webhook_id,
            "object": "event",
            "type": "video.completed",
            "created_at": body["created_at"],
            "data": {"id": video.id},
        }
        assert event.type == "video.completed" and event.data.id == video.id  # type: ignore[union-attr]
        assert client.videos.retrieve(video.id).status == "completed"
        assert abs(body["created_at"] - time.time()) < 60

        remix = client.videos.remix(
            video.id, prompt="a paper boat", extra_body={"webhook": receiver.url}
        )
        (_, again) = receiver.wait_for(2)
        event = client.webhooks.unwrap(again.body, again.headers, secret=secret)
        assert event.data.id == remix.id and again.webhook_id != delivery.webhook_id  # type: ignore[union-attr]


def test_an_idempotency_key_reused_with_another_callback_url_is_422(server: Server) -> None:
    key = server.account()
    headers = {**auth(key), "Idempotency-Key": "order-1"}
    body = {"prompt": "a kite", "callback_url": "https://hooks.example.com/a"}
    first = server.client.post("/v1/generate", json=body, headers=headers)
    replay = server.client.post("/v1/generate", json=body, headers=headers)
    assert first.json()["data"] == replay.json()["data"]
    other = server.client.post(
        "/v1/generate",
        headers=headers,
        json={**body, "callback_url": "https://hooks.example.com/b"},
    )
    assert other.status_code == 422, other.text


def test_410_disables_the_endpoint_and_nothing_more_is_sent(hooks_server: Server) -> None:
    key = hooks_server.account()
    with WebhookReceiver(then=410) as gone, WebhookReceiver() as alive:
        dead = add_endpoint(hooks_server, key, gone.url)
        live = add_endpoint(hooks_server, key, alive.url)
        first = submit(hooks_server, key)
        hooks_server.wait(key, first)
        gone.wait_for(1)
        log = wait_for_log(
            hooks_server, key, dead["id"], lambda log: log and log[0]["status"] == "failed"
        )
        assert [a["status_code"] for a in log[0]["attempts"]] == [410]
        listed = hooks_server.client.get("/v1/webhooks", headers=auth(key)).json()["data"]
        assert {w["id"]: w["disabled"] for w in listed["webhooks"]} == {
            dead["id"]: True,
            live["id"]: False,
        }

        second = submit(hooks_server, key)
        hooks_server.wait(key, second)
        alive.wait_for(2)
        time.sleep(0.5)
        assert len(gone.received) == 1  # one 410, then silence
        assert len(delivery_log(hooks_server, key, dead["id"])) == 1


def test_retry_after_is_honoured(hooks_server: Server) -> None:
    key = hooks_server.account()
    with WebhookReceiver(answers=[(503, {"Retry-After": "2"})]) as receiver:
        endpoint = add_endpoint(hooks_server, key, receiver.url)
        hooks_server.wait(key, submit(hooks_server, key))
        first, second = receiver.wait_for(2, timeout=30)
        assert second.at - first.at >= 1.9  # not the schedule's 0.2 s
        assert first.webhook_id == second.webhook_id
        verified([first, second], endpoint["secret"])


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), (" 7 ", 7.0), ("²", None), ("1²", None), ("soon", None), ("", None)],
)
def test_a_receivers_retry_after_is_read_as_ascii_seconds_or_ignored(
    header: str, seconds: float | None
) -> None:
    # A receiver's odd header (a Unicode digit passes str.isdigit) must not stop delivery.
    from openimagine.worker.deliverer import retry_after_seconds

    assert retry_after_seconds(header) == seconds


def test_a_receiver_that_never_answers_in_time_counts_as_a_failed_try(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        allow_private_urls=True, webhook_retry_schedule="0,0.2", webhook_timeout=0.5
    )
    key = server.account()
    with WebhookReceiver(delay=2) as slow:
        endpoint = add_endpoint(server, key, slow.url)
        server.wait(key, submit(server, key))
        log = wait_for_log(
            server, key, endpoint["id"], lambda log: log and log[0]["status"] == "failed"
        )
        attempts = log[0]["attempts"]
        assert [a["status_code"] for a in attempts] == [None, None]  # two tries: the schedule
        assert all(
            "timeout" in a["error"].lower() or "timed out" in a["error"].lower() for a in attempts
        ), attempts
        assert all(a["latency_ms"] < 1900 for a in attempts)


def test_removing_an_endpoint_stops_its_waiting_deliveries(hooks_server: Server) -> None:
    key = hooks_server.account()
    with WebhookReceiver(then=500) as failing:
        endpoint = add_endpoint(hooks_server, key, failing.url)
        task_id = submit(hooks_server, key)
        hooks_server.wait(key, task_id)
        failing.wait_for(1)
        removed = hooks_server.client.delete(f"/v1/webhooks/{endpoint['id']}", headers=auth(key))
        assert removed.status_code == 200
        time.sleep(0.3)  # a try under way when it was removed may still land
        count = len(failing.received)
        time.sleep(1)
        assert len(failing.received) == count < 10
        with hooks_server.db.read() as session:
            status = session.scalar(
                select(WebhookDelivery.status).where(WebhookDelivery.task_id == task_id)
            )
        assert status == "cancelled"


def test_the_delivery_log_pages_newest_first(hooks_server: Server) -> None:
    key = hooks_server.account()
    with WebhookReceiver() as receiver:
        task_ids = [submit(hooks_server, key, callback_url=receiver.url) for _ in range(3)]
        for task_id in task_ids:
            hooks_server.wait(key, task_id)
        receiver.wait_for(3)
        wait_for_log(
            hooks_server,
            key,
            "default",
            lambda log: [d["status"] for d in log] == ["delivered"] * 3,
        )
        page = hooks_server.client.get(
            "/v1/webhooks/default/deliveries?limit=2", headers=auth(key)
        ).json()["data"]
        assert page["has_more"] and len(page["deliveries"]) == 2
        rest = hooks_server.client.get(
            f"/v1/webhooks/default/deliveries?after={page['next']}", headers=auth(key)
        ).json()["data"]
        assert not rest["has_more"] and rest["next"] is None
        ids = [d["id"] for d in page["deliveries"] + rest["deliveries"]]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3
        assert {d["task_id"] for d in page["deliveries"] + rest["deliveries"]} == set(task_ids)
        # "\u00b2" passes str.isdigit() and fails int(): it was a 500 (make fuzz).
        for query in (
            "limit=0",
            "limit=101",
            "after=x",
            "after=-1",
            "limit=\u00b2",
            "after=\u00b2",
        ):
            bad = hooks_server.client.get(
                f"/v1/webhooks/default/deliveries?{query}", headers=auth(key)
            )
            assert bad.status_code == 400, query


# --- what may be a receiver -----------------------------------------------------------------


def test_delivery_to_a_private_address_is_refused_unless_allowed(server: Server) -> None:
    """The default policy (no OPENIMAGINE_ALLOW_PRIVATE_URLS): an address on loopback is
    refused at registration when written as one, and at every try when a name
    resolves to it (``localhost`` here); the receiver never hears a thing."""
    key = server.account()
    with WebhookReceiver() as receiver:
        refused = server.client.post("/v1/webhooks", json={"url": receiver.url}, headers=auth(key))
        assert refused.status_code == 400 and refused.json()["error"] == "INVALID_REQUEST"
        assert "private" in refused.json()["message"]
        by_name = receiver.url.replace("127.0.0.1", "localhost")
        task_id = submit(server, key, callback_url=by_name)
        server.wait(key, task_id)
        log = wait_for_log(server, key, "default", lambda log: log and log[0]["attempts"])
        assert log[0]["attempts"][0]["status_code"] is None
        assert "refused address" in log[0]["attempts"][0]["error"]
        time.sleep(0.3)
        assert receiver.received == []


@pytest.mark.parametrize(
    "bad",
    ["ftp://example.com/hook", "not a url", "http://", 42, "https://example.com/" + "a" * 3000],
)
def test_a_bad_callback_url_is_refused_before_anything_is_charged(
    server: Server, bad: object
) -> None:
    key = server.account(credits=100)
    response = server.generate(key, callback_url=bad)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "INVALID_REQUEST"
    assert "callback_url" in response.json()["message"]
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(prompt="a cat", extra_body={"webhook": bad})
    assert caught.value.body["param"] == "webhook"  # type: ignore[index]
    account = server.client.get("/v1/account", headers=auth(key)).json()["data"]
    assert account["balance"] == 100


# --- endpoints ----------------------------------------------------------------------------------


def test_endpoints_belong_to_their_account(server: Server) -> None:
    owner, other = server.account(), server.account()
    created = add_endpoint(
        server, owner, "https://hooks.example.com/a", events=["video.failed", "task.completed"]
    )
    assert created["events"] == ["task.completed", "video.failed"]
    listed = server.client.get("/v1/webhooks", headers=auth(owner)).json()["data"]["webhooks"]
    assert listed == [{k: v for k, v in created.items() if k != "secret"}]  # secret shown once
    assert server.client.get("/v1/webhooks", headers=auth(other)).json()["data"] == {"webhooks": []}
    for method, path in (
        ("DELETE", f"/v1/webhooks/{created['id']}"),
        ("GET", f"/v1/webhooks/{created['id']}/deliveries"),
    ):
        response = server.client.request(method, path, headers=auth(other))
        assert response.status_code == 404 and response.json()["error"] == "NOT_FOUND"
    # Each account has its own default secret, the same on every ask.
    assert default_secret(server, owner) == default_secret(server, owner)
    assert default_secret(server, owner) != default_secret(server, other)

    gone = server.client.delete(f"/v1/webhooks/{created['id']}", headers=auth(owner))
    assert gone.json()["data"] == {"id": created["id"], "deleted": True}
    assert server.client.get("/v1/webhooks", headers=auth(owner)).json()["data"]["webhooks"] == []
    again = server.client.delete(f"/v1/webhooks/{created['id']}", headers=auth(owner))
    assert again.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://x.example/h", "events": ["task.started"]},
        {"url": "https://x.example/h", "events": []},
        {"url": "https://x.example/h", "events": "task.failed"},
        {"events": ["task.failed"]},
    ],
)
def test_a_bad_endpoint_is_400(server: Server, body: dict) -> None:
    key = server.account()
    response = server.client.post("/v1/webhooks", json=body, headers=auth(key))
    assert response.status_code == 400 and response.json()["error"] == "INVALID_REQUEST"


def test_a_twenty_first_endpoint_is_409_until_one_is_removed(server: Server) -> None:
    """The cap is the account's state, not a fault of the request: 409 (make fuzz found
    the 400 it was, which a client would take for a bad body)."""
    key = server.account()
    made = [
        server.client.post(
            "/v1/webhooks", json={"url": f"https://x.example/{n}"}, headers=auth(key)
        ).json()["data"]["id"]
        for n in range(20)
    ]
    over = server.client.post(
        "/v1/webhooks", json={"url": "https://x.example/21"}, headers=auth(key)
    )
    assert over.status_code == 409 and over.json()["error"] == "CONFLICT", over.text
    server.client.delete(f"/v1/webhooks/{made[0]}", headers=auth(key))
    again = server.client.post(
        "/v1/webhooks", json={"url": "https://x.example/21"}, headers=auth(key)
    )
    assert again.status_code == 200, again.text


def test_webhook_routes_need_a_key(server: Server) -> None:
    for method, path in (
        ("GET", "/v1/webhooks"),
        ("POST", "/v1/webhooks"),
        ("GET", "/v1/webhooks/default/secret"),
        ("DELETE", "/v1/webhooks/wh_x"),
        ("GET", "/v1/webhooks/default/deliveries"),
    ):
        response = server.client.request(method, path)
        assert response.status_code == 401, (method, path)


# --- the outbox and the claims ------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(make_settings(tmp_path).resolved_database_url)
    migrate.upgrade(database)
    yield database  # type: ignore[misc]
    database.dispose()


def finish(db: Database, task_id: str, owner: str = "w") -> lifecycle.Claim:
    claim = lifecycle.claim_next(
        db, owner=owner, model="preview", lease_seconds=60, task_id=task_id
    )
    assert claim is not None
    return claim


def deliveries_of(db: Database, task_id: str) -> list[WebhookDelivery]:
    with db.read() as session:
        return list(
            session.scalars(select(WebhookDelivery).where(WebhookDelivery.task_id == task_id))
        )


def test_the_events_are_written_with_the_final_state_and_only_by_the_write_that_wins(
    db: Database,
) -> None:
    principal = make_principal(db)
    webhooks.add_endpoint(db, principal.account_id, "https://a.example/h", ["task.completed"])
    webhooks.add_endpoint(
        db, principal.account_id, "https://b.example/h", list(webhooks.EVENT_TYPES)
    )
    done = submit_task(db, principal)
    claim = finish(db, done)
    assert deliveries_of(db, done) == []  # nothing while it runs
    assert lifecycle.complete(db, claim, outputs=[], seeds=[])
    rows = deliveries_of(db, done)
    assert sorted(r.url for r in rows) == ["https://a.example/h", "https://b.example/h"]
    assert {r.event_type for r in rows} == {"task.completed"} and len(
        {r.event_id for r in rows}
    ) == 1
    # A late write from a worker whose lease was taken over changes nothing, sends nothing.
    assert not lifecycle.fail(db, claim, message="video build failed", detail="late")
    assert len(deliveries_of(db, done)) == 2

    cancelled = submit_task(db, principal)
    assert lifecycle.cancel(db, cancelled, principal.account_id)
    assert [r.event_type for r in deliveries_of(db, cancelled)] == ["task.failed"]
    assert not lifecycle.cancel(db, cancelled, principal.account_id)  # twice: one event
    assert len(deliveries_of(db, cancelled)) == 1


def test_two_processes_never_claim_the_same_try_and_a_dead_ones_claim_comes_back(
    db: Database, tmp_path: Path
) -> None:
    principal = make_principal(db)
    webhooks.add_endpoint(
        db, principal.account_id, "https://a.example/h", list(webhooks.EVENT_TYPES)
    )
    for _ in range(20):
        task_id = submit_task(db, principal)
        assert lifecycle.complete(db, finish(db, task_id), outputs=[], seeds=[])
    other = Database(str(db.url))  # a second process's pool on the same file
    claimed: list[webhooks.Due] = []
    lock = threading.Lock()

    def drain(database: Database, name: str) -> None:
        while (due := webhooks.claim_due(database, owner=name, lease_seconds=0.5)) is not None:
            with lock:
                claimed.append(due)

    try:
        threads = [
            threading.Thread(target=drain, args=(database, f"p{n}"))
            for n, database in enumerate((db, other, db, other))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.dispose()
    assert len(claimed) == 20 and len({due.id for due in claimed}) == 20
    assert webhooks.claim_due(db, owner="late", lease_seconds=60) is None  # all leased

    # Their processes died mid-send: when the leases run out the tries come back,
    # the same event (webhook-id) with the next attempt number.
    time.sleep(0.6)
    again = webhooks.claim_due(db, owner="survivor", lease_seconds=60)
    assert again is not None
    first = next(due for due in claimed if due.id == again.id)
    assert (again.event_id, again.attempt) == (first.event_id, 2)
    # The dead process's late result is logged but no longer decides anything.
    outcome = webhooks.Outcome(200, 5)
    assert webhooks.record(db, first, outcome, schedule=(0, 1), at=first.created_at) is None
    with db.read() as session:
        assert session.get(WebhookDelivery, again.id).status == "pending"  # type: ignore[union-attr]


def test_a_first_entry_above_zero_delays_the_first_try(db: Database) -> None:
    principal = make_principal(db)
    webhooks.add_endpoint(
        db, principal.account_id, "https://a.example/h", list(webhooks.EVENT_TYPES)
    )
    task_id = submit_task(db, principal)
    assert lifecycle.complete(db, finish(db, task_id), outputs=[], seeds=[])
    assert not webhooks.has_due(db, 0.5)
    assert webhooks.claim_due(db, owner="w", lease_seconds=60, first_delay=0.5) is None
    time.sleep(0.6)
    assert webhooks.has_due(db, 0.5)
    assert webhooks.claim_due(db, owner="w", lease_seconds=60, first_delay=0.5) is not None


# --- a crash between the task's end and the delivery ------------------------------------------------


def test_an_event_whose_receiver_was_down_arrives_after_the_server_is_killed_and_restarts(
    spawn_server: Callable[..., Spawned], tmp_path: Path, open_db: Callable[[Path], Database]
) -> None:
    data = tmp_path / "data"
    settings = {
        "allow_private_urls": "true",
        "webhook_retry_schedule": "0,1,1,1,1,1,1,1,1,1",
        **FAST,
    }
    first = spawn_server(data, **settings)
    db = open_db(data)
    key = run_cli(first.env, "accounts", "create", "hooked", "--credits", "100", "--json").stdout
    key = json.loads(key)["api_key"]
    receiver = WebhookReceiver(port=free_port())  # not started: the receiver is down
    with httpx.Client(base_url=first.base_url, timeout=30) as client:
        response = client.post(
            "/v1/generate",
            json={"prompt": "a red kite", "callback_url": receiver.url},
            headers=auth(key),
        )
        task_id = response.json()["data"]["task_id"]
        wait_for_task(client, key, task_id)
        secret = client.get("/v1/webhooks/default/secret", headers=auth(key)).json()["data"]["key"]
    deadline = time.monotonic() + 30
    while not (rows := deliveries_of(db, task_id)) or rows[0].attempts < 1 or rows[0].lease_owner:
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    first.kill()  # SIGKILL: nothing is cleaned up
    assert deliveries_of(db, task_id)[0].status == "pending"

    with receiver:
        spawn_server(data, port=first.base_url.rsplit(":", 1)[1], **settings)
        (delivery,) = receiver.wait_for(1, timeout=30)
        (event,) = verified([delivery], secret)
        assert event["type"] == "task.completed" and event["data"]["task_id"] == task_id
        assert delivery.webhook_id == deliveries_of(db, task_id)[0].event_id
        time.sleep(1)
        assert len(receiver.received) == 1
        assert deliveries_of(db, task_id)[0].status == "delivered"


# --- the operator's command line ----------------------------------------------------------------


def test_the_cli_adds_lists_rotates_shows_deliveries_and_removes(hooks_server: Server) -> None:
    env = openimagine_env(hooks_server.settings.data_dir, allow_private_urls="true")
    key = hooks_server.account(name="cli-hooks")
    with WebhookReceiver() as receiver:
        added = json.loads(
            run_cli(
                env,
                "webhooks",
                "add",
                "cli-hooks",
                receiver.url,
                "--event",
                "task.completed",
                "--json",
            ).stdout
        )
        assert added["secret"].startswith("whsec_") and added["events"] == ["task.completed"]
        listed = json.loads(run_cli(env, "webhooks", "list", "cli-hooks", "--json").stdout)
        assert [w["id"] for w in listed] == [added["id"]] and "secret" not in listed[0]
        assert added["id"] in run_cli(env, "webhooks", "list", "cli-hooks").stdout

        old = run_cli(env, "webhooks", "secret", "cli-hooks").stdout.strip()
        assert old == default_secret(hooks_server, key)
        new = json.loads(
            run_cli(env, "webhooks", "secret", "cli-hooks", "--rotate", "--json").stdout
        )["key"]
        assert new != old and default_secret(hooks_server, key) == new

        with WebhookReceiver() as callback:
            task_id = submit(hooks_server, key, callback_url=callback.url)
            (delivery,) = callback.wait_for(1)
            # Signed with the new secret and, for a day, the old one too: receivers
            # that still hold the old one go on verifying while they switch.
            assert len(delivery.headers["webhook-signature"].split(" ")) == 2
            verified([delivery], new)
            verified([delivery], old)
        receiver.wait_for(1)

        shown = json.loads(run_cli(env, "webhooks", "deliveries", "cli-hooks", "--json").stdout)
        assert {(d["task_id"], d["url"]) for d in shown} == {
            (task_id, receiver.url),
            (task_id, callback.url),
        }
        only = json.loads(
            run_cli(
                env, "webhooks", "deliveries", "cli-hooks", "--webhook", added["id"], "--json"
            ).stdout
        )
        assert [d["url"] for d in only] == [receiver.url]
        assert only[0]["attempts"][0]["status_code"] == 200
        table = run_cli(env, "webhooks", "deliveries", "cli-hooks").stdout
        assert "task.completed" in table and "200" in table

        run_cli(env, "webhooks", "remove", "cli-hooks", added["id"])
        assert json.loads(run_cli(env, "webhooks", "list", "cli-hooks", "--json").stdout) == []
        missing = run_cli(env, "webhooks", "remove", "cli-hooks", added["id"], check=False)
        assert missing.returncode == 1 and missing.stderr.startswith("error: ")
        unknown = run_cli(env, "webhooks", "list", "nobody", check=False)
        assert unknown.returncode == 1 and "nobody" in unknown.stderr
        bad = run_cli(env, "webhooks", "add", "cli-hooks", "ftp://x", check=False)
        assert bad.returncode == 1 and "http" in bad.stderr
