"""Shared set-up of the queue and job-handler tests: a real database, a Clock, the
``db`` queue, the publisher, a job-handler, and a test job plugin whose jobs the
test drives (each job's behaviour is chosen by its parameters)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from server.config import ServerConfig
from server.context import ServerContext
from server.db import attach_components
from server.db.activities import NewActivity
from server.hookspecs import ActivityType, JobResult, hookimpl
from server.jobhandler.runner import JobHandler
from server.plugins import ActivityTypes
from server.queue.dbqueue import DbQueue
from server.queue.publisher import Publisher

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class TestJobs:
    """A job plugin: ``test-job`` does what its parameters say.

    ``{"do": "ok", "text": ...}`` succeed; ``"fail"`` raise ValueError(text);
    ``"result-failed"`` return a failed JobResult; ``"wait"`` wait for
    ``release(activity_id)``; ``"wait-cancel"`` wait for the cancel signal;
    ``"stubborn"`` ignore the cancel (and the coroutine's cancellation);
    ``"progress"`` report 40 then wait; ``"output"`` store an output of ``size``
    bytes. ``retry-job`` is the same, declared retry-safe.
    """

    __test__ = False

    def __init__(self):
        self.started: list[int] = []
        self.finished: list[int] = []
        self.gates: dict[int, defer.Deferred] = {}
        self.contexts: dict[int, Any] = {}
        self.errors: dict[int, BaseException] = {}

    def release(self, activity_id: int, value: Any = None) -> None:
        self.gates.pop(activity_id).callback(value)

    async def run(self, job):
        aid = job.activity.id
        self.started.append(aid)
        self.contexts[aid] = job
        p = job.activity.parameters
        do = p.get("do", "ok")
        try:
            if do == "ok":
                return p.get("text", f"done {aid}")
            if do == "fail":
                raise ValueError(p.get("text", "bad input"))
            if do == "result-failed":
                return JobResult("it did not work", code=7, failed=True)
            if do == "wait":
                self.gates[aid] = defer.Deferred()
                return await self.gates[aid]
            if do == "wait-cancel":
                await job.wait_canceled()
                return "stopped"
            if do == "stubborn":
                while True:
                    try:
                        self.gates[aid] = defer.Deferred()
                        await self.gates[aid]
                    except defer.CancelledError:
                        continue
            if do == "progress":
                await job.report_progress(40)
                self.gates[aid] = defer.Deferred()
                return await self.gates[aid]
            if do == "output":
                await job.store_output(p.get("name", "out.txt"), b"x" * p.get("size", 10), "text/plain")
                return "stored"
            raise AssertionError(do)
        except BaseException as e:
            self.errors[aid] = e
            raise
        finally:
            self.finished.append(aid)

    @hookimpl
    def ridgeline_activity_types(self):
        schema = {"type": "object"}
        return [
            ActivityType(name="test-job", kind="server", parameters_schema=schema, run=self.run),
            ActivityType(name="retry-job", kind="server", parameters_schema=schema, run=self.run, retry_safe=True),
            ActivityType(name="quick-limit", kind="server", parameters_schema=schema, run=self.run, time_limit=5),
        ]


@dataclasses.dataclass
class World:
    clock: Clock
    db: Any
    context: ServerContext
    jobs: TestJobs
    handler: JobHandler | None = None

    @property
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), tz=UTC)

    def pump(self, seconds: float = 0.0, steps: int = 5) -> None:
        """Advance the clock and run what became due (a few rounds of zero delays)."""
        self.clock.advance(seconds)
        for _ in range(steps):
            self.clock.advance(0)

    def create(self, type_: str = "test-job", parameters: dict | None = None, **kw):
        new = NewActivity(kind="server", type=type_, parameters=parameters or {}, creator="admin", **kw)
        return self.db.run_sync(self.db.activities.create_thd, new, self.now)

    def get(self, activity_id: int):
        return self.db.run_sync(self.db.activities.get_thd, activity_id)

    def publish(self):
        box = []
        self.context.queue.publish_pending().addBoth(box.append)
        self.pump()
        return box[0] if box else None

    def start_handler(self, **kw) -> JobHandler:
        self.handler = JobHandler(self.context, name=kw.pop("name", "handler-1"), **kw)
        self.handler.startService()
        self.pump()
        return self.handler

    def stop_handler(self):
        box = []
        self.handler.stopService().addBoth(box.append)
        return box


def make_world(db, *, config: ServerConfig | None = None, clock: Clock | None = None, jobs: TestJobs | None = None,
               extra_plugins: tuple = (), load_entry_points: bool = False) -> World:
    attach_components(db)
    clock = clock or Clock()
    if clock.seconds() < NOW.timestamp():
        clock.advance(NOW.timestamp() - clock.seconds())
    jobs = jobs or TestJobs()
    from plugins.jobs import builtin_job_plugins

    types = ActivityTypes.from_plugins([jobs, *builtin_job_plugins(), *extra_plugins],
                                       load_entry_points=load_entry_points)
    cfg = config or ServerConfig()
    backend = DbQueue(reactor=clock, db=db, consumer_name="queue-1")
    publisher = Publisher(reactor=clock, db=db, queue=backend, types=types, retry_limit=cfg.retry_count)
    context = ServerContext(reactor=clock, db=db, config=cfg, plugins=types, queue=publisher)
    return World(clock=clock, db=db, context=context, jobs=jobs)


# --- real-reactor helpers (queue contract, RabbitMQ) -------------------------------------


async def until(predicate, timeout: float = 15.0, interval: float = 0.02, what: str = "the condition"):
    """Wait on the real reactor until ``predicate()`` is true."""
    from twisted.internet import reactor, task

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, interval, lambda: None)


async def sleep(seconds: float):
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)


def rabbitmq_connection_pids(connection_name: str) -> list[str]:
    """Pids of the broker connections whose client property ``connection_name`` is given."""
    import shutil
    import subprocess

    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is needed to close a connection")
    out = subprocess.run([ctl, "-q", "list_connections", "pid", "client_properties", "--no-table-headers"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t", 1)[0] for line in out.splitlines() if f'{{"connection_name","{connection_name}"}}' in line]


def close_rabbitmq_connection(connection_name: str) -> int:
    """Close (broker side) every connection named ``connection_name``; how many."""
    import shutil
    import subprocess

    pids = rabbitmq_connection_pids(connection_name)
    for pid in pids:
        subprocess.run([shutil.which("rabbitmqctl"), "-q", "close_connection", pid, "test: simulated broker trouble"],
                       capture_output=True, timeout=60, check=True)
    return len(pids)
