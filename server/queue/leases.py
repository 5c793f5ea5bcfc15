"""The expired-lease sweep: a job-handler that stops renewing its lease (killed,
frozen, cut off from the database) leaves its activity ``in-progress`` with a
``lease_expires_at`` in the past. The sweep ends such activities ``failed`` with
the ``interrupted`` result code (the state table has no way back to
``queued``), and creates a new activity for a type that declares itself
``retry_safe``, linked by ``origin_id``, while ``retry_count`` is below the
configured limit.

Run by the server's scheduler (``ServerContext.queue.sweep_expired_leases``) and
by every job-handler; concurrent sweeps are safe: each move is a compare-and-set
and the loser skips the activity (and creates no retry).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from protocol import codes
from server import states
from server.db.activities import LostRace, NewActivity
from server.db.tables import activities

ACTOR = "lease-sweep"


@dataclass
class SweepResult:
    ended: list[int] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)


def sweep_expired_leases_thd(conn, activities_connector, *, types, retry_limit: int, now: dt.datetime,
                             batch_size: int = 500) -> SweepResult:
    """End up to ``batch_size`` expired leases in the caller's transaction.

    ``types``: the ``ActivityTypes`` registry (or None: no retries, the types
    being unknown in this process).
    """
    result = SweepResult()
    rows = conn.execute(
        sa.select(activities.c.id)
        .where(activities.c.state == states.IN_PROGRESS, activities.c.kind == states.SERVER,
               activities.c.lease_expires_at < now)
        .order_by(activities.c.id)
        .limit(batch_size)
    ).scalars().all()
    for activity_id in rows:
        a = activities_connector.get_thd(conn, activity_id)
        holder = a.claimed_by or "a job-handler"
        try:
            activities_connector.transition_thd(
                conn, a.id, states.IN_PROGRESS, states.FAILED, actor=ACTOR, now=now,
                reason=f"the lease of {holder} expired at {a.lease_expires_at.isoformat()}",
                values={"result_code": codes.INTERRUPTED,
                        "result_text": f"Interrupted: {holder} stopped renewing its lease (it died or lost the "
                                       f"database) while running this job."},
            )
        except LostRace:
            continue  # finished, canceled or swept by someone else meanwhile
        result.ended.append(a.id)
        atype = types.get(a.type) if types is not None else None
        if atype is not None and atype.retry_safe and a.retry_count < retry_limit:
            retry = activities_connector.create_thd(
                conn,
                NewActivity(kind=states.SERVER, type=a.type, parameters=a.parameters, creator=a.creator,
                            summary=a.summary, origin_id=a.id),
                now,
            )
            conn.execute(activities.update().where(activities.c.id == retry.id)
                         .values(retry_count=a.retry_count + 1))
            result.retries.append(retry.id)
    return result
