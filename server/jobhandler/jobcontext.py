"""The job-handler's implementation of ``server.hookspecs.JobContext``: what one
running job may use. One is built per activity run."""

from __future__ import annotations

import datetime as dt
from typing import Any, Awaitable, Callable, Mapping

import sqlalchemy as sa
from twisted.internet import defer, threads
from twisted.logger import Logger

from server import states
from server.db.tables import activities


class JobCanceled(Exception):
    """Raised by :meth:`RunningJobContext.check_canceled` once the activity is canceled."""


class RunningJobContext:
    """See :class:`server.hookspecs.JobContext` for the contract."""

    def __init__(self, *, activity, server_context, handler_name: str, output_max_size: int):
        self.activity = activity
        self.reactor = server_context.reactor
        self.log = Logger(namespace=f"ridgeline.job.{activity.type}")
        self._ctx = server_context
        self._db = server_context.db
        self._handler_name = handler_name
        self._output_max_size = output_max_size
        self._canceled = False
        self._cancel_waiters: list[defer.Deferred] = []
        #: Set by the handler when the job was abandoned: writes are refused then.
        self.abandoned = False
        #: The server's ``Database``, for built-in jobs (``purge-activities``); not
        #: part of the plugin contract: third-party jobs use the methods below.
        self.database = server_context.db

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.reactor.seconds(), tz=dt.timezone.utc)

    # --- cancellation ---------------------------------------------------------------

    @property
    def canceled(self) -> bool:
        return self._canceled

    def wait_canceled(self) -> defer.Deferred:
        """Fires (with None) when the activity is canceled; never if it is not."""
        if self._canceled:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._cancel_waiters.remove(d) if d in self._cancel_waiters else None)
        self._cancel_waiters.append(d)
        return d

    def check_canceled(self) -> None:
        """Raise :class:`JobCanceled` if the activity was canceled (a convenience)."""
        if self._canceled:
            raise JobCanceled(f"activity {self.activity.id} was canceled")

    def signal_canceled(self) -> None:
        """Called by the job-handler when it learns of the cancel."""
        if self._canceled:
            return
        self._canceled = True
        waiters, self._cancel_waiters = self._cancel_waiters, []
        for d in waiters:
            d.callback(None)

    # --- writing ----------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.abandoned:
            raise JobCanceled(f"activity {self.activity.id} is no longer run by this job-handler")

    async def report_progress(self, percent: int) -> None:
        """Store progress 0–100 (only while this handler runs the activity)."""
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise TypeError("progress must be a number from 0 to 100")
        value = max(0, min(100, int(percent)))
        self._check_writable()
        aid, me = self.activity.id, self._handler_name
        await self._db.run(lambda conn: conn.execute(
            activities.update()
            .where(activities.c.id == aid, activities.c.state == states.IN_PROGRESS, activities.c.claimed_by == me)
            .values(progress=value)
        ))

    async def store_output(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store one named output (replacing one of the same name); the job's
        outputs together may not exceed ``job_output_max_size``
        (``server.db.joboutputs.OutputTooLarge`` otherwise)."""
        self._check_writable()
        if isinstance(data, str):
            data = data.encode("utf-8")
        await self._db.joboutputs.store(self.activity.id, name, data, content_type, now=self._now(),
                                        max_total=self._output_max_size)

    # --- reading ------------------------------------------------------------------------

    async def get_activity(self, activity_id: int):
        return await self._db.activities.get(activity_id)

    async def list_activities(self, **filters: Any):
        return await self._db.activities.list(**filters)

    async def list_computers(self, **filters: Any):
        return await self._db.run(lambda conn: self._db.computers.list_thd(conn, **filters))

    # --- fanning out ------------------------------------------------------------------

    async def create_activity(self, request: Mapping[str, Any]):
        """Create activities as ``POST /api/v1/activities`` does, recorded as created
        by this job and linked to it by ``origin_id``."""
        self._check_writable()
        from server.activityservice import create_activities

        creator = f"job:{self.activity.id}"
        return await create_activities(self._ctx, request, creator, origin_id=self.activity.id)

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work on the reactor's thread pool (not the database's)."""
        if hasattr(self.reactor, "getThreadPool"):
            return await threads.deferToThread(fn, *args)
        return fn(*args)  # a test Clock has no threads: run inline
