"""Turning API replies into text for people: pure functions, no I/O.

Tables are compact aligned columns (two spaces apart, no borders); times are shown
in local time as ``YYYY-MM-DD HH:MM:SS``. Every function takes the decoded JSON
of the API and returns a string, so it is tested without a server.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping, Sequence

FINAL_STATES = ("succeeded", "failed", "canceled")
#: Order in which states are listed in counts and progress lines.
STATE_ORDER = ("queued", "scheduled", "waiting", "blocked", "in-progress", "succeeded", "failed", "canceled")
MAX_CELL = 60


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns; the last column is not padded. An empty ``rows`` still
    prints the header so a script sees the shape."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        padded = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1])] + [r[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def local_time(value: str | None, tz: dt.tzinfo | None = None) -> str:
    """An API time (ISO 8601, UTC) as local ``YYYY-MM-DD HH:MM:SS``; ``-`` if none."""
    when = parse_time(value)
    if when is None:
        return value or "-"
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def short(text: Any, limit: int = MAX_CELL) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    if text is None:
        return ""
    lines = str(text).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > limit or len(lines) > 1:
        first = first[: limit - 1].rstrip() + "…" if len(first) > limit - 1 else first + " …"
    return first


def is_final(activity: Mapping[str, Any]) -> bool:
    """Whether an activity will not change any more. A provisional ``canceled``
    (canceled while in progress, the agent's result still to come) is not."""
    if "is_final" in activity:
        return bool(activity["is_final"])
    return activity.get("state") in FINAL_STATES and not activity.get("cancel_provisional")


def state_label(activity: Mapping[str, Any]) -> str:
    state = str(activity.get("state", "?"))
    if state == "blocked" and activity.get("blocked_reason"):
        return f"blocked ({activity['blocked_reason']})"
    if state == "canceled" and not is_final(activity):
        return "canceled (provisional)"
    return state


def computer_label(activity: Mapping[str, Any]) -> str:
    if activity.get("is_group") or activity.get("children_count"):
        return f"group of {activity.get('children_count', '?')}"
    cid = activity.get("computer_id")
    return "-" if cid is None else str(cid)


def result_label(activity: Mapping[str, Any]) -> str:
    """The result of a final activity (name and first line of text), else its summary."""
    if is_final(activity) or activity.get("result_text") or activity.get("result_code") is not None:
        name = activity.get("result_name") or (
            str(activity["result_code"]) if activity.get("result_code") is not None else "")
        text = short(activity.get("result_text"))
        joined = f"[{name}] {text}".strip() if name else text
        if joined:
            return short(joined)
    return short(activity.get("summary"))


def activities_table(activities: Sequence[Mapping[str, Any]], tz: dt.tzinfo | None = None) -> str:
    return table(
        ("ID", "TYPE", "STATE", "COMPUTER", "CREATED", "SUMMARY/RESULT"),
        [
            (a.get("id"), a.get("type"), state_label(a), computer_label(a),
             local_time(a.get("created_at"), tz), result_label(a))
            for a in activities
        ],
    )


def counts_line(counts: Mapping[str, int]) -> str:
    """``succeeded 3, failed 1, queued 6`` — non-zero counts in the spec's order."""
    known = [s for s in STATE_ORDER if counts.get(s)]
    extra = sorted(s for s in counts if s not in STATE_ORDER and counts[s])
    return ", ".join(f"{s} {counts[s]}" for s in known + extra) or "none"


def group_progress_line(activity: Mapping[str, Any]) -> str:
    """One line for a group: children final/total, percent, counts by state."""
    counts = activity.get("counts") or {}
    total = activity.get("children_count") or sum(counts.values())
    final = sum(counts.get(s, 0) for s in FINAL_STATES)
    pct = (100 * final // total) if total else 0
    return (f"activity {activity.get('id')} {state_label(activity)}: {final}/{total} children final "
            f"({pct}%) — {counts_line(counts)}")


def history_table(history: Sequence[Mapping[str, Any]], tz: dt.tzinfo | None = None) -> str:
    rows = []
    for h in history:
        rows.append((local_time(h.get("at"), tz), event_label(h), h.get("actor") or "-", short(h.get("reason"), 80)))
    return table(("TIME", "EVENT", "BY", "REASON"), rows)


def event_label(entry: Mapping[str, Any]) -> str:
    if entry.get("event", "transition") == "transition":
        return f"{entry.get('from_state') or '(new)'} → {entry.get('to_state')}"
    return str(entry.get("event"))


def events_table(events: Sequence[Mapping[str, Any]], tz: dt.tzinfo | None = None) -> str:
    return table(
        ("TIME", "ACTIVITY", "COMPUTER", "EVENT", "BY", "REASON"),
        [
            (local_time(e.get("at"), tz), e.get("activity_id"), e.get("computer_id"), event_label(e),
             e.get("actor") or "-", short(e.get("reason")))
            for e in events
        ],
    )


def _fields(pairs: Iterable[tuple[str, Any]]) -> str:
    pairs = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in pairs)


def activity_detail(activity: Mapping[str, Any], tz: dt.tzinfo | None = None) -> str:
    """``activities show``: fields, group counts, result, parameters and history."""
    a = activity
    wait_for = a.get("wait_for")
    if isinstance(wait_for, Mapping):
        wait_for = f"activity {wait_for.get('activity_id')} at {wait_for.get('threshold', 100)}%"
    elif a.get("wait_for_id"):
        wait_for = f"activity {a['wait_for_id']} at {a.get('wait_for_threshold', 100)}%"
    result = None
    if a.get("result_code") is not None or a.get("result_name"):
        result = f"{a.get('result_name') or '-'} (code {a.get('result_code')})"
    progress = a.get("progress")
    parts = [
        _fields([
            ("activity", a.get("id")),
            ("type", f"{a.get('type')} ({a.get('kind')})" if a.get("kind") else a.get("type")),
            ("state", state_label(a)),
            ("summary", a.get("summary")),
            ("computer", a.get("computer_id")),
            ("parent", a.get("parent_id")),
            ("origin", a.get("origin_id")),
            ("creator", a.get("creator")),
            ("created", local_time(a.get("created_at"), tz)),
            ("approved", a.get("approved_at") and local_time(a["approved_at"], tz)),
            ("delivered", a.get("delivered_at") and local_time(a["delivered_at"], tz)),
            ("completed", a.get("completed_at") and local_time(a["completed_at"], tz)),
            ("deliver after", a.get("deliver_after") and local_time(a["deliver_after"], tz)),
            ("deliver before", a.get("deliver_before") and local_time(a["deliver_before"], tz)),
            ("delay window", a.get("deliver_delay_window") and f"{a['deliver_delay_window']} s"),
            ("requires approval", "yes" if a.get("requires_approval") else None),
            ("wait for", wait_for),
            ("progress", None if progress is None else f"{progress}%"),
            ("children", a.get("children_count") or None),
            ("by state", counts_line(a["counts"]) if a.get("counts") else None),
            ("result", result),
        ])
    ]
    if a.get("result_text"):
        parts.append("result text:\n" + _indent(str(a["result_text"]).rstrip()))
    params = a.get("parameters")
    if params:
        parts.append("parameters:\n" + _indent(_parameters(params)))
    history = a.get("history")
    if history:
        parts.append("history:\n" + _indent(history_table(history, tz)))
    return "\n".join(parts)


def _parameters(params: Mapping[str, Any]) -> str:
    lines = []
    for k, v in params.items():
        text = v if isinstance(v, str) else repr(v) if not isinstance(v, (dict, list)) else _json(v)
        if isinstance(text, str) and "\n" in text:
            lines.append(f"{k}:\n{_indent(text.rstrip())}")
        else:
            lines.append(f"{k}: {text}")
    return "\n".join(lines)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line if line else line for line in text.splitlines())


