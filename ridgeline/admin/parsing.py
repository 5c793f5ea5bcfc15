"""Parsing command-line values of the admin CLI: pure functions, no I/O.

- WHEN: an ISO 8601 time (a time without a zone is local time, as a person at the
  keyboard means it) or a relative time from now: ``+30s``, ``+5m``, ``+2h``,
  ``+1d``, or a sum such as ``+1h30m``; ``-1h`` is an hour ago (for ``--since``);
  ``now`` is accepted too.
- ``--param k=v``: the value is JSON when it parses as JSON (``3``, ``true``,
  ``[1,2]``, ``{"a":1}``, ``"quoted"``), otherwise the plain string.
- ``--wait-for ID[:THRESHOLD]``: an activity id and a percentage 0–100.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Iterable

UTC = dt.timezone.utc

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RELATIVE = re.compile(r"([+-])((?:\d+[smhd])+)")
_PART = re.compile(r"(\d+)([smhd])")


class ValueProblem(ValueError):
    """A command-line value that cannot be used; the message says why."""


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """The aware UTC time ``text`` names; ``now`` (aware) anchors relative times."""
    try:
        return _parse_when(text, now)
    except OverflowError:  # +99999999999d, or 0001-01-01T00:00+01:00 in UTC
        raise ValueProblem(f"{text!r} is out of range (the calendar ends at year 9999)") from None


def _parse_when(text: str, now: dt.datetime) -> dt.datetime:
    value = text.strip()
    if value.lower() == "now":
        return now.astimezone(UTC)
    m = _RELATIVE.fullmatch(value)
    if m:
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(m.group(2)))
        if m.group(1) == "-":
            seconds = -seconds
        return (now + dt.timedelta(seconds=seconds)).astimezone(UTC)
    if value.startswith(("+", "-")):
        raise ValueProblem(f"{text!r} is not a relative time; use e.g. +30s, +5m, +2h, +1d (or -1h: ago)")
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueProblem(
            f"{text!r} is not a time; use ISO 8601 (2030-01-31T08:00, 2030-01-31T08:00:00Z) "
            "or a relative time (+30s, +5m, +2h, +1d)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a naive time is the local time of the person typing it
    return when.astimezone(UTC)


def iso(when: dt.datetime) -> str:
    """How the CLI sends a time: ISO 8601 in UTC with a ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, value); the value is JSON when it parses as JSON."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueProblem(f"{text!r} is not KEY=VALUE")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """Several ``key=value`` items as a mapping; a key given twice is an error."""
    return collect_params(parse_param(item) for item in items)


def collect_params(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """(key, value) pairs as a mapping; a key given twice is an error."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueProblem(f"parameter {key!r} is given twice")
        out[key] = value
    return out


def parse_wait_for(text: str) -> dict[str, int]:
    """``ID[:THRESHOLD]`` → the API's ``wait_for`` object (threshold default 100)."""
    ident, sep, threshold = text.partition(":")
    try:
        activity_id = int(ident)
    except ValueError:
        raise ValueProblem(f"{text!r}: the activity id must be a number (ID or ID:THRESHOLD)") from None
    if activity_id <= 0:
        raise ValueProblem(f"{text!r}: the activity id must be positive")
    result = {"activity_id": activity_id, "threshold": 100}
    if sep:
        try:
            result["threshold"] = int(threshold)
        except ValueError:
            raise ValueProblem(f"{text!r}: the threshold must be a whole percentage 0-100") from None
        if not 0 <= result["threshold"] <= 100:
            raise ValueProblem(f"{text!r}: the threshold must be between 0 and 100")
    return result


def parse_seconds(text: str) -> int:
    """A positive number of seconds (``--time-limit``)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueProblem(f"{text!r} is not a whole number of seconds") from None
    if value <= 0:
        raise ValueProblem(f"{text!r}: must be more than 0 seconds")
    return value
