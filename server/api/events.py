"""``/events``: recent transitions and notable events across activities."""

from __future__ import annotations

from server.api.routing import (
    PAGE_PARAMETERS, Query, Routes, iso, page, page_schema, query_parameter, ref, route, time_parameter,
)
from server.db.activities import HistoryEntry

EVENT_SCHEMA = {
    "type": "object",
    "description": "A transition (event 'transition', from_state → to_state) or a notable event.",
    "required": ["id", "activity_id", "at", "event", "actor", "reason"],
    "properties": {
        "id": {"type": "integer"},
        "activity_id": {"type": "integer"},
        "computer_id": {"type": ["integer", "null"]},
        "at": {"type": "string", "format": "date-time"},
        "event": {"type": "string"},
        "from_state": {"type": ["string", "null"]},
        "to_state": {"type": ["string", "null"]},
        "actor": {"type": "string"},
        "reason": {"type": "string"},
    },
}


def history_json(h: HistoryEntry) -> dict:
    return {
        "id": h.id, "activity_id": h.activity_id, "computer_id": h.computer_id, "at": iso(h.at), "event": h.event,
        "from_state": h.from_state, "to_state": h.to_state, "actor": h.actor, "reason": h.reason,
    }


class EventsRoutes(Routes):
    SCHEMAS = {"Event": EVENT_SCHEMA}

    @route("GET", "/events", summary="Recent transitions and events across activities, newest first",
           tags=["activities"],
           parameters=[
               time_parameter("after", "At or after this time."),
               time_parameter("before", "Before this time."),
               query_parameter("activity_id", {"type": "integer", "minimum": 1}),
               query_parameter("computer_id", {"type": "integer", "minimum": 1}),
               *PAGE_PARAMETERS],
           responses={200: ("A page of events.", page_schema(ref("Event")))})
    async def list(self, request):
        q = Query(request, ["after", "before", "activity_id", "computer_id", "limit", "offset"])
        filters = dict(after=q.time("after"), before=q.time("before"),
                       activity_id=q.int("activity_id", minimum=1), computer_id=q.int("computer_id", minimum=1))
        limit, offset = q.page()
        count, rows = await self.context.db.activities.events(**filters, limit=limit, offset=offset)
        return page(request, q, count, [history_json(h) for h in rows], limit, offset)


ROUTES = EventsRoutes
