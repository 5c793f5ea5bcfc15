"""``/computers``: list, show, accept, remove, and tags.

Tags are replaced as a whole with ``PUT /computers/{id}/tags {"tags": [...]}``
(read them from ``GET``, edit, put back): one idempotent operation instead of
separate add/remove calls.
"""

from __future__ import annotations

import sqlalchemy as sa

from server import states
from server.activityservice import MAX_TAG, now_of
from server.api.errors import invalid
from server.api.routing import (
    PAGE_PARAMETERS, Query, Routes, creator_of, iso, page, page_schema, query_parameter, read_json, ref, route,
)
from server.db.computers import ACCEPTED, PENDING, Computer
from server.db.tables import activities

MAX_TAGS = 100
_TIME = {"type": ["string", "null"], "format": "date-time"}
COMPUTER_SCHEMA = {
    "type": "object",
    "required": ["id", "title", "status", "tags"],
    "properties": {
        "id": {"type": "integer"},
        "title": {"type": "string"},
        "hostname": {"type": "string"},
        "status": {"type": "string", "enum": [ACCEPTED, PENDING]},
        "account_name": {"type": "string"},
        "access_group": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "vm_info": {"type": "string"},
        "container_info": {"type": "string"},
        "machine_id": {"type": ["string", "null"]},
        "clone_of_id": {"type": ["integer", "null"]},
        "registered_at": _TIME, "accepted_at": _TIME, "last_seen": _TIME,
    },
}
TAGS_SCHEMA = {
    "type": "object", "required": ["tags"], "additionalProperties": False,
    "properties": {"tags": {"type": "array", "maxItems": MAX_TAGS,
                            "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG}}},
}
REMOVED_SCHEMA = {
    "allOf": [ref("Computer"), {"type": "object", "properties": {
        "removed_at": {"type": "string", "format": "date-time"},
        "canceled_activity_ids": {"type": "array", "items": {"type": "integer"}}}}],
}


def computer_json(c: Computer) -> dict:
    return {
        "id": c.id, "title": c.title, "hostname": c.hostname, "status": c.status, "account_name": c.account_name,
        "access_group": c.access_group, "tags": list(c.tags), "vm_info": c.vm_info,
        "container_info": c.container_info, "machine_id": c.machine_id, "clone_of_id": c.clone_of_id,
        "registered_at": iso(c.registered_at), "accepted_at": iso(c.accepted_at), "last_seen": iso(c.last_seen),
    }


class ComputersRoutes(Routes):
    SCHEMAS = {"Computer": COMPUTER_SCHEMA, "Tags": TAGS_SCHEMA, "RemovedComputer": REMOVED_SCHEMA}

    @route("GET", "/computers", summary="List computers (not removed ones)", tags=["computers"],
           parameters=[query_parameter("status", {"type": "string", "enum": [ACCEPTED, PENDING]}),
                       query_parameter("tag", {"type": "string"}, "Only computers with this tag."),
                       *PAGE_PARAMETERS],
           responses={200: ("A page of computers.", page_schema(ref("Computer")))})
    async def list(self, request):
        q = Query(request, ["status", "tag", "limit", "offset"])
        status, tag = q.str("status", (ACCEPTED, PENDING)), q.str("tag")
        limit, offset = q.page()
        count, rows = await self.context.db.computers.list(status=status, tag=tag, limit=limit, offset=offset)
        return page(request, q, count, [computer_json(c) for c in rows], limit, offset)

    @route("GET", "/computers/<int:computer_id>", summary="One computer", tags=["computers"],
           responses={200: ("The computer.", ref("Computer"))})
    async def show(self, request, computer_id):
        return computer_json(await self.context.db.computers.get(computer_id))

    @route("POST", "/computers/<int:computer_id>/accept", summary="Accept a pending computer (idempotent)",
           tags=["computers"], responses={200: ("The computer, accepted.", ref("Computer"))})
    async def accept(self, request, computer_id):
        return computer_json(await self.context.db.computers.accept(computer_id, now_of(self.context)))

    @route("DELETE", "/computers/<int:computer_id>",
           summary="Remove a computer: revoke its secure id and cancel its non-final activities",
           tags=["computers"], responses={200: ("The removed computer.", ref("RemovedComputer"))})
    async def remove(self, request, computer_id):
        db = self.context.db
        actor = creator_of(request)
        now = now_of(self.context)

        def thd(conn):
            computer = db.computers.remove_thd(conn, computer_id, now)
            ids = conn.execute(
                sa.select(activities.c.id)
                .where(activities.c.computer_id == computer_id,
                       activities.c.state.in_(sorted(states.NON_FINAL_STATES)))
                .order_by(activities.c.id)
            ).scalars().all()
            canceled = []
            for aid in ids:
                db.activities.apply_verb_thd(conn, aid, "cancel", actor=actor, now=now,
                                             reason=f"computer {computer_id} was removed")
                canceled.append(aid)
            return computer, canceled

        computer, canceled = await db.run(thd)
        return {**computer_json(computer), "removed_at": iso(now), "canceled_activity_ids": canceled}

    @route("PUT", "/computers/<int:computer_id>/tags", summary="Replace a computer's tags", tags=["computers"],
           body=("The complete new set of tags.", ref("Tags"), "application/json"),
           responses={200: ("The computer with its new tags.", ref("Computer"))})
    async def put_tags(self, request, computer_id):
        body = read_json(request)
        if not isinstance(body, dict) or set(body) != {"tags"}:
            raise invalid("tags", 'the body is {"tags": ["tag", ...]}')
        tags = body["tags"]
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise invalid("tags", f"tags must be a list of at most {MAX_TAGS} tags")
        for i, t in enumerate(tags):
            if not isinstance(t, str) or not t.strip() or len(t) > MAX_TAG or t != t.strip():
                raise invalid(f"tags.{i}", f"a tag is a non-empty string of at most {MAX_TAG} characters "
                                           "without surrounding spaces")
        db = self.context.db

        def thd(conn):
            db.computers.get_thd(conn, computer_id)  # 404 before changing anything
            db.computers.set_tags_thd(conn, computer_id, tags)
            return db.computers.get_thd(conn, computer_id)

        return computer_json(await db.run(thd))


ROUTES = ComputersRoutes
