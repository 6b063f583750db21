"""The success half of the envelope (errors are in ``api/errors.py``)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def ok(data: Any) -> JSONResponse:
    return JSONResponse({"code": 200, "message": "success", "data": data})


def envelope_schema(data_schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI response description for ``{"code","message","data"}``."""
    return {
        200: {
            "description": "success",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "integer", "example": 200},
                            "message": {"type": "string", "example": "success"},
                            "data": data_schema,
                        },
                    }
                }
            },
        }
    }
