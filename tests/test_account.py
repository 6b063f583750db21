"""GET /v1/account: the caller's plan, balance, rate limit and recent usage."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Server, auth


def test_account_shows_plan_balance_rate_limit_and_recent_usage(
        start_server: Callable[..., Server]) -> None:
    server = start_server(rate_limits="free=100,pro=1000,enterprise=5000")
    key = server.account(plan="pro", credits=200)
    ids = [server.generate(key).json()["data"]["task_id"] for _ in range(3)]
    for task_id in ids:
        server.wait(key, task_id)

    response = server.client.get("/v1/account", headers=auth(key))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "1000"
    body = response.json()
    assert body["code"] == 200 and body["message"] == "success"
    data = body["data"]
    assert data["plan"] == "pro"
    assert data["balance"] == 200 - 3 * 40
    assert data["price"] == 40
    assert data["rate_limit"] == {"requests_per_minute": 1000}
    assert data["usage"]["tasks"] == {"pending": 0, "processing": 0, "completed": 3, "failed": 0}
    assert data["usage"]["credits_spent"] == 120
    recent = data["usage"]["recent_tasks"]
    assert {t["task_id"] for t in recent} == set(ids)
    assert all(t["status"] == "completed" and t["created_at"].endswith("Z") for t in recent)
    assert [t["created_at"] for t in recent] == sorted((t["created_at"] for t in recent),
                                                       reverse=True)


def test_account_lists_at_most_ten_recent_tasks_of_its_own(server: Server) -> None:
    key, other = server.account(credits=2000), server.account()
    other_task = server.generate(other).json()["data"]["task_id"]
    for _ in range(12):
        assert server.generate(key).status_code == 200
    data = server.client.get("/v1/account", headers=auth(key)).json()["data"]
    assert len(data["usage"]["recent_tasks"]) == 10
    assert other_task not in {t["task_id"] for t in data["usage"]["recent_tasks"]}
    assert sum(data["usage"]["tasks"].values()) == 12


def test_account_needs_a_key(server: Server) -> None:
    response = server.client.get("/v1/account")
    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHORIZED"
    free = server.account(plan="free")
    data = server.client.get("/v1/account", headers=auth(free)).json()["data"]
    assert data["plan"] == "free" and data["rate_limit"]["requests_per_minute"] == 100
