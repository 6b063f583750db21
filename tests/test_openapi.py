"""The OpenAPI document describes every answer, and its body rules are the server's.

``make fuzz`` (``tests/fuzz.py``) checks the same against a live server with
schemathesis; these tests pin the parts a fuzzer may take long to reach.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openimagine import inputs
from openimagine.api.app import create_app
from openimagine.api.bodies import not_blank_pattern, trimmed
from openimagine.api.envelope import ERROR_ENVELOPE
from openimagine.api.openai import schemas as openai_schemas
from openimagine.api.openai import videos
from openimagine.engines.base import EngineInfo
from openimagine.inputs.refs import DATA_URI_PATTERN, url_pattern
from openimagine.services import webhooks
from openimagine.settings import Settings

FAST = settings(max_examples=200, deadline=None)
INFO = EngineInfo(name="test", description="a test engine")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(
        Settings(
            data_dir=tmp_path_factory.mktemp("openapi"), secret_key="openapi-check-0123456789"
        ),
        run_workers=False,
    )
    return app.openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def test_every_v1_operation_documents_its_errors_in_its_face_s_error_schema(
    document: dict[str, Any],
) -> None:
    operations = [op for op in _operations(document) if op[0].startswith("/v1/")]
    assert len(operations) >= 20
    for path, method, operation in operations:
        answers = operation["responses"]
        expected = openai_schemas.ERROR if path.startswith("/v1/videos") else ERROR_ENVELOPE
        assert operation["security"] == [{"bearer": []}], (method, path)
        # Authentication, the plan's limit and outages can answer any of them.
        assert {"200", "401", "429", "500", "503"} <= set(answers), (method, path, answers)
        for status, answer in answers.items():
            if status == "200":
                continue
            schema = answer["content"]["application/json"]["schema"]
            assert schema == expected, (method, path, status)
        if "requestBody" in operation:
            assert "400" in answers, (method, path)
        if "{" in path or method == "post" and path.endswith(("/status", "/cancel")):
            assert "404" in answers, (method, path)


def test_health_answers_are_documented_and_nothing_says_422_for_validation(
    document: dict[str, Any],
) -> None:
    for path in ("/healthz", "/readyz"):
        answers = document["paths"][path]["get"]["responses"]
        assert {"200", "500", "503"} <= set(answers)
    for path, method, operation in _operations(document):
        # A failed validation is 400 here; only a reused Idempotency-Key is 422.
        assert (
            "422" not in operation["responses"]
            or method == "post"
            and path in ("/v1/generate", "/v1/videos")
        ), (method, path)
    assert "HTTPValidationError" not in document.get("components", {}).get("schemas", {})


def test_the_deployment_s_models_modes_and_ratios_are_enums(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["properties"]
    assert body["model"]["enum"] == ["preview", None]
    assert {"fun", "normal", "spicy", None} <= set(body["mode"]["enum"])
    assert {"1:1", "16:9", "9:16", None} <= set(body["ratio"]["enum"])
    assert "x-openimagine-catalog" not in str(document)
    form = document["paths"]["/v1/videos"]["post"]["requestBody"]["content"]["multipart/form-data"][
        "schema"
    ]["properties"]
    assert form["model"]["enum"] == ["preview"]


def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), (method, path)


def test_event_streams_describe_each_event(document: dict[str, Any]) -> None:
    for path in ("/v1/status/stream", "/v1/videos/{video_id}/events"):
        event = document["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"][
            "schema"
        ]
        assert event["properties"]["event"] == {"const": "status"}
        assert event["properties"]["data"]["contentMediaType"] == "application/json"


# -- the patterns are the server's own rules ----------------------------------------


@FAST
@given(st.from_regex(url_pattern(), fullmatch=True))
def test_a_url_the_schema_allows_is_a_url_the_server_accepts(url: str) -> None:
    assert inputs.parse_image_refs(url) == [url]
    if len(url) <= webhooks.MAX_URL_LENGTH:
        assert webhooks.url_problem(url, allow_private=True) is None


@FAST
@given(st.from_regex(DATA_URI_PATTERN, fullmatch=True))
def test_a_data_uri_the_schema_allows_is_one_the_server_accepts(uri: str) -> None:
    assert inputs.parse_image_refs([uri]) == [uri]


@FAST
@given(st.text(min_size=1, max_size=40).filter(lambda text: "\x00" not in text))
def test_the_prompt_pattern_is_the_trimming_rule(prompt: str) -> None:
    assert bool(re.search(not_blank_pattern(), prompt)) == bool(trimmed(prompt))


def test_a_prompt_of_invisible_characters_does_not_match_the_pattern() -> None:
    assert not re.search(not_blank_pattern(), "\u200b\u200d\ufeff \t\U000e0020")
    assert re.search(not_blank_pattern(), "\u200ba")


@FAST
@given(st.from_regex(videos.SIZE_PATTERN, fullmatch=True))
def test_a_size_the_schema_allows_is_one_the_server_accepts(size: str) -> None:
    videos.parse_size(size, None, INFO)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "size", ["15x16", "16x4097", "0016x16", "1280 x 720", "²x16", "1280x720\n"]
)
def test_a_size_the_schema_refuses_is_refused(size: str) -> None:
    assert not re.search(videos.SIZE_PATTERN, size) or size.endswith("\n")
    with pytest.raises(videos.BadField):
        videos.parse_size(size, None, INFO)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", ["0", "61", "08", " 8", "²", "8\n", 8.5, 61.0, True])
def test_seconds_the_schema_refuses_are_refused(seconds: object) -> None:
    with pytest.raises(videos.BadField):
        videos.parse_seconds(seconds)


@pytest.mark.parametrize("seconds", ["1", "60", 8, 8.0, ""])
def test_seconds_the_schema_allows_are_accepted(seconds: object) -> None:
    """8.0 is an integer to JSON Schema (a fuzzer sends it): the server reads it as 8."""
    assert re.fullmatch(videos.SECONDS_PATTERN, str(seconds)) or isinstance(seconds, (int, float))
    assert videos.parse_seconds(seconds) in (None, float(seconds or 0))
