"""The job-handler: takes server activities off the queue, claims them, runs their
job plugin and records the outcome.

For each message (an activity id):

1. wait for a free slot (``concurrency`` jobs at once; messages waiting here stay
   unacknowledged, so the queue's prefetch bounds them);
2. **claim**: compare-and-set ``queued`` → ``in-progress`` with ``claimed_by`` (this
   handler's name) and ``lease_expires_at`` (now + ``lease_seconds``), through
   ``ActivitiesConnector.transition_thd``. Claims arriving together are written in
   one transaction (in id order, so two handlers never deadlock). An activity that
   is not ``queued`` (canceled meanwhile, taken by another handler, a duplicate
   message) is left untouched;
3. the message is acknowledged only now, after the claim's outcome is committed;
4. run the type's ``run(job)`` with a :class:`RunningJobContext`: success →
   ``succeeded`` with its text; an exception → ``failed`` with "Type: message"; the
   time limit → ``failed`` with code 102 (``time-limit``).

While jobs run, their leases are renewed every ``lease_seconds / 3`` with
``WHERE state = 'in-progress' AND claimed_by = me``. A renewal that finds the
activity no longer ours (an administrator canceled it, or a sweep ended it) tells
the job through its context (``canceled``, ``wait_canceled()``); a job that has not
stopped ``job_grace`` seconds later is abandoned (its coroutine is cancelled and
its writes refused); the activity stays as the cancel left it. In the server
process a cancel is noticed right after it commits (a cancel listener), elsewhere
at the next renewal.

Stopping (SIGTERM): no more claims (messages waiting for a slot go back to the
queue), running jobs get ``job_grace`` seconds to finish; the rest are left to
the lease rule (they end ``failed``/``interrupted`` once their lease expires).
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import sqlalchemy as sa
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from protocol import codes
from server import states
from server.db.tables import activities
from server.hookspecs import JobResult
from server.jobhandler.jobcontext import JobCanceled, RunningJobContext

log = Logger(namespace="ridgeline.jobhandler")


def handler_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Stopping(Exception):
    """The job-handler is stopping: the message goes back to the queue."""


class _Batcher:
    """Gathers items submitted while one batch is being written, and writes them
    together: one database transaction for many claims (or outcomes)."""

    def __init__(self, run_batch: Callable[[list], defer.Deferred], max_size: int = 200):
        self._run_batch = run_batch
        self._max = max_size
        self._pending: list[tuple[Any, defer.Deferred]] = []
        self._busy = False

    def submit(self, item) -> defer.Deferred:
        d = defer.Deferred()
        self._pending.append((item, d))
        self._flush()
        return d

    def _flush(self) -> None:
        if self._busy or not self._pending:
            return
        batch, self._pending = self._pending[: self._max], self._pending[self._max:]
        self._busy = True

        def done(results):
            self._busy = False
            if isinstance(results, Failure):
                for _, d in batch:
                    d.errback(results)
            else:
                for (_, d), r in zip(batch, results):
                    d.callback(r)
            self._flush()

        self._run_batch([item for item, _ in batch]).addBoth(done)


#: Longest result text stored; a job's text beyond it is cut.
MAX_RESULT_TEXT = 10000
#: Result codes must fit the database's integer column on every backend.
_CODE_RANGE = (-(2**31), 2**31 - 1)


def outcome_of(result: Any) -> tuple[str, dict]:
    """The state and values a job's return value means. A value the database
    could not store (a code that is no integer or out of range, a text that is no
    string) fails the activity with a text saying what was wrong, rather than
    poisoning the batch of outcomes it would be written with."""
    if result is None or isinstance(result, str):
        return states.SUCCEEDED, {"result_text": (result or "")[:MAX_RESULT_TEXT], "result_code": None}
    if not isinstance(result, JobResult):
        return states.FAILED, {"result_text": f"the job returned {type(result).__name__}, not a JobResult or text",
                               "result_code": None}
    problem = None
    code = result.code
    if code is not None and (type(code) is not int or not _CODE_RANGE[0] <= code <= _CODE_RANGE[1]):
        problem = f"its result code {code!r:.50} is not an integer from {_CODE_RANGE[0]} to {_CODE_RANGE[1]}"
    elif not isinstance(result.text, str):
        problem = f"its text is {type(result.text).__name__}, not a string"
    elif not isinstance(result.failed, bool):
        problem = f"its failed flag is {type(result.failed).__name__}, not true or false"
    if problem:
        return states.FAILED, {"result_text": f"the job returned an invalid JobResult: {problem}",
                               "result_code": None}
    to = states.FAILED if result.failed else states.SUCCEEDED
    return to, {"result_text": result.text[:MAX_RESULT_TEXT], "result_code": code}


@dataclass(eq=False)
class _Run:
    activity: Any
    ctx: RunningJobContext
    job: defer.Deferred | None = None
    timer: Any = None
    grace_timer: Any = None
    settled: bool = False  # outcome decided (finished, timed out, canceled or abandoned)
    done: defer.Deferred = field(default_factory=defer.Deferred)


class JobHandler(service.Service):
    """One job-handler (in the server process or in ``ridgeline job-handler``).

    ``context``: a ``ServerContext`` whose ``plugins`` is the ActivityTypes
    registry and whose ``queue`` is the :class:`server.queue.publisher.Publisher`
    (``queue.queue`` is consumed unless ``queue`` is given).
    """

    def __init__(self, context, *, name: str | None = None, concurrency: int | None = None, queue=None,
                 renew_interval: float | None = None, sweep_interval: float | None = None,
                 grace: float | None = None, prefetch: int | None = None):
        cfg = context.config
        self.context = context
        self.reactor = context.reactor
        self.db = context.db
        self.types = context.plugins
        self.queue = queue if queue is not None else context.queue.queue
        self.name = name or handler_name()
        self.concurrency = concurrency or cfg.job_concurrency
        self.prefetch = prefetch or max(self.concurrency * 2, 10)
        self.lease_seconds = float(cfg.lease_seconds)
        self.renew_interval = renew_interval or max(self.lease_seconds / 3, 0.05)
        self.sweep_interval = sweep_interval or self.renew_interval
        self.grace = float(cfg.job_grace if grace is None else grace)
        self.time_limits = dict(cfg.job_time_limits)
        self.default_time_limit = float(cfg.job_time_limit)
        self.output_max_size = cfg.job_output_max_size
        self.active_jobs: dict[int, _Run] = {}
        self._free = self.concurrency
        self._slot_waiters: list[defer.Deferred] = []
        self._stopping = False
        self._claims = _Batcher(lambda ids: self.db.run(self._claim_thd, ids, self._now()))
        self._finishes = _Batcher(lambda items: self.db.run(self._finish_thd, items, self._now()))
        self._renew_loop: task.LoopingCall | None = None
        self._sweep_loop: task.LoopingCall | None = None
        self._renewing = False
        #: Counts for logs, tests and benchmarks.
        self.stats = {"claimed": 0, "dropped": 0, "succeeded": 0, "failed": 0, "canceled": 0, "abandoned": 0}

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.reactor.seconds(), tz=dt.timezone.utc)

    # --- service ------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._stopping = False
        self.db.activities.cancel_listeners.append(self._on_cancel)
        self.queue.consume(self.handle_message, prefetch=self.prefetch)
        self._renew_loop = task.LoopingCall(self.renew_leases)
        self._renew_loop.clock = self.reactor
        self._renew_loop.start(self.renew_interval, now=False)
        self._sweep_loop = task.LoopingCall(self._sweep)
        self._sweep_loop.clock = self.reactor
        self._sweep_loop.start(self.sweep_interval, now=True)
        log.info("job-handler {name} started: {n} at once, queue {queue}", name=self.name, n=self.concurrency,
                 queue=self.queue.name)

    def stopService(self):
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        waiters, self._slot_waiters = self._slot_waiters, []
        for w in waiters:
            w.errback(Stopping("the job-handler is stopping"))
        await self.queue.stop_consuming()
        if self._sweep_loop is not None and self._sweep_loop.running:
            self._sweep_loop.stop()
        if self.active_jobs:
            log.info("waiting up to {grace}s for {n} running jobs", grace=self.grace, n=len(self.active_jobs))
            waiter = defer.Deferred()

            def go_on(_=None):
                if not waiter.called:
                    waiter.callback(None)

            defer.DeferredList([r.done for r in self.active_jobs.values()]).addBoth(go_on)
            timeout = self.reactor.callLater(self.grace, go_on)
            await waiter
            if timeout.active():
                timeout.cancel()
        for run in list(self.active_jobs.values()):
            # Left to the lease rule: the activity ends failed/interrupted once the
            # lease we stop renewing expires.
            log.warn("job {id} ({type}) did not finish in time; left to the lease rule", id=run.activity.id,
                     type=run.activity.type)
            self._abandon(run, "the job-handler stopped")
        if self._renew_loop is not None and self._renew_loop.running:
            self._renew_loop.stop()
        if self._on_cancel in self.db.activities.cancel_listeners:
            self.db.activities.cancel_listeners.remove(self._on_cancel)

    # --- slots ------------------------------------------------------------------------------

    def _acquire(self) -> defer.Deferred:
        if self._stopping:
            return defer.fail(Stopping("the job-handler is stopping"))
        if self._free > 0:
            self._free -= 1
            return defer.succeed(None)
        d = defer.Deferred()
        self._slot_waiters.append(d)
        return d

    def _release(self) -> None:
        if self._slot_waiters and not self._stopping:
            self._slot_waiters.pop(0).callback(None)
        else:
            self._free += 1

    # --- messages and claims ---------------------------------------------------------

    def handle_message(self, activity_id: int) -> defer.Deferred:
        """The queue's handler: fires once the claim's outcome is committed."""
        return defer.Deferred.fromCoroutine(self._handle(activity_id))

    async def _handle(self, activity_id: int) -> None:
        await self._acquire()
        try:
            activity = await self._claims.submit(activity_id)
        except BaseException:
            self._release()
            raise
        if activity is None:
            self.stats["dropped"] += 1
            self._release()
            return
        self.stats["claimed"] += 1
        self._start(activity)

    def _claim_thd(self, conn, ids: list[int], now: dt.datetime) -> list:
        """Claim many at once: one compare-and-set for the batch (server
        activities are never group members, so the bulk move applies)."""
        until = now + dt.timedelta(seconds=self.lease_seconds)
        moved = self.db.activities.transition_bulk_thd(
            conn, ids, states.QUEUED, states.IN_PROGRESS, kind=states.SERVER, actor=self.name, now=now,
            reason=f"claimed by job-handler {self.name}",
            values={"claimed_by": self.name, "lease_expires_at": until, "delivered_at": now},
        )
        claimed = {a.id: a for a in moved}
        # Each id once: a duplicate message in the same batch is dropped.
        out = []
        for aid in ids:
            out.append(claimed.pop(aid, None))
        return out

    # --- running ------------------------------------------------------------------------

    def time_limit_of(self, atype) -> float:
        if atype is not None and atype.name in self.time_limits:
            return float(self.time_limits[atype.name])
        if atype is not None and atype.time_limit:
            return float(atype.time_limit)
        return self.default_time_limit

    def _start(self, activity) -> None:
        atype = self.types.get(activity.type) if self.types is not None else None
        ctx = RunningJobContext(activity=activity, server_context=self.context, handler_name=self.name,
                                output_max_size=self.output_max_size)
        run = _Run(activity=activity, ctx=ctx)
        self.active_jobs[activity.id] = run
        if atype is None or atype.kind != states.SERVER:
            self._settle(run, states.FAILED, {"result_code": codes.NO_HANDLER,
                                              "result_text": f"No job plugin for type {activity.type!r} in "
                                                             f"job-handler {self.name}."})
            return
        try:
            result = atype.run(ctx)
            if inspect.isawaitable(result):
                job = defer.ensureDeferred(result)
            else:
                job = defer.succeed(result)
        except Exception:
            job = defer.fail()
        run.job = job
        limit = self.time_limit_of(atype)
        run.timer = self.reactor.callLater(limit, self._time_up, run, limit)
        job.addBoth(self._job_done, run)

    def _job_done(self, result, run: _Run) -> None:
        if run.settled:
            return None  # timed out or abandoned: its outcome no longer counts
        if run.ctx.canceled:
            # The activity was canceled (or ended) meanwhile; the job stopped in time.
            self._settle(run, None, {})
            return None
        if isinstance(result, Failure):
            e = result.value
            text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.info("job {id} ({type}) failed: {text}", id=run.activity.id, type=run.activity.type, text=text)
            self._settle(run, states.FAILED, {"result_text": text[:MAX_RESULT_TEXT], "result_code": None})
            return None
        to, values = outcome_of(result)
        self._settle(run, to, values)
        return None

    def _time_up(self, run: _Run, limit: float) -> None:
        run.timer = None
        if run.settled:
            return
        log.warn("job {id} ({type}) exceeded its time limit of {limit}s", id=run.activity.id,
                 type=run.activity.type, limit=limit)
        self._settle(run, states.FAILED, {"result_code": codes.TIME_LIMIT,
                                          "result_text": f"Time limit of {limit:g}s exceeded; the job was stopped."})
        run.ctx.abandoned = True
        if run.job is not None:
            run.job.cancel()

    def _settle(self, run: _Run, to: str | None, values: dict) -> None:
        """Decide the outcome once; write it (unless there is nothing to write) and
        free the slot."""
        if run.settled:
            return
        run.settled = True
        for attr in ("timer", "grace_timer"):
            t = getattr(run, attr)
            if t is not None and t.active():
                t.cancel()
            setattr(run, attr, None)
        if to is None:
            self.stats["canceled"] += 1
            self._finished(run)
            return
        values = {**values, "progress": 100} if to == states.SUCCEEDED else values
        self._write_outcome(run, to, values, attempt=0)

    def _write_outcome(self, run: _Run, to: str, values: dict, attempt: int) -> None:
        d = self._finishes.submit((run.activity.id, to, values))

        def written(ok):
            if ok:
                self.stats["succeeded" if to == states.SUCCEEDED else "failed"] += 1
            self._finished(run)

        def failed(f):
            # Keep the run (its lease is still renewed) and try again.
            log.warn("recording the outcome of activity {id} failed ({error}); retrying", id=run.activity.id,
                     error=f.getErrorMessage())
            delay = min(30.0, 0.5 * 2 ** attempt)
            self.reactor.callLater(delay, self._write_outcome, run, to, values, attempt + 1)

        d.addCallbacks(written, failed)

    def _finish_thd(self, conn, items: list[tuple[int, str, dict]], now: dt.datetime) -> list[bool]:
        """Record outcomes; those with the same state and values (no-op jobs, the
        same text) share one compare-and-set. One that lost (canceled or swept
        meanwhile) keeps its state."""
        groups: dict[tuple, list[int]] = {}
        for aid, to, values in items:
            key = (to, tuple(sorted(values.items())))
            groups.setdefault(key, []).append(aid)
        done: set[int] = set()
        for (to, values), ids in groups.items():
            reason = {states.SUCCEEDED: "the job succeeded", states.FAILED: "the job failed"}[to]
            moved = self.db.activities.transition_bulk_thd(
                conn, ids, states.IN_PROGRESS, to, kind=states.SERVER, actor=self.name, reason=reason, now=now,
                values=dict(values))
            done.update(a.id for a in moved)
        return [aid in done for aid, _, _ in items]

    def _finished(self, run: _Run) -> None:
        if self.active_jobs.get(run.activity.id) is run:
            del self.active_jobs[run.activity.id]
            self._release()
            if not run.done.called:
                run.done.callback(None)

    # --- cancel, leases -------------------------------------------------------------------

    def _cancel_noticed(self, run: _Run, why: str) -> None:
        if run.settled or run.ctx.canceled:
            return
        log.info("job {id} ({type}): {why}; telling the job", id=run.activity.id, type=run.activity.type, why=why)
        run.ctx.signal_canceled()
        run.grace_timer = self.reactor.callLater(self.grace, self._abandon, run, f"{why}, and it did not stop")

    def _abandon(self, run: _Run, why: str) -> None:
        run.grace_timer = None
        if run.settled:
            return
        log.warn("abandoning job {id} ({type}): {why}", id=run.activity.id, type=run.activity.type, why=why)
        run.settled = True
        self.stats["abandoned"] += 1
        if run.timer is not None and run.timer.active():
            run.timer.cancel()
        run.ctx.abandoned = True
        if run.job is not None and not run.job.called:
            run.job.cancel()
        self._finished(run)

    def _on_cancel(self, conn, activity, now) -> None:
        """Cancel listener (inside the cancel transaction): check this activity's
        state once the transaction has committed."""
        if activity.id not in self.active_jobs:
            return
        aid = activity.id

        def committed(*_):
            call = getattr(self.reactor, "callFromThread", None)
            if call is not None:
                call(self._check_soon, aid)
            else:
                self.reactor.callLater(0, self._check_soon, aid)

        sa.event.listen(conn, "commit", committed, once=True)

    def _check_soon(self, activity_id: int) -> None:
        run = self.active_jobs.get(activity_id)
        if run is None or run.settled:
            return
        d = self.db.run(lambda conn: conn.execute(
            sa.select(activities.c.state).where(activities.c.id == activity_id)).scalar())
        d.addCallback(lambda state: state != states.IN_PROGRESS and self._cancel_noticed(run, f"the activity is {state}"))
        d.addErrback(lambda f: log.warn("checking activity {id} failed: {e}", id=activity_id, e=f.getErrorMessage()))

    def renew_leases(self) -> defer.Deferred | None:
        """Extend the lease of every running job; tell jobs whose activity is no
        longer ours."""
        if self._renewing or not self.active_jobs:
            return None
        self._renewing = True
        ids = sorted(self.active_jobs)
        now = self._now()
        d = self.db.run(self._renew_thd, ids, now, now + dt.timedelta(seconds=self.lease_seconds))

        def renewed(lost: dict[int, str | None]):
            for aid, state in lost.items():
                run = self.active_jobs.get(aid)
                if run is not None:
                    self._cancel_noticed(run, f"the activity is {state or 'gone'}")

        def done(r):
            self._renewing = False
            return r

        d.addCallbacks(renewed, lambda f: log.warn("renewing job leases failed: {error}", error=f.getErrorMessage()))
        d.addBoth(done)
        return d

    def _renew_thd(self, conn, ids: list[int], now, until) -> dict[int, str | None]:
        renewed = set(conn.execute(
            activities.update()
            .where(activities.c.id.in_(ids), activities.c.state == states.IN_PROGRESS,
                   activities.c.claimed_by == self.name)
            .values(lease_expires_at=until)
            .returning(activities.c.id)
        ).scalars().all())
        lost = [i for i in ids if i not in renewed]
        if not lost:
            return {}
        found = dict(conn.execute(sa.select(activities.c.id, activities.c.state).where(activities.c.id.in_(lost))).all())
        return {i: found.get(i) for i in lost}

    def _sweep(self):
        sweep = getattr(self.context.queue, "sweep_expired_leases", None)
        if sweep is None:
            return None
        d = sweep(self._now())
        d.addErrback(lambda f: log.warn("the lease sweep failed: {error}", error=f.getErrorMessage()))
        return None
