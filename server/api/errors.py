"""The API's errors: one JSON shape, ``{"error": {"code", "message", ...}}``.

Codes: ``invalid`` / ``invalid-json`` (400, with ``field`` naming the bad one when
there is one), ``unauthorized`` (401), ``not-found`` (404),
``method-not-allowed`` (405), ``conflict`` (409, with ``current_state``),
``too-large`` (413), ``internal`` (500; details only in the server's log).
"""

from __future__ import annotations

import json
from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [
                    "invalid", "invalid-json", "unauthorized", "not-found", "method-not-allowed",
                    "conflict", "too-large", "internal"]},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "The bad request field (400, 413), dotted path."},
                "current_state": {"type": "string", "description": "The activity's state (409)."},
            },
        }
    },
}


class ApiError(Exception):
    """Answer the request with ``status`` and the error body; nothing was changed."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra

    def body(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        error.update(self.extra)
        return {"error": error}


def invalid(field: str | None, message: str) -> ApiError:
    return ApiError(400, "invalid", message, field=field)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not-found", message)


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
