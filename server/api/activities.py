"""``/activities``: create, list, show, the administrator verbs, and reapply."""

from __future__ import annotations

from server import activityservice, states
from server.api.routing import (
    ERROR_REF, PAGE_PARAMETERS, Query, Reply, Routes, creator_of, iso, page, page_schema, query_parameter, read_json,
    ref, route, time_parameter,
)
from server.api.errors import invalid
from server.api.events import history_json
from server.db.activities import Activity

VERBS = ("cancel", "approve", "pause", "resume")

_TIME = {"type": ["string", "null"], "format": "date-time"}
ACTIVITY_SCHEMA = {
    "type": "object",
    "description": "An activity; times are ISO 8601 UTC. Group parents also carry children_count and counts.",
    "required": ["id", "kind", "type", "state", "created_at", "progress"],
    "properties": {
        "id": {"type": "integer"},
        "kind": {"type": "string", "enum": list(states.KINDS)},
        "type": {"type": "string"},
        "summary": {"type": "string"},
        "creator": {"type": "string"},
        "computer_id": {"type": ["integer", "null"]},
        "parent_id": {"type": ["integer", "null"]},
        "origin_id": {"type": ["integer", "null"], "description": "The activity this one retries or reapplies."},
        "is_group": {"type": "boolean"},
        "state": {"type": "string", "enum": list(states.STATES)},
        "blocked_reason": {"type": ["string", "null"], "enum": [*states.BLOCKED_REASONS, None]},
        "cancel_provisional": {"type": "boolean",
                               "description": "Canceled while in progress; the agent's late result may still replace it."},
        "parameters": {"type": "object"},
        "created_at": _TIME, "approved_at": _TIME, "delivered_at": _TIME, "completed_at": _TIME,
        "modified_at": _TIME, "deliver_after": _TIME, "deliver_before": _TIME,
        "deliver_delay_window": {"type": ["integer", "null"]},
        "deliver_delay": {"type": ["number", "null"], "description": "This child's offset in the delay window (s)."},
        "requires_approval": {"type": "boolean"},
        "wait_for": {"type": ["object", "null"], "properties": {
            "activity_id": {"type": "integer"}, "threshold": {"type": "integer"}}},
        "result_code": {"type": ["integer", "null"]},
        "result_name": {"type": ["string", "null"]},
        "result_text": {"type": ["string", "null"]},
        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        "children_count": {"type": "integer"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "Number of children in each state."},
    },
}
ACTIVITY_DETAIL_SCHEMA = {
    "allOf": [ref("Activity"), {"type": "object", "required": ["history"], "properties": {
        "history": {"type": "array", "items": ref("Event")}}}],
}
ACTIVITY_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "description": "An activity type (GET /activity-types)."},
        "parameters": {"type": "object", "description": "Validated against the type's JSON Schema.", "default": {}},
        "summary": {"type": "string", "maxLength": activityservice.MAX_SUMMARY},
        "computer_ids": {"type": "array", "items": {"type": "integer", "minimum": 1},
                         "description": "Client types: these computers (all must be accepted)."},
        "computer_tags": {"type": "array", "items": {"type": "string", "minLength": 1},
                          "description": "Client types: computers having any of these tags."},
        "deliver_after": {"type": "string", "format": "date-time",
                          "description": "ISO 8601; without a zone the time is taken as UTC."},
        "deliver_before": {"type": "string", "format": "date-time",
                           "description": "ISO 8601, zone optional (UTC). Default: the server's default expiry "
                                          "after the first possible delivery."},
        "deliver_delay_window": {"type": "integer", "minimum": 0, "maximum": activityservice.MAX_DELAY_WINDOW,
                                 "description": "Seconds; each child gets a random delay in [0, window)."},
        "requires_approval": {"type": "boolean", "default": False},
        "wait_for": {"type": "object", "required": ["activity_id"], "additionalProperties": False, "properties": {
            "activity_id": {"type": "integer", "minimum": 1},
            "threshold": {"type": "integer", "minimum": 0, "maximum": 100, "default": 100}}},
    },
}


def activity_json(a: Activity) -> dict:
    """Every field of the spec's "Records", times ISO 8601 UTC."""
    d = {
        "id": a.id, "kind": a.kind, "type": a.type, "summary": a.summary, "creator": a.creator,
        "computer_id": a.computer_id, "parent_id": a.parent_id, "origin_id": a.origin_id, "is_group": a.is_group,
        "state": a.state, "blocked_reason": a.blocked_reason, "cancel_provisional": a.cancel_provisional,
        "parameters": a.parameters,
        "created_at": iso(a.created_at), "approved_at": iso(a.approved_at), "delivered_at": iso(a.delivered_at),
        "completed_at": iso(a.completed_at), "modified_at": iso(a.modified_at),
        "deliver_after": iso(a.deliver_after), "deliver_before": iso(a.deliver_before),
        "deliver_delay_window": a.deliver_delay_window, "deliver_delay": a.deliver_delay,
        "requires_approval": a.requires_approval,
        "wait_for": None if a.wait_for_id is None else {"activity_id": a.wait_for_id, "threshold": a.wait_for_threshold},
        "result_code": a.result_code, "result_name": a.result_name, "result_text": a.result_text,
        "progress": a.display_progress,
    }
    if a.is_group:
        d["children_count"] = a.children_count
        d["counts"] = dict(a.counts)
    return d