def computer_state(c: Mapping[str, Any]) -> str:
    return str(c.get("status") or c.get("state") or "?")


def computers_table(computers: Sequence[Mapping[str, Any]], tz: dt.tzinfo | None = None) -> str:
    return table(
        ("ID", "TITLE", "HOSTNAME", "STATE", "LAST SEEN", "TAGS"),
        [
            (c.get("id"), short(c.get("title"), 40), short(c.get("hostname"), 40), computer_state(c),
             local_time(c.get("last_seen"), tz), ",".join(c.get("tags") or ()) or "-")
            for c in computers
        ],
    )


def computer_detail(c: Mapping[str, Any], tz: dt.tzinfo | None = None) -> str:
    return _fields([
        ("computer", c.get("id")),
        ("title", c.get("title")),
        ("hostname", c.get("hostname")),
        ("state", computer_state(c)),
        ("account", c.get("account_name")),
        ("access group", c.get("access_group")),
        ("tags", ", ".join(c.get("tags") or ()) or "-"),
        ("registered", local_time(c.get("registered_at"), tz)),
        ("accepted", c.get("accepted_at") and local_time(c["accepted_at"], tz)),
        ("last seen", local_time(c.get("last_seen"), tz)),
        ("machine id", c.get("machine_id")),
        ("vm", c.get("vm_info")),
        ("container", c.get("container_info")),
        ("clone of", c.get("clone_of_id")),
    ])


def transition_line(activity_id: Any, entry: Mapping[str, Any], tz: dt.tzinfo | None = None) -> str:
    """``watch`` on one activity: one line per history entry."""
    reason = short(entry.get("reason"))
    return f"{local_time(entry.get('at'), tz)}  activity {activity_id}  {event_label(entry)}" + (
        f"  ({reason})" if reason else "")


def final_line(activity: Mapping[str, Any]) -> str:
    """The last line of ``watch``: the final state and the result (a group: its counts)."""
    line = f"activity {activity.get('id')} ended {state_label(activity)}"
    if activity.get("is_group") or activity.get("children_count"):
        result = counts_line(activity.get("counts") or {})
    elif activity.get("result_text") or activity.get("result_name"):
        result = result_label(activity)
    else:
        result = ""
    return f"{line}: {result}" if result else line
