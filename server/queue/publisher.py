"""The publisher: keeps the queue in step with the database (``ServerContext.queue``).

No activity is lost between the database and the queue, in this order:

1. the activity is committed ``queued`` with ``published_at`` NULL (by whoever
   creates or moves it);
2. :meth:`Publisher.publish_pending` reads the unpublished ``queued`` server
   activities, publishes their ids (confirmed by the queue), then
3. marks them ``published_at`` (only those still NULL).

A crash between 1 and 3 leaves rows unpublished: the sweep (every
``sweep_interval`` seconds) publishes them again. A crash between 2 and 3 publishes
an id twice, which the consumer's compare-and-set makes harmless. An activity
that goes back to ``queued`` (resumed after a pause) has ``published_at`` cleared
by the transition, so it is published again.

Calls to ``publish_pending`` while one runs are coalesced into one more run, which
sees everything committed before the call.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from server import states
from server.db.tables import activities
from server.queue.leases import sweep_expired_leases_thd

log = Logger(namespace="ridgeline.queue")

DEFAULT_SWEEP_INTERVAL = 5.0


def unpublished_thd(conn, limit: int) -> list[int]:
    return conn.execute(
        sa.select(activities.c.id)
        .where(activities.c.kind == states.SERVER, activities.c.state == states.QUEUED,
               activities.c.published_at.is_(None))
        .order_by(activities.c.id)
        .limit(limit)
    ).scalars().all()


def mark_published_thd(conn, ids: list[int], now: dt.datetime) -> int:
    return conn.execute(
        activities.update()
        .where(activities.c.id.in_(ids), activities.c.published_at.is_(None))
        .values(published_at=now)
    ).rowcount


class Publisher:
    """Publishes committed ``queued`` server activities; see the module docstring.

    ``queue``: the :class:`server.queue.JobQueue` (also used by an in-process
    job-handler to consume). ``types``: the ``ActivityTypes`` registry, for the
    lease sweep's retry rule.
    """

    def __init__(self, *, reactor, db, queue, types: Any = None, retry_limit: int = 0, batch_size: int = 1000,
                 log_: Logger | None = None):
        self.reactor = reactor
        self.db = db
        self.queue = queue
        self.types = types
        self.retry_limit = retry_limit
        self.batch_size = batch_size
        self._log = log_ or log
        self._waiters: list[defer.Deferred] = []
        self._running = False

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.reactor.seconds(), tz=dt.timezone.utc)

    def publish_pending(self) -> defer.Deferred:
        """Publish every committed, unpublished ``queued`` server activity.

        Returns a Deferred firing with the number published, or with None when
        the queue refused (logged; the activities stay unpublished and the sweep
        tries again). It never fails, so callers may ignore it.
        """
        d = defer.Deferred()
        self._waiters.append(d)
        if not self._running:
            defer.Deferred.fromCoroutine(self._run())
        return d

    async def _run(self) -> None:
        self._running = True
        try:
            while self._waiters:
                waiters, self._waiters = self._waiters, []
                try:
                    n = await self._publish_all()
                except Exception as e:
                    self._log.warn("publishing queued server activities failed (retried by the sweep): {error}",
                                   error=str(e) or type(e).__name__)
                    for w in waiters:
                        w.callback(None)
                else:
                    for w in waiters:
                        w.callback(n)
        finally:
            self._running = False

    async def _publish_all(self) -> int:
        total = 0
        while True:
            ids = await self.db.run(unpublished_thd, self.batch_size)
            if not ids:
                return total
            await self.queue.publish(ids)
            await self.db.run(mark_published_thd, ids, self._now())
            total += len(ids)
            if len(ids) < self.batch_size:
                return total

    def sweep_expired_leases(self, now: dt.datetime | None = None) -> defer.Deferred:
        """End expired job leases (see :mod:`server.queue.leases`), publish the
        retries; fires with the number of activities ended."""
        return defer.Deferred.fromCoroutine(self._sweep(now or self._now()))

    async def _sweep(self, now: dt.datetime) -> int:
        result = await self.db.run(lambda conn: sweep_expired_leases_thd(
            conn, self.db.activities, types=self.types, retry_limit=self.retry_limit, now=now))
        if result.ended:
            self._log.warn("ended {n} server activities whose job-handler stopped renewing its lease: {ids}",
                           n=len(result.ended), ids=result.ended)
        if result.retries:
            await self.publish_pending()
        return len(result.ended)


class QueueService(service.Service):
    """Connects the queue and (``sweep_interval`` not None: the server) runs the
    unpublished sweep. Job-handler processes only connect: publishing what the
    server committed is the server's job."""

    def __init__(self, publisher: Publisher, *, sweep_interval: float | None = DEFAULT_SWEEP_INTERVAL,
                 close_queue: bool = True):
        self.publisher = publisher
        self.sweep_interval = sweep_interval
        self.close_queue = close_queue
        self._loop: task.LoopingCall | None = None

    def startService(self):
        super().startService()
        self.publisher.queue.start()
        if self.sweep_interval is None:
            return
        self._loop = task.LoopingCall(self._sweep)
        self._loop.clock = self.publisher.reactor
        self._loop.start(self.sweep_interval, now=True)

    def _sweep(self):
        self.publisher.publish_pending()  # failures are logged; the next sweep retries

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.close_queue:
            return self.publisher.queue.close()
        return None
