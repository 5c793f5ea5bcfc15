"""``/activity-types``: every activity type the server's plugins declare."""

from __future__ import annotations

from server.api.routing import Routes, ref, route

ACTIVITY_TYPE_SCHEMA = {
    "type": "object",
    "required": ["name", "kind", "parameters_schema"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["client", "server"]},
        "description": {"type": "string"},
        "parameters_schema": {"type": "object", "description": "JSON Schema (2020-12) of the parameters."},
        "message_type": {"type": ["string", "null"], "description": "Client types: the agent message type."},
        "attachments_parameter": {"type": ["string", "null"]},
    },
}


class TypesRoutes(Routes):
    SCHEMAS = {"ActivityType": ACTIVITY_TYPE_SCHEMA}

    @route("GET", "/activity-types", summary="Every activity type with its kind and parameters' JSON Schema",
           tags=["activities"],
           responses={200: ("The types, by name.", {"type": "object", "required": ["results"], "properties": {
               "results": {"type": "array", "items": ref("ActivityType")}}})})
    async def list(self, request):
        types = self.context.plugins.all() if self.context.plugins is not None else []
        return {"results": [
            {"name": t.name, "kind": t.kind, "description": t.description,
             "parameters_schema": t.parameters_schema, "message_type": t.agent_message_type,
             "attachments_parameter": t.attachments_parameter}
            for t in types
        ]}


ROUTES = TypesRoutes
