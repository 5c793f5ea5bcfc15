"""``/openapi.json``: the OpenAPI 3.1 description, built from the mounted routes
(each ``@route`` carries its own description, so a route cannot be served
undocumented)."""

from __future__ import annotations

from server.api.errors import ERROR_SCHEMA
from server.api.routing import Routes, route

SERVERS = [{"url": "/api/v1"}]


def build_document(api) -> dict:
    import ridgeline

    paths: dict[str, dict] = {}
    for spec in api.routes:
        paths.setdefault(spec.openapi_path, {})[spec.method.lower()] = spec.operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ridgeline REST API",
            "version": getattr(ridgeline, "__version__", "0"),
            "description": "Administer computers and activities. Every route needs `Authorization: Bearer <key>` "
                           "(`ridgeline api-key create`). Errors are JSON {\"error\": {\"code\", \"message\"}}. "
                           "Times are ISO 8601; a time given without a zone is taken as UTC; times returned are UTC.",
        },
        "servers": SERVERS,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **dict(sorted(api.schemas.items()))},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from `ridgeline api-key create`."}},
        },
        "security": [{"bearer": []}],
    }


class OpenApiRoutes(Routes):
    @route("GET", "/openapi.json", summary="This API's OpenAPI 3.1 description", tags=["meta"],
           responses={200: ("The OpenAPI document.", {"type": "object"})})
    async def document(self, request):
        return build_document(self.api)


ROUTES = OpenApiRoutes
