"""Outputs of server activities (reports, ...), stored in the database so that any
server process can serve them (``GET /api/v1/activities/{id}/output``).

One activity may store several named outputs; storing a name again replaces it.
The total size per activity is limited (``job_output_max_size``): the job gets
:class:`OutputTooLarge` and nothing is stored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from server.db.tables import job_outputs

NAME_MAX = 200


class OutputTooLarge(ValueError):
    """Storing this output would exceed the per-activity limit."""


@dataclass(frozen=True)
class OutputInfo:
    activity_id: int
    name: str
    content_type: str
    size: int
    created_at: dt.datetime


@dataclass(frozen=True)
class Output:
    info: OutputInfo
    data: bytes


def check_name(name: str) -> str:
    """Output names are short file-like names (they appear in URLs)."""
    if not isinstance(name, str) or not name or len(name) > NAME_MAX or "/" in name or name in (".", ".."):
        raise ValueError(f"bad output name {name!r}: 1-{NAME_MAX} characters, no '/'")
    if any(ord(c) < 32 for c in name):
        raise ValueError(f"bad output name {name!r}: control characters")
    return name


class JobOutputsConnector:
    """Table ``job_outputs``."""

    def __init__(self, db):
        self.db = db

    def store(self, activity_id: int, name: str, data: bytes, content_type: str, *, now: dt.datetime,
              max_total: int):
        return self.db.run(self.store_thd, activity_id, name, data, content_type, now=now, max_total=max_total)

    def store_thd(self, conn, activity_id: int, name: str, data: bytes, content_type: str, *,
                  now: dt.datetime, max_total: int) -> OutputInfo:
        """Store (or replace) one output; the activity's outputs together stay
        within ``max_total`` bytes."""
        check_name(name)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("output data must be bytes")
        others = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(job_outputs.c.data)), 0)).where(
                job_outputs.c.activity_id == activity_id, job_outputs.c.name != name
            )
        ).scalar_one()
        if others + len(data) > max_total:
            raise OutputTooLarge(
                f"output {name!r} ({len(data)} bytes) would bring this activity's outputs to "
                f"{others + len(data)} bytes; the limit is {max_total}"
            )
        conn.execute(
            job_outputs.delete().where(job_outputs.c.activity_id == activity_id, job_outputs.c.name == name)
        )
        conn.execute(
            job_outputs.insert().values(activity_id=activity_id, name=name, content_type=content_type,
                                        data=bytes(data), created_at=now)
        )
        return OutputInfo(activity_id, name, content_type, len(data), now)

    def list(self, activity_id: int):
        return self.db.run(self.list_thd, activity_id)

    def list_thd(self, conn, activity_id: int) -> list[OutputInfo]:
        rows = conn.execute(
            sa.select(job_outputs.c.activity_id, job_outputs.c.name, job_outputs.c.content_type,
                      sa.func.length(job_outputs.c.data).label("size"), job_outputs.c.created_at)
            .where(job_outputs.c.activity_id == activity_id)
            .order_by(job_outputs.c.name)
        )
        return [OutputInfo(**r._mapping) for r in rows]

    def get(self, activity_id: int, name: str):
        return self.db.run(self.get_thd, activity_id, name)

    def get_thd(self, conn, activity_id: int, name: str) -> Output | None:
        row = conn.execute(
            sa.select(job_outputs).where(job_outputs.c.activity_id == activity_id, job_outputs.c.name == name)
        ).first()
        if row is None:
            return None
        m = row._mapping
        info = OutputInfo(m["activity_id"], m["name"], m["content_type"], len(m["data"]), m["created_at"])
        return Output(info, bytes(m["data"]))

    def delete_for_thd(self, conn, activity_ids) -> int:
        return conn.execute(job_outputs.delete().where(job_outputs.c.activity_id.in_(list(activity_ids)))).rowcount
