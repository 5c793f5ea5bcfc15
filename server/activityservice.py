"""Creating activities from a request: the one path behind ``POST
/api/v1/activities``, reapply, and jobs that fan work out (``JobContext.create_activity``).

:func:`create_activities` validates the whole request (type, parameters through
the type's JSON Schema and its own checks, size limits, times, ``wait_for``,
attachments), resolves computers, applies the server's default expiry, and
creates the activity — or a group parent and one child per computer — in one
transaction through ``ActivitiesConnector.create_thd``. Anything wrong raises
:class:`RequestError` (the API's 400/413) and nothing is written.

Request fields (JSON object):
``type`` (str), ``parameters`` (object, default ``{}``), ``summary`` (str),
``computer_ids`` (list of int) and/or ``computer_tags`` (list of str) for client
types (computers having any of the tags), ``deliver_after`` / ``deliver_before``
(ISO 8601; a time without a zone is taken as UTC), ``deliver_delay_window``
(seconds), ``requires_approval`` (bool), ``wait_for`` (``{activity_id, threshold}``,
threshold 0–100, default 100).

Default expiry: without ``deliver_before``, an activity expires
``config.default_expiry`` seconds after it may first be delivered (``deliver_after``
or now, plus the delay window).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

import sqlalchemy as sa

from server import states
from server.db.activities import Activity, ActivityNotFound, NewActivity
from server.db.tables import activities
from server.hookspecs import ParameterError

UTC = dt.timezone.utc
#: Request fields; anything else is refused (a typo must not be silently ignored).
REQUEST_FIELDS = frozenset({
    "type", "parameters", "summary", "computer_ids", "computer_tags", "deliver_after", "deliver_before",
    "deliver_delay_window", "requires_approval", "wait_for",
})
MAX_SUMMARY = 1000
MAX_DELAY_WINDOW = 30 * 86400
MAX_TAG = 200
#: The largest id a row can have (ids are 64-bit): a larger one names nothing,
#: and the database driver would refuse to even compare with it.
MAX_ID = 2**63 - 1
#: Times from this year on are refused: adding the default expiry or a delay
#: window to them must not overflow Python's datetime (year 9999).
MAX_YEAR = 9000
#: The schema annotation naming the ``ServerConfig`` size limit of a string parameter.
SIZE_ANNOTATION = "x-ridgeline-max-size"


class RequestError(Exception):
    """A request refused: HTTP ``status``, error ``code``, the bad ``field`` (or
    None) and a one-line ``message``. Nothing was changed."""

    def __init__(self, status: int, code: str, field: str | None, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.message = message


def invalid(field: str | None, message: str) -> RequestError:
    return RequestError(400, "invalid", field, message)


def now_of(context) -> dt.datetime:
    return dt.datetime.fromtimestamp(context.reactor.seconds(), tz=UTC)


def parse_time(value: Any, field: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is UTC. Returned UTC-aware."""
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be an ISO 8601 time string, e.g. 2026-01-31T12:00:00Z")
    text = value.strip()
    try:
        parsed = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise invalid(field, f"{field}: {value!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00
        raise invalid(field, f"{field}: {value!r} is out of range") from None


def iso(value: dt.datetime | None) -> str | None:
    """A UTC time as the API (and what the server writes for people) spells it:
    ISO 8601 with a ``Z``."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def _delivery_time(value: Any, field: str) -> dt.datetime:
    """A ``deliver_after`` / ``deliver_before``: a time far enough from the end of
    the calendar that expiry and delay windows can be added to it (list filters
    take any time: nothing is added to them)."""
    parsed = parse_time(value, field)
    if parsed.year >= MAX_YEAR:
        raise invalid(field, f"{field}: {value!r} is too far in the future (before the year {MAX_YEAR}, please)")
    return parsed


def _int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if type(value) is not int:
        raise invalid(field, f"{field} must be an integer")
    if minimum is not None and value < minimum:
        raise invalid(field, f"{field} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise invalid(field, f"{field} must be at most {maximum}")
    return value


def _check_sizes(context, atype, params: Mapping) -> None:
    """Size limits a type's schema declares on top-level string parameters."""
    for name, schema in (atype.parameters_schema.get("properties") or {}).items():
        setting = schema.get(SIZE_ANNOTATION) if isinstance(schema, Mapping) else None
        value = params.get(name)
        if setting is None or not isinstance(value, str):
            continue
        limit = getattr(context.config, setting)
        # Cheap bound first: a str of n characters encodes to at most 4n bytes.
        if len(value) > limit or (len(value) * 4 > limit and len(value.encode("utf-8")) > limit):
            raise RequestError(413, "too-large", f"parameters.{name}",
                               f"parameters.{name} is larger than the limit of {limit} bytes")


class _Plan:
    """A validated request, before resolution against the database."""

    __slots__ = ("new", "computer_ids", "computer_tags", "attachment_ids", "atype")


def validate_request(context, request: Any, creator: str, *, origin_id: int | None = None) -> _Plan:
    """Everything that can be checked without the database."""
    if not isinstance(request, Mapping):
        raise invalid(None, "the request body must be a JSON object")
    unknown = sorted(set(request) - REQUEST_FIELDS)
    if unknown:
        raise invalid(unknown[0], f"unknown field {unknown[0]!r}")
    type_name = request.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise invalid("type", "type is required: the name of an activity type (GET /api/v1/activity-types)")
    types = context.plugins
    atype = types.get(type_name) if types is not None else None
    if atype is None:
        raise invalid("type", f"unknown activity type {type_name!r}")
    params = request.get("parameters", {})
    if not isinstance(params, Mapping):
        raise invalid("parameters", "parameters must be a JSON object")
    _check_sizes(context, atype, params)
    try:
        params = types.validate(type_name, params)
    except ParameterError as e:
        raise invalid(e.field, f"{e.field}: {e}") from None
    summary = request.get("summary", "")
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY:
        raise invalid("summary", f"summary must be a string of at most {MAX_SUMMARY} characters")

    computer_ids: list[int] = []
    computer_tags: list[str] = []
    if atype.kind == states.CLIENT:
        raw_ids = request.get("computer_ids")
        raw_tags = request.get("computer_tags")
        if raw_ids is not None:
            if not isinstance(raw_ids, list):
                raise invalid("computer_ids", "computer_ids must be a list of computer ids")
            for i, cid in enumerate(raw_ids):
                if type(cid) is not int or not 1 <= cid <= MAX_ID:
                    raise invalid(f"computer_ids.{i}", "computer_ids must hold positive integers")
            computer_ids = list(dict.fromkeys(raw_ids))
        if raw_tags is not None:
            if not isinstance(raw_tags, list):
                raise invalid("computer_tags", "computer_tags must be a list of tags")
            for i, tag in enumerate(raw_tags):
                if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG:
                    raise invalid(f"computer_tags.{i}", f"a tag is a non-empty string of at most {MAX_TAG} characters")
            computer_tags = list(dict.fromkeys(raw_tags))
        if not computer_ids and not computer_tags:
            raise invalid("computer_ids", f"a {type_name} activity needs computer_ids or computer_tags")
    else:
        for f in ("computer_ids", "computer_tags"):
            if request.get(f) is not None:
                raise invalid(f, f"{type_name} is a server activity type: it takes no {f}")

    now = now_of(context)
    deliver_after = _delivery_time(request["deliver_after"], "deliver_after") if request.get("deliver_after") is not None else None
    window = request.get("deliver_delay_window")
    if window is not None:
        window = _int(window, "deliver_delay_window", minimum=0, maximum=MAX_DELAY_WINDOW)
    if request.get("deliver_before") is not None:
        deliver_before = _delivery_time(request["deliver_before"], "deliver_before")
        if deliver_before <= now:
            raise invalid("deliver_before", "deliver_before is already past")
        if deliver_after is not None and deliver_before <= deliver_after:
            raise invalid("deliver_before", "deliver_before must be later than deliver_after")
    else:
        start = max(now, deliver_after or now)
        deliver_before = start + dt.timedelta(seconds=context.config.default_expiry + (window or 0))
    requires_approval = request.get("requires_approval", False)
    if not isinstance(requires_approval, bool):
        raise invalid("requires_approval", "requires_approval must be true or false")
    wait_for_id, threshold = None, 100
    wait_for = request.get("wait_for")
    if wait_for is not None:
        if not isinstance(wait_for, Mapping):
            raise invalid("wait_for", "wait_for must be an object {activity_id, threshold}")
        extra = sorted(set(wait_for) - {"activity_id", "threshold"})
        if extra:
            raise invalid(f"wait_for.{extra[0]}", f"unknown field wait_for.{extra[0]}")
        if "activity_id" not in wait_for:
            raise invalid("wait_for.activity_id", "wait_for.activity_id is required")
        wait_for_id = _int(wait_for["activity_id"], "wait_for.activity_id", minimum=1, maximum=MAX_ID)
        threshold = _int(wait_for.get("threshold", 100), "wait_for.threshold", minimum=0, maximum=100)

    attachment_ids: list[int] = []
    if atype.attachments_parameter and isinstance(params.get(atype.attachments_parameter), Mapping):
        for name, aid in params[atype.attachments_parameter].items():
            if type(aid) is not int or not 1 <= aid <= MAX_ID:
                raise invalid(f"parameters.{atype.attachments_parameter}.{name}", "an attachment id is a positive integer")
            attachment_ids.append(aid)

    plan = _Plan()
    plan.atype = atype
    plan.computer_ids = computer_ids
    plan.computer_tags = computer_tags
    plan.attachment_ids = attachment_ids
    plan.new = NewActivity(
        kind=atype.kind, type=type_name, parameters=params, creator=creator, summary=summary,
        deliver_after=deliver_after, deliver_before=deliver_before, deliver_delay_window=window,
        requires_approval=requires_approval, wait_for_id=wait_for_id, wait_for_threshold=threshold,
        origin_id=origin_id, attachment_ids=tuple(dict.fromkeys(attachment_ids)),
    )
    return plan


def _names(ids: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def create_thd(conn, db, plan: _Plan, now: dt.datetime) -> Activity:
    """Resolve and create in the caller's transaction; RequestError changes nothing
    as long as the caller rolls back (``Database.run`` does)."""
    new = plan.new
    if new.wait_for_id is not None:
        exists = conn.execute(sa.select(activities.c.id).where(activities.c.id == new.wait_for_id)).first()
        if exists is None:
            raise invalid("wait_for.activity_id", f"no activity {new.wait_for_id} to wait for")
    if new.attachment_ids:
        missing = sorted(set(new.attachment_ids) - db.attachments.existing_ids_thd(conn, new.attachment_ids))
        if missing:
            name = next(n for n, a in new.parameters[plan.atype.attachments_parameter].items() if a == missing[0])
            raise invalid(f"parameters.{plan.atype.attachments_parameter}.{name}", f"no attachment {missing[0]}")
    computer_ids: list[int] = []
    if new.kind == states.CLIENT:
        found, missing, pending = db.computers.resolve_thd(conn, ids=plan.computer_ids, tags=plan.computer_tags)
        if missing:
            raise invalid("computer_ids", f"no such computer: {_names(missing)}")
        if pending:
            field = "computer_ids" if set(pending) & set(plan.computer_ids) else "computer_tags"
            raise invalid(field, f"computers not accepted yet (pending): {_names(pending)}")
        if not found:
            raise invalid("computer_tags", "no computer has any of the tags " + ", ".join(map(repr, plan.computer_tags)))
        computer_ids = found
    return db.activities.create_thd(conn, _with_computers(new, computer_ids), now)


def _with_computers(new: NewActivity, computer_ids: list[int]) -> NewActivity:
    from dataclasses import replace

    return replace(new, computer_ids=computer_ids)


def publish_if_queued(context, activity: Activity) -> None:
    """Ask the queue (when this process has one) to publish a queued server activity."""
    if activity.kind == states.SERVER and activity.state == states.QUEUED:
        queue = getattr(context, "queue", None)
        if queue is not None:
            queue.publish_pending()


async def create_activities(context, request: Mapping[str, Any], creator: str, *, origin_id: int | None = None) -> Activity:
    """Create what ``request`` asks for (see the module docstring); returns the
    activity, or the group parent. Raises :class:`RequestError`; nothing is
    written then."""
    plan = validate_request(context, request, creator, origin_id=origin_id)
    now = now_of(context)
    db = context.db
    activity = await db.run(create_thd, db, plan, now)
    publish_if_queued(context, activity)
    return activity


# --- reapply ---------------------------------------------------------------------------


def _reapply_thd(conn, context, activity_id: int, creator: str, now: dt.datetime) -> Activity:
    db = context.db
    a = db.activities.get_thd(conn, activity_id)
    if a.is_group:
        sources = [c for c in db.activities.children_thd(conn, a.id) if c.state in (states.FAILED, states.CANCELED)
                   and not c.cancel_provisional]
        if not sources:
            raise states.TransitionError(
                f"activity {a.id} is a group with no failed or canceled child to reapply",
                activity_id=a.id, current=a.state)
    elif a.state not in (states.FAILED, states.CANCELED) or a.cancel_provisional:
        what = "provisionally canceled (the agent may still report)" if a.cancel_provisional else a.state
        raise states.TransitionError(f"activity {a.id} is {what}; only a failed or canceled activity can be reapplied",
                                     activity_id=a.id, current=a.state)
    else:
        sources = [a]
    request: dict[str, Any] = {"type": a.type, "parameters": a.parameters, "summary": a.summary}
    if a.kind == states.CLIENT:
        request["computer_ids"] = [s.computer_id for s in sources]
    if context.plugins is None or context.plugins.get(a.type) is None:
        raise invalid("type", f"activity type {a.type!r} is no longer available")
    plan = validate_request(context, request, creator, origin_id=a.id)
    created = create_thd(conn, db, plan, now)
    if created.is_group and a.is_group:
        # Each new child names the child it retries; the new parent names the old parent.
        by_computer = {s.computer_id: s.id for s in sources}
        conn.execute(
            activities.update()
            .where(activities.c.parent_id == created.id, activities.c.computer_id == sa.bindparam("cid"))
            .values(origin_id=sa.bindparam("origin")),
            [{"cid": cid, "origin": origin} for cid, origin in by_computer.items()],
        )
    elif not created.is_group and a.is_group:
        conn.execute(activities.update().where(activities.c.id == created.id).values(origin_id=sources[0].id))
        created = db.activities.get_thd(conn, created.id)
    return created


async def reapply(context, activity_id: int, creator: str) -> Activity:
    """New activities with the same type and parameters as a failed or canceled
    activity (a group: its failed and canceled children), linked by ``origin_id``.

    Raises ``ActivityNotFound``, ``TransitionError`` (nothing to reapply: 409) or
    :class:`RequestError` (e.g. the computer was removed since)."""
    now = now_of(context)
    activity = await context.db.run(_reapply_thd, context, activity_id, creator, now)
    publish_if_queued(context, activity)
    return activity


__all__ = ["RequestError", "create_activities", "reapply", "parse_time", "iso", "ActivityNotFound"]
