"""``/activities/{id}/output``: what a server activity (a job) stored.

Jobs store named outputs in the database (``server.db.joboutputs``), so any server
process serves them. ``GET /activities/{id}/output`` lists them (name, content
type, size, time); ``GET /activities/{id}/output/{name}`` answers one output's
bytes with the content type the job gave.
"""

from __future__ import annotations

from server.api.errors import not_found
from server.api.routing import RawReply, Routes, iso, ref, route

OUTPUT_INFO_SCHEMA = {
    "type": "object",
    "required": ["name", "content_type", "size", "created_at"],
    "properties": {
        "name": {"type": "string"},
        "content_type": {"type": "string"},
        "size": {"type": "integer", "description": "Bytes."},
        "created_at": {"type": "string", "format": "date-time"},
    },
}


class OutputsRoutes(Routes):
    SCHEMAS = {"OutputInfo": OUTPUT_INFO_SCHEMA}

    @route("GET", "/activities/<int:activity_id>/output", summary="List the outputs a job stored",
           tags=["activities"],
           responses={200: ("The outputs, by name (empty for activities that stored none).",
                            {"type": "object", "required": ["results"], "properties": {
                                "results": {"type": "array", "items": ref("OutputInfo")}}})})
    async def list(self, request, activity_id):
        db = self.context.db

        def thd(conn):
            db.activities.get_thd(conn, activity_id)  # 404 for an unknown activity
            return db.joboutputs.list_thd(conn, activity_id)

        infos = await db.run(thd)
        return {"results": [{"name": i.name, "content_type": i.content_type, "size": i.size,
                             "created_at": iso(i.created_at)} for i in infos]}

    @route("GET", "/activities/<int:activity_id>/output/<name>", summary="One output's bytes",
           tags=["activities"],
           responses={200: ("The output, with the content type the job gave it.", None)})
    async def get(self, request, activity_id, name):
        db = self.context.db

        def thd(conn):
            db.activities.get_thd(conn, activity_id)
            return db.joboutputs.get_thd(conn, activity_id, name)

        output = await db.run(thd)
        if output is None:
            raise not_found(f"activity {activity_id} has no output {name!r}")
        return RawReply(output.data, output.info.content_type)


ROUTES = OutputsRoutes
