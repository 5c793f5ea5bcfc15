"""``/activities/{id}/output``: the outputs a server activity's job stored
(reports...), read from the database, so any server process serves them.

``GET /activities/{id}/output`` lists them (name, content type, size, time, URL);
``GET /activities/{id}/output/{name}`` returns one, as stored (its bytes and
content type).
"""

from __future__ import annotations

from urllib.parse import quote

from server.api.errors import not_found
from server.api.routing import ERROR_REF, RawReply, Routes, iso, ref, route

OUTPUT_SCHEMA = {
    "type": "object",
    "required": ["name", "content_type", "size", "created_at", "url"],
    "properties": {
        "name": {"type": "string"},
        "content_type": {"type": "string"},
        "size": {"type": "integer", "description": "bytes"},
        "created_at": {"type": "string", "format": "date-time"},
        "url": {"type": "string", "description": "where to fetch it (relative to the API root)"},
    },
}


class OutputRoutes(Routes):
    SCHEMAS = {"JobOutput": OUTPUT_SCHEMA}

    @route("GET", "/activities/<int:activity_id>/output", summary="The outputs a server activity's job stored",
           tags=["activities"],
           responses={200: ("The outputs, by name (empty while the job has stored none).",
                            {"type": "object", "required": ["activity_id", "outputs"], "properties": {
                                "activity_id": {"type": "integer"},
                                "outputs": {"type": "array", "items": ref("JobOutput")}}}),
                      404: ("No such activity.", ERROR_REF)})
    async def list_outputs(self, request, activity_id: int):
        db = self.context.db
        await db.activities.get(activity_id)  # 404 when there is no such activity
        outputs = await db.joboutputs.list(activity_id)
        return {"activity_id": activity_id, "outputs": [
            {"name": o.name, "content_type": o.content_type, "size": o.size, "created_at": iso(o.created_at),
             "url": f"/api/v1/activities/{activity_id}/output/{quote(o.name, safe='')}"}
            for o in outputs
        ]}

    @route("GET", "/activities/<int:activity_id>/output/<path:name>", summary="One stored output, as it was stored",
           tags=["activities"],
           responses={200: ("The output's bytes, with its content type.",
                            {"type": "string", "contentMediaType": "application/octet-stream"}),
                      404: ("No such activity, or no output of that name.", ERROR_REF)})
    async def get_output(self, request, activity_id: int, name: str):
        db = self.context.db
        await db.activities.get(activity_id)
        out = await db.joboutputs.get(activity_id, name)
        if out is None:
            raise not_found(f"activity {activity_id} has no output named {name!r}")
        safe_name = name.replace('"', "")
        return RawReply(out.data, out.info.content_type,
                        headers={"content-disposition": f'inline; filename="{safe_name}"'})


ROUTES = OutputRoutes