class ActivitiesRoutes(Routes):
    SCHEMAS = {"Activity": ACTIVITY_SCHEMA, "ActivityDetail": ACTIVITY_DETAIL_SCHEMA,
               "ActivityRequest": ACTIVITY_REQUEST_SCHEMA}

    @route("POST", "/activities", summary="Create an activity (a group for two or more computers)",
           tags=["activities"],
           body=("What to do and where.", ref("ActivityRequest"), "application/json"),
           responses={201: ("The activity, or the group's parent.", ref("Activity")),
                      413: ("A parameter over its size limit (e.g. parameters.code).", ERROR_REF)})
    async def create(self, request):
        body = read_json(request)
        activity = await activityservice.create_activities(self.context, body, creator_of(request))
        return Reply(201, activity_json(activity), {"Location": f"/api/v1/activities/{activity.id}"})

    @route("GET", "/activities", summary="List activities, newest first", tags=["activities"],
           parameters=[
               query_parameter("state", {"type": "string", "enum": list(states.STATES)}),
               query_parameter("type", {"type": "string"}),
               query_parameter("computer_id", {"type": "integer", "minimum": 1}),
               query_parameter("parent_id", {"type": "integer", "minimum": 1}),
               time_parameter("created_after", "Created at or after this time."),
               time_parameter("created_before", "Created before this time."),
               *PAGE_PARAMETERS],
           responses={200: ("A page of activities.", page_schema(ref("Activity")))})
    async def list(self, request):
        q = Query(request, ["state", "type", "computer_id", "parent_id", "created_after", "created_before",
                            "limit", "offset"])
        filters = dict(
            state=q.str("state", states.STATES), type=q.str("type"),
            computer_id=q.int("computer_id", minimum=1), parent_id=q.int("parent_id", minimum=1),
            created_after=q.time("created_after"), created_before=q.time("created_before"),
        )
        limit, offset = q.page()
        count, rows = await self.context.db.activities.list(**filters, limit=limit, offset=offset)
        return page(request, q, count, [activity_json(a) for a in rows], limit, offset)

    @route("GET", "/activities/<int:activity_id>", summary="One activity with its history", tags=["activities"],
           responses={200: ("The activity.", ref("ActivityDetail"))})
    async def show(self, request, activity_id):
        acts = self.context.db.activities

        def thd(conn):
            return acts.get_thd(conn, activity_id), acts.history_thd(conn, activity_id)

        activity, history = await self.context.db.run(thd)
        return {**activity_json(activity), "history": [history_json(h) for h in history]}

    async def _verb(self, request, activity_id: int, verb: str):
        body = _optional_body(request, ("reason",), "the optional body is {\"reason\": \"text\"}")
        reason = body.get("reason", "")[:1000]
        actor = creator_of(request)
        now = activityservice.now_of(self.context)
        activity = await self.context.db.activities.apply_verb(activity_id, verb, actor=actor, now=now, reason=reason)
        # An approved or resumed server activity that became queued runs now, not
        # at the queue's next sweep.
        activityservice.publish_if_queued(self.context, activity)
        return activity_json(activity)

    _VERB_DOC = dict(
        body=None,
        parameters=(),
        responses={200: ("The activity after the change.", ref("Activity")),
                   409: ("The verb does not apply in the current state; nothing changed.", ERROR_REF)},
        tags=["activities"],
    )

    @route("POST", "/activities/<int:activity_id>/cancel", summary="Cancel (a group: each non-final child)",
           description="Optional body {\"reason\": text}.", **_VERB_DOC)
    async def cancel(self, request, activity_id):
        return await self._verb(request, activity_id, "cancel")

    @route("POST", "/activities/<int:activity_id>/approve", summary="Approve an activity blocked for approval",
           description="Optional body {\"reason\": text}.", **_VERB_DOC)
    async def approve(self, request, activity_id):
        return await self._verb(request, activity_id, "approve")

    @route("POST", "/activities/<int:activity_id>/pause", summary="Pause a queued activity",
           description="Optional body {\"reason\": text}.", **_VERB_DOC)
    async def pause(self, request, activity_id):
        return await self._verb(request, activity_id, "pause")

    @route("POST", "/activities/<int:activity_id>/resume", summary="Resume a paused activity",
           description="Optional body {\"reason\": text}.", **_VERB_DOC)
    async def resume(self, request, activity_id):
        return await self._verb(request, activity_id, "resume")

    @route("POST", "/activities/<int:activity_id>/reapply",
           summary="Run a failed or canceled activity again (a group: its failed and canceled children)",
           description="No body (an empty object {} is allowed).",
           tags=["activities"],
           responses={201: ("The new activity (or group), origin_id linked.", ref("Activity")),
                      409: ("Nothing to reapply in the current state.", ERROR_REF),
                      400: ("The request can no longer be made (e.g. a computer was removed).", ERROR_REF)})
    async def reapply(self, request, activity_id):
        _optional_body(request, (), "reapply takes no body")
        activity = await activityservice.reapply(self.context, activity_id, creator_of(request))
        return Reply(201, activity_json(activity), {"Location": f"/api/v1/activities/{activity.id}"})


def _optional_body(request, fields: tuple[str, ...], usage: str) -> dict[str, str]:
    """The body of a route whose body is optional: nothing, or a JSON object of
    text ``fields``; anything else is 400 with ``usage`` as the message."""
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        return {}
    request.content.seek(0)
    body = read_json(request)
    if not isinstance(body, dict) or set(body) - set(fields) or not all(isinstance(v, str) for v in body.values()):
        raise invalid(fields[0] if fields else None, usage)
    return body


ROUTES = ActivitiesRoutes
