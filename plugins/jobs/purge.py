"""``purge-activities``: deletes final activities completed more than N days ago,
with their history, outputs, queue rows and attachment links, in batches (one
transaction each), reporting progress.

Parameters: ``older_than_days`` (required, >= 1), ``batch_size`` (default 500).

What is never deleted, so nothing left behind points at a deleted row or gets
its bookkeeping broken:

- anything not final (a provisional cancel still waiting for the agent's result
  counts as not final);
- a group child whose parent is not itself final and old enough (the parent's
  per-state counters would drift);
- a group parent while any of its children remain (children go first, in an
  earlier batch);
- an activity another remaining activity refers to: its prerequisite
  (``wait_for``; a waiter that is not final still needs it to decide) or the
  activity it retries or reapplies (``origin_id``). It goes in a later batch,
  once the referrer has gone, or stays while the referrer is kept.

Attachments themselves are not deleted (another activity or a new request may
use them); only the links. Messages already in a computer's outbox keep their
content and lose the link to the activity.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from server import states
from server.db.tables import activities, activity_attachments, activity_history, job_outputs, job_queue, outbox
from server.hookspecs import ActivityType, JobResult, hookimpl

NAME = "purge-activities"
MAX_ATTEMPTS = 3

PARAMETERS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["older_than_days"],
    "properties": {
        "older_than_days": {"type": "integer", "minimum": 1, "maximum": 36500,
                            "description": "delete final activities completed more than this many days ago"},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 500},
    },
}


def _purgeable(cutoff: dt.datetime):
    """The WHERE clause of activities that may be deleted now (see the module docstring)."""
    a = activities
    p = activities.alias("parent")
    o = activities.alias("other")
    final = lambda t: sa.and_(t.c.state.in_(sorted(states.FINAL_STATES)),  # noqa: E731
                              t.c.cancel_provisional == sa.false(), t.c.completed_at < cutoff)
    return sa.and_(
        final(a),
        sa.or_(a.c.parent_id.is_(None),
               sa.exists(sa.select(p.c.id).where(p.c.id == a.c.parent_id, final(p)))),
        ~sa.exists(sa.select(o.c.id).where(o.c.parent_id == a.c.id)),
        ~sa.exists(sa.select(o.c.id).where(o.c.wait_for_id == a.c.id)),
        ~sa.exists(sa.select(o.c.id).where(o.c.origin_id == a.c.id)),
    )


def count_purgeable_thd(conn, cutoff: dt.datetime) -> int:
    """Final, old activities (an estimate of the work: some may have to stay)."""
    return conn.execute(
        sa.select(sa.func.count()).select_from(activities).where(
            activities.c.state.in_(sorted(states.FINAL_STATES)), activities.c.cancel_provisional == sa.false(),
            activities.c.completed_at < cutoff)
    ).scalar_one()


def purge_batch_thd(conn, cutoff: dt.datetime, batch_size: int) -> int:
    """Delete up to ``batch_size`` purgeable activities and what hangs on them."""
    ids = conn.execute(
        sa.select(activities.c.id).where(_purgeable(cutoff)).order_by(activities.c.id).limit(batch_size)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    if not ids:
        return 0
    conn.execute(activity_history.delete().where(activity_history.c.activity_id.in_(ids)))
    conn.execute(job_outputs.delete().where(job_outputs.c.activity_id.in_(ids)))
    conn.execute(activity_attachments.delete().where(activity_attachments.c.activity_id.in_(ids)))
    conn.execute(job_queue.delete().where(job_queue.c.activity_id.in_(ids)))
    conn.execute(outbox.update().where(outbox.c.activity_id.in_(ids)).values(activity_id=None))
    return conn.execute(activities.delete().where(activities.c.id.in_(ids))).rowcount


async def run(job) -> JobResult:
    p = job.activity.parameters
    days = int(p["older_than_days"])
    batch = int(p.get("batch_size", 500))
    now = dt.datetime.fromtimestamp(job.reactor.seconds(), tz=dt.timezone.utc)
    cutoff = now - dt.timedelta(days=days)
    db = job.database
    estimate = await db.run(count_purgeable_thd, cutoff)
    deleted = 0
    failures = 0
    while True:
        if job.canceled:
            return JobResult(f"Canceled after deleting {deleted} activities.", failed=True)
        try:
            n = await db.run(purge_batch_thd, cutoff, batch)
        except sa.exc.DBAPIError as e:
            # A new activity started referring to one of the batch (a race); try again.
            failures += 1
            if failures >= MAX_ATTEMPTS:
                raise RuntimeError(f"deleting a batch failed {failures} times; deleted {deleted} so far: "
                                   f"{str(e.orig).splitlines()[0] if e.orig else e}") from None
            continue
        if n == 0:
            break
        deleted += n
        job.log.info("purge: deleted {deleted} of about {estimate}", deleted=deleted, estimate=estimate)
        await job.report_progress(min(99, 100 * deleted // max(estimate, 1)))
    kept = max(0, estimate - deleted)
    note = f"; {kept} kept because remaining activities refer to them" if kept else ""
    return JobResult(f"Deleted {deleted} activities completed before {cutoff.isoformat()}{note}.")


@hookimpl
def ridgeline_activity_types():
    return [ActivityType(
        name=NAME, kind="server", parameters_schema=PARAMETERS_SCHEMA, run=run, retry_safe=True, time_limit=6 * 3600,
        description="delete final activities older than N days with their history and outputs, in batches",
    )]
