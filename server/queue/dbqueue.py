"""The ``db`` queue: the ``job_queue`` table of the server's own database.

A message is a row. A consumer takes rows by setting ``claimed_by`` and a
visibility deadline (``claim_expires_at``) in one statement: on PostgreSQL the
rows are picked with ``FOR UPDATE SKIP LOCKED`` (consumers never wait on each
other), on SQLite the ``UPDATE`` re-checks that the row is still free, a
compare-and-set (SQLite runs one writer at a time). Acknowledging deletes the
row; a consumer that dies leaves its rows to be taken again once the deadline
passes.

Waking up: a publish in this process wakes this process's consumer at once (the
in-process job-handler of ``ridgeline server``). Another process notices new rows
at its next poll, every ``poll_interval`` (0.25 s) while idle: an indexed
one-row probe, negligible next to the work itself, and it works on SQLite,
which has no notification mechanism. When a poll fills the prefetch window the
next one follows at once, so a backlog drains without waiting.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Sequence

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger

from server.db.tables import job_queue

log = Logger(namespace="ridgeline.queue.db")


def _now(reactor) -> dt.datetime:
    return dt.datetime.fromtimestamp(reactor.seconds(), tz=dt.timezone.utc)


class DbQueue:
    """See the module docstring and :class:`server.queue.JobQueue`."""

    name = "db"

    def __init__(self, *, reactor, db, consumer_name: str, poll_interval: float = 0.25,
                 visibility_timeout: float = 60.0, retry_delay: float = 1.0, max_batch: int = 200):
        self.reactor = reactor
        self.db = db
        self.consumer_name = consumer_name
        self.poll_interval = poll_interval
        self.visibility_timeout = visibility_timeout
        self.retry_delay = retry_delay
        self.max_batch = max_batch
        self._handler: Callable[[int], defer.Deferred] | None = None
        self._prefetch = 1
        self._inflight: dict[int, defer.Deferred] = {}  # row id -> settled when acked/returned
        self._timer = None
        self._polling = False
        self._again = False
        self._acks: list[tuple[int, defer.Deferred]] = []
        self._acking = False

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to connect: the database is already there."""

    def close(self) -> defer.Deferred:
        return self.stop_consuming()

    # --- publishing --------------------------------------------------------------------

    def publish(self, activity_ids: Sequence[int]) -> defer.Deferred:
        ids = list(activity_ids)
        if not ids:
            return defer.succeed(None)
        d = self.db.run(self._insert_thd, ids, _now(self.reactor))
        d.addCallback(lambda _: self.wake())
        return d

    @staticmethod
    def _insert_thd(conn, ids: list[int], now: dt.datetime) -> None:
        conn.execute(job_queue.insert(), [{"activity_id": i, "enqueued_at": now} for i in ids])

    # --- consuming ---------------------------------------------------------------------

    def consume(self, handler: Callable[[int], defer.Deferred], prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._handler = handler
        self._prefetch = prefetch
        self.wake()

    def wake(self) -> None:
        """Poll now (a publish in this process, or a delivery settled)."""
        if self._handler is None:
            return
        if self._polling:
            self._again = True
            return
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.reactor.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._timer = None
        if self._handler is None or self._polling:
            return
        room = min(self._prefetch - len(self._inflight), self.max_batch)
        if room <= 0:
            return  # a settled delivery wakes us
        self._polling = True
        self._again = False
        now = _now(self.reactor)
        d = self.db.run(self._claim_thd, self.consumer_name, room, now,
                        now + dt.timedelta(seconds=self.visibility_timeout))
        d.addCallbacks(lambda rows: self._claimed(rows, room), self._poll_failed)

    def _poll_failed(self, failure) -> None:
        self._polling = False
        log.warn("db queue: taking messages failed: {error}", error=failure.getErrorMessage())
        if self._handler is not None:
            self._schedule(max(self.poll_interval, self.retry_delay))

    @staticmethod
    def _claim_thd(conn, me: str, limit: int, now: dt.datetime, expires: dt.datetime) -> list[tuple[int, int]]:
        free = sa.or_(job_queue.c.claimed_by.is_(None), job_queue.c.claim_expires_at < now)
        # PostgreSQL: skip rows another consumer is taking right now; SQLite
        # ignores FOR UPDATE and the outer WHERE re-checks (compare-and-set).
        candidates = (
            sa.select(job_queue.c.id).where(free).order_by(job_queue.c.id).limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(
            job_queue.update()
            .where(job_queue.c.id.in_(candidates.scalar_subquery()), free)
            .values(claimed_by=me, claim_expires_at=expires)
            .returning(job_queue.c.id, job_queue.c.activity_id)
        ).all()
        return sorted((r.id, r.activity_id) for r in rows)

    def _claimed(self, rows: list[tuple[int, int]], room: int) -> None:
        self._polling = False
        if self._handler is None:
            # Stopped meanwhile: hand the rows back at once.
            self._return([r for r, _ in rows])
            return
        for row_id, activity_id in rows:
            self._deliver(row_id, activity_id)
        if len(rows) >= room or self._again:
            self._schedule(0)
        else:
            self._schedule(self.poll_interval)

    def _deliver(self, row_id: int, activity_id: int) -> None:
        settled = defer.Deferred()
        self._inflight[row_id] = settled
        d = defer.maybeDeferred(self._handler, activity_id)

        def ok(_):
            self._ack(row_id)

        def failed(f):
            log.warn("db queue: activity {id} not handled, returned to the queue: {error}", id=activity_id,
                     error=f.getErrorMessage())
            self._return([row_id], delay=self.retry_delay)

        d.addCallbacks(ok, failed)

    def _settle(self, row_ids) -> None:
        for row_id in row_ids:
            settled = self._inflight.pop(row_id, None)
            if settled is not None:
                settled.callback(None)
        self.wake()

    def _ack(self, row_id: int) -> None:
        # Acks are gathered while one delete runs: one transaction for many.
        self._acks.append(row_id)
        self._flush_acks()

    def _flush_acks(self) -> None:
        if self._acking or not self._acks:
            return
        batch, self._acks = self._acks, []
        self._acking = True

        def done(result):
            self._acking = False
            self._settle(batch)
            self._flush_acks()
            return result

        d = self.db.run(lambda conn: conn.execute(job_queue.delete().where(job_queue.c.id.in_(batch))))
        d.addErrback(lambda f: log.warn("db queue: acknowledging failed (the rows come back later): {error}",
                                        error=f.getErrorMessage()))
        d.addBoth(done)

    def _return(self, row_ids: list[int], delay: float = 0.0) -> None:
        if not row_ids:
            return
        at = _now(self.reactor) + dt.timedelta(seconds=delay)
        d = self.db.run(lambda conn: conn.execute(
            job_queue.update().where(job_queue.c.id.in_(row_ids)).values(claim_expires_at=at)))
        d.addErrback(lambda f: log.warn("db queue: returning messages failed: {error}", error=f.getErrorMessage()))
        d.addBoth(lambda _: self._settle(row_ids))

    def stop_consuming(self) -> defer.Deferred:
        self._handler = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending = list(self._inflight.values())
        return defer.DeferredList(pending).addCallback(lambda _: None)
