"""``activity-report``: a CSV (and JSON) report of activities matching filters.

Parameters (all optional): ``state``, ``type``, ``computer_id``,
``created_after`` / ``created_before`` (ISO 8601; without a zone, UTC),
``max_rows`` (default 100000). Outputs ``activities.csv`` and ``activities.json``,
served at ``GET /api/v1/activities/{id}/output/{name}``. The report covers the
activities that existed when it started (later ones are left out, so paging
through a growing table stays consistent).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

from server import states
from server.activityservice import iso
from server.hookspecs import ActivityType, JobResult, ParameterError, hookimpl

NAME = "activity-report"
PAGE = 1000
COLUMNS = ("id", "kind", "type", "state", "computer_id", "parent_id", "creator", "summary", "created_at",
           "delivered_at", "completed_at", "result_code", "result_name", "result_text", "progress")

PARAMETERS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "state": {"type": "string", "enum": list(states.STATES), "description": "only activities in this state"},
        "type": {"type": "string", "minLength": 1, "maxLength": 200, "description": "only this activity type"},
        "computer_id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1, "description": "only this computer's activities"},
        "created_after": {"type": "string", "description": "ISO 8601 time: created at or after"},
        "created_before": {"type": "string", "description": "ISO 8601 time: created before"},
        "max_rows": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 100_000},
    },
}


def _parse_time(value: str, field: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ParameterError(f"parameters.{field}", f"{field} is not an ISO 8601 time: {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    try:
        return t.astimezone(dt.timezone.utc)
    except OverflowError:  # 9999-12-31T23:59-01:00 is past the calendar's end in UTC
        raise ParameterError(f"parameters.{field}", f"{field} is out of range: {value!r}") from None


def validate(params: dict) -> dict:
    out = dict(params)
    for field in ("created_after", "created_before"):
        if field in out:
            out[field] = _parse_time(out[field], field).isoformat()
    if "created_after" in out and "created_before" in out and out["created_after"] >= out["created_before"]:
        raise ParameterError("parameters.created_before", "created_before must be later than created_after")
    return out


def _time(t: dt.datetime | None) -> str:
    return iso(t) or ""


def _row(a) -> dict:
    return {
        "id": a.id, "kind": a.kind, "type": a.type, "state": a.state, "computer_id": a.computer_id,
        "parent_id": a.parent_id, "creator": a.creator, "summary": a.summary,
        "created_at": _time(a.created_at), "delivered_at": _time(a.delivered_at),
        "completed_at": _time(a.completed_at), "result_code": a.result_code, "result_name": a.result_name,
        "result_text": a.result_text, "progress": a.display_progress,
    }


async def run(job) -> JobResult:
    p = job.activity.parameters
    started = dt.datetime.fromtimestamp(job.reactor.seconds(), tz=dt.timezone.utc)
    before = min(_parse_time(p["created_before"], "created_before"), started) if "created_before" in p else started
    filters = {
        "state": p.get("state"),
        "type": p.get("type"),
        "computer_id": p.get("computer_id"),
        "created_after": _parse_time(p["created_after"], "created_after") if "created_after" in p else None,
        # Only what existed at the start: offset paging stays consistent.
        "created_before": before,
    }
    max_rows = int(p.get("max_rows", 100_000))
    rows: list[dict] = []
    total = None
    while len(rows) < max_rows:
        if job.canceled:
            return JobResult(f"Canceled after {len(rows)} rows.", failed=True)
        count, page = await job.list_activities(**filters, limit=min(PAGE, max_rows - len(rows)), offset=len(rows))
        total = count if total is None else total
        rows.extend(_row(a) for a in page)
        if total:
            await job.report_progress(min(90, 90 * len(rows) // max(1, min(total, max_rows))))
        if len(page) < PAGE:
            break
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    shown = {k: (iso(v) if isinstance(v, dt.datetime) else v) for k, v in filters.items() if v is not None}
    doc = {"generated_at": iso(started), "filters": shown, "matching": total or 0, "count": len(rows),
           "truncated": bool(total and total > len(rows)), "activities": rows}
    await job.store_output("activities.csv", buf.getvalue().encode("utf-8"), "text/csv; charset=utf-8")
    await job.store_output("activities.json", json.dumps(doc, indent=1).encode("utf-8"), "application/json")
    more = f" (of {total}; max_rows reached)" if total and total > len(rows) else ""
    return JobResult(f"Report of {len(rows)} activities{more}: outputs activities.csv and activities.json.")


@hookimpl
def ridgeline_activity_types():
    return [ActivityType(
        name=NAME, kind="server", parameters_schema=PARAMETERS_SCHEMA, validate=validate, run=run,
        description="CSV and JSON report of the activities matching filters (state, type, computer, time range)",
        retry_safe=True, time_limit=1800,
    )]
