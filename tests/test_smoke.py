"""The seed's two curl examples, through a real server."""

from conftest import Server, auth


def test_seed_generate_then_status_completes_with_two_videos(server: Server) -> None:
    key = server.account()
    response = server.generate(key, mode="fun", ratio="1:1")
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 200 and body["message"] == "success"
    task_id = body["data"]["task_id"]
    assert task_id.startswith("task_")
    data = server.wait(key, task_id)
    assert data["status"] == "completed"
    assert len(data["response"]) == 2
    video = server.client.get(data["response"][0])
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"
    assert (
        server.client.get("/v1/status", params={"task_id": task_id}, headers=auth(key)).json()[
            "data"
        ]["consumed_credits"]
        == 40
    )
