"""Per-account rate limits by plan, their headers, and the failed-authentication limit."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from openimagine.ratelimit import RateLimiter

from conftest import Server, auth, make_settings

HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    for name in HEADERS:
        assert name in response.headers, (name, response.status_code, dict(response.headers))
        assert response.headers[name].isdigit(), response.headers[name]
    return tuple(int(response.headers[name]) for name in HEADERS)  # type: ignore[return-value]


def assert_reset_is_near(reset: int) -> None:
    """The whole limit is back within two one-minute windows (sliding-window counter)."""
    now = time.time()
    assert now < reset <= now + 121, (reset, now)


def assert_rate_limited(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    body = response.json()
    assert set(body) == {"code", "message", "error"}
    assert body["code"] == 429 and body["error"] == "RATE_LIMITED"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= 61
    return int(retry_after)


@pytest.fixture
def idle(start_server: Callable[..., Server]) -> Server:
    return start_server(run_workers=False)


def test_every_authenticated_response_carries_the_limit_headers(idle: Server) -> None:
    key = idle.account(plan="pro")
    broke = idle.account(plan="pro", credits=0)
    task_id = idle.generate(key).json()["data"]["task_id"]
    responses = {
        "generate 200": idle.generate(key),
        "status 200": idle.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key)),
        "post status 200": idle.client.post(
            "/v1/status", json={"task_id": task_id}, headers=auth(key)
        ),
        "generate 400": idle.generate(key, prompt=""),
        "malformed 400": idle.client.post("/v1/generate", content=b"{", headers=auth(key)),
        "status 400": idle.client.get("/v1/status", headers=auth(key)),
        "post status 400": idle.client.post("/v1/status", content=b"{", headers=auth(key)),
        "generate 402": idle.generate(broke),
        "status 404": idle.client.get(
            "/v1/status", params={"task_id": "task_nope"}, headers=auth(key)
        ),
    }
    for label, response in responses.items():
        expected = int(label.split()[-1])
        assert response.status_code == expected, (label, response.text)
        limit, remaining, reset = limit_headers(response)
        assert limit == 1000, label
        assert 0 <= remaining < 1000, label
        assert_reset_is_near(reset)


def test_remaining_counts_down_with_each_request(idle: Server) -> None:
    key = idle.account(plan="pro")
    remaining = []
    for _ in range(5):
        response = idle.client.get("/v1/status", params={"task_id": "task_nope"}, headers=auth(key))
        remaining.append(limit_headers(response)[1])
    assert remaining == [999, 998, 997, 996, 995]


@pytest.fixture
def tight(start_server: Callable[..., Server]) -> Server:
    # The in-flight cap above the rate limit: these tests are about the latter.
    return start_server(
        run_workers=False, rate_limits="free=5,pro=1000,enterprise=5000", max_in_flight="free=100"
    )


def test_the_request_over_the_plan_limit_is_429_with_retry_after(tight: Server) -> None:
    key = tight.account(plan="free")
    for expected_remaining in (4, 3, 2, 1, 0):
        response = tight.client.get(
            "/v1/status", params={"task_id": "task_nope"}, headers=auth(key)
        )
        assert response.status_code == 404
        assert limit_headers(response)[:2] == (5, expected_remaining)
    over = tight.generate(key)
    retry_after = assert_rate_limited(over)
    limit, remaining, reset = limit_headers(over)
    assert (limit, remaining) == (5, 0)
    assert_reset_is_near(reset)
    # Retry-After is when the next request fits; Reset when the whole limit is back.
    assert 1 <= retry_after <= reset - time.time() + 1
    # Still limited, and a refused request is not charged.
    assert_rate_limited(tight.generate(key))


def test_a_rate_limited_generation_costs_nothing(tight: Server) -> None:
    from openimagine.services import accounts

    key = tight.account(name="limited", plan="free", credits=1000)
    codes = [tight.generate(key).status_code for _ in range(8)]
    assert codes == [200] * 5 + [429] * 3
    summary = accounts.summary(tight.db, name="limited")
    assert summary["balance"] == 1000 - 5 * 40
    assert summary["usage"]["tasks"]["pending"] == 5


def test_limits_are_per_account(tight: Server) -> None:
    first = tight.account(plan="free")
    second = tight.account(plan="free")
    for _ in range(5):
        tight.client.get("/v1/status", params={"task_id": "task_nope"}, headers=auth(first))
    assert_rate_limited(tight.generate(first))
    response = tight.generate(second)
    assert response.status_code == 200
    assert limit_headers(response)[:2] == (5, 4)


def test_all_keys_of_an_account_share_its_limit(tight: Server) -> None:
    from openimagine.services import accounts

    first = tight.account(name="two-keys", plan="free")
    second = accounts.create_key(tight.db, "two-keys")
    for _ in range(5):
        tight.client.get("/v1/status", params={"task_id": "task_nope"}, headers=auth(first))
    assert_rate_limited(tight.generate(second))


def test_plans_have_their_own_limits(tight: Server) -> None:
    free = tight.account(plan="free")
    pro = tight.account(plan="pro")
    enterprise = tight.account(plan="enterprise")
    for key, limit in ((free, 5), (pro, 1000), (enterprise, 5000)):
        response = tight.client.get(
            "/v1/status", params={"task_id": "task_nope"}, headers=auth(key)
        )
        assert limit_headers(response)[:2] == (limit, limit - 1)
    for _ in range(10):
        response = tight.client.get(
            "/v1/status", params={"task_id": "task_nope"}, headers=auth(pro)
        )
        assert response.status_code == 404
    assert limit_headers(response)[1] == 1000 - 11


def test_a_plan_change_takes_effect_on_the_next_request(tight: Server) -> None:
    from openimagine.services import accounts

    key = tight.account(name="upgrader", plan="free")
    for _ in range(5):
        tight.generate(key)
    assert_rate_limited(tight.generate(key))
    accounts.set_plan(tight.db, "upgrader", "pro")
    response = tight.generate(key)
    assert response.status_code == 200
    assert limit_headers(response)[0] == 1000


def test_unauthenticated_paths_are_not_limited_per_account(tight: Server) -> None:
    for _ in range(20):
        assert tight.client.get("/healthz").status_code == 200


def test_failed_authentication_is_limited_per_address(start_server: Callable[..., Server]) -> None:
    """After ``auth_failure_limit`` failures in a minute, the address is refused
    (429) before any key is checked, so keys cannot be guessed at speed."""
    server = start_server(run_workers=False, auth_failure_limit=3)
    valid = server.account()
    for index in range(3):
        response = server.generate(f"oi_guess{index:040d}")
        assert response.status_code == 401, response.text
    blocked = server.generate("oi_guess_four")
    assert_rate_limited(blocked)
    assert "Too many failed authentication attempts" in blocked.json()["message"]
    # No header at all counts as a failure too, and is blocked as well.
    assert_rate_limited(server.client.get("/v1/status", params={"task_id": "task_x"}))
    # Documented behaviour: the block is per address, so until the window passes
    # even a valid key from this address is refused.
    assert_rate_limited(server.generate(valid))


def test_missing_keys_count_as_failed_authentication(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False, auth_failure_limit=2)
    for _ in range(2):
        assert server.client.post("/v1/generate", json={"prompt": "x"}).status_code == 401
    assert_rate_limited(server.client.post("/v1/generate", json={"prompt": "x"}))


def test_successful_requests_do_not_count_as_failures(start_server: Callable[..., Server]) -> None:
    server = start_server(run_workers=False, auth_failure_limit=2)
    key = server.account()
    for _ in range(10):
        assert server.generate(key).status_code == 200
    assert server.generate("oi_wrong").status_code == 401
    assert server.generate(key).status_code == 200


def test_failed_auth_bookkeeping_stays_exact_with_many_failing_addresses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The in-memory limiter remembers which addresses failed lately so that the
    others skip a lookup. Past 100,000 of them it prunes, or stops remembering
    and asks the storage every time: either way it stays exact."""
    limiter = RateLimiter(make_settings(tmp_path, auth_failure_limit=3))
    for _ in range(3):
        limiter.record_auth_failure("203.0.113.7")
    for n in range(100_001):  # a spray from many IPv6 addresses
        limiter.record_auth_failure(f"2001:db8::{n:x}")
    blocked = limiter.auth_blocked("203.0.113.7")
    assert blocked is not None and blocked.retry_after >= 1
    assert limiter.auth_blocked("2001:db8::1") is None  # one failure of three
    assert limiter.auth_blocked("198.51.100.1") is None  # never failed
