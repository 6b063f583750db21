"""The last touches of the OpenAPI document, which need the deployment: the
models it serves and their modes and ratios (the values a request may name),
and no FastAPI validation answers (this server answers 400 in the envelope)."""

from __future__ import annotations

from typing import Any

from openimagine.api.context import AppContext
from openimagine.patterns import PATTERN, pattern

# A schema marked ``{CATALOG: "models" | "modes" | "ratios"}`` takes those of the
# deployment's catalog as its ``enum`` (``null`` too where the field is nullable).
CATALOG = "x-openimagine-catalog"


def catalog_values(ctx: AppContext) -> dict[str, list[str]]:
    """What a request may name: the models, and the modes and ratios of any of them."""
    names = list(ctx.catalog.names)
    modes: dict[str, None] = {}
    ratios: dict[str, None] = {}
    for name in names:
        info = ctx.infos[name]
        modes.update(dict.fromkeys(info.modes))
        ratios.update(dict.fromkeys(info.ratios))
    return {"models": names, "modes": list(modes), "ratios": list(ratios)}


def _fill(node: Any, values: dict[str, list[str]]) -> None:
    if isinstance(node, list):
        for item in node:
            _fill(item, values)
        return
    if not isinstance(node, dict):
        return
    name = node.pop(PATTERN, None)
    if name is not None:
        node["pattern"] = pattern(name)
    kind = node.pop(CATALOG, None)
    if kind is not None:
        nullable = {"type": "null"} in node.pop("anyOf", [])
        node.pop("type", None)
        node["enum"] = [*values[kind], None] if nullable else list(values[kind])
    for child in node.values():
        _fill(child, values)


def drop_validation_answers(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without the 422 answers FastAPI adds to operations with path
    parameters: a failed validation is 400 in the envelope here (``api/errors.py``),
    and the routes that can answer 422 (``IDEMPOTENCY_KEY_REUSED``) document it."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    components = document.get("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    if "schemas" in components and not components["schemas"]:
        del components["schemas"]
    return document


def finish_document(document: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
    _fill(document, catalog_values(ctx))
    return drop_validation_answers(document)
