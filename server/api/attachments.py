"""``/attachments``: upload a file that activities reference by id."""

from __future__ import annotations

from server.activityservice import now_of
from server.api.errors import ApiError, invalid
from server.api.routing import ERROR_REF, Query, Reply, Routes, creator_of, iso, query_parameter, route

ATTACHMENT_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "size", "sha256"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "size": {"type": "integer"},
        "sha256": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
    },
}


def check_name(name: str | None) -> str:
    if not name:
        raise invalid("name", "name is required: POST /attachments?name=FILE")
    if len(name.encode("utf-8")) > 255 or "/" in name or "\0" in name or name in (".", ".."):
        raise invalid("name", "name must be a file name (at most 255 bytes, no '/', not '.' or '..')")
    return name


class AttachmentsRoutes(Routes):
    SCHEMAS = {"Attachment": ATTACHMENT_SCHEMA}

    @route("POST", "/attachments", summary="Upload an attachment (the raw request body)", tags=["attachments"],
           parameters=[query_parameter("name", {"type": "string", "minLength": 1, "maxLength": 255},
                                       "The file name the agent gives it.") | {"required": True}],
           body=("The file's bytes.", {"type": "string", "contentMediaType": "application/octet-stream"},
                 "application/octet-stream"),
           responses={201: ("The stored attachment.", {"$ref": "#/components/schemas/Attachment"}),
                      413: ("The body exceeds the server's attachment_max_size.", ERROR_REF)})
    async def create(self, request):
        name = check_name(Query(request, ["name"]).str("name"))
        limit = self.context.config.attachment_max_size
        data = request.content.read(limit + 1) if request.content is not None else b""
        if len(data) > limit:
            raise ApiError(413, "too-large", f"the attachment exceeds the limit of {limit} bytes", field="body")
        a = await self.context.db.attachments.create(name, data, creator_of(request), now_of(self.context))
        return Reply(201, {"id": a.id, "name": a.name, "size": a.size, "sha256": a.sha256,
                           "created_at": iso(a.created_at)})


ROUTES = AttachmentsRoutes
