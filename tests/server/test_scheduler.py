"""The scheduler service: its loop on an injected Clock, batches, the lease sweep,
error isolation, and the plans of its due-time queries (indexed, never a scan of
all activities) on SQLite and PostgreSQL."""

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa
from twisted.internet import defer

from server import scheduler as scheduler_module
from server.config import ServerConfig
from server.db import activities as activities_module
from server.scheduler import Scheduler, SchedulerService, find_lease_sweep, make_service

from server.context import ServerContext

from lifecycle_helpers import HOUR, NOW, World, fired


@pytest.fixture
def world(sqlite_server_db):
    return World(sqlite_server_db)


def due_jobs(world, n, at=HOUR):
    return [world.server(deliver_after=world.now() + at) for _ in range(n)]


# --- the service loop ---------------------------------------------------------------


def test_service_ticks_at_start_and_every_interval_until_stopped(world):
    svc = SchedulerService(world.scheduler, interval=1.0)
    first = world.server(deliver_after=world.now() + dt.timedelta(seconds=1))
    world.clock.advance(1)  # due: moved at start
    svc.startService()
    assert world.get(first.id).state == "queued"

    second = world.server(deliver_after=world.now() + dt.timedelta(seconds=1))
    world.clock.advance(0.5)
    assert world.get(second.id).state == "scheduled"
    world.clock.advance(0.5)
    assert world.get(second.id).state == "queued"
    assert svc.last_report is not None and svc.last_report.scheduled_queued == 1

    fired(defer.maybeDeferred(svc.stopService))
    third = world.server(deliver_after=world.now() + dt.timedelta(seconds=1))
    world.clock.advance(5)
    assert world.get(third.id).state == "scheduled"
    assert world.clock.getDelayedCalls() == []


def test_make_service_reads_the_interval_from_the_configuration(sqlite_server_db):
    @dataclasses.dataclass(frozen=True)
    class Config(ServerConfig):
        scheduler_interval: float = 5.0

    world = World(sqlite_server_db)
    default = make_service(world.context)
    assert isinstance(default, SchedulerService) and default.interval == 1.0
    ctx = dataclasses.replace(world.context, config=Config())
    assert make_service(ctx).interval == 5.0
    with pytest.raises(ValueError):
        SchedulerService(world.scheduler, interval=0)


def test_a_failing_sweep_is_reported_and_the_loop_goes_on(sqlite_server_db):
    calls = []

    def sweep(context, now):
        calls.append(now)
        raise RuntimeError("queue is down")

    world = World(sqlite_server_db, lease_sweep=sweep)
    svc = SchedulerService(world.scheduler, interval=1.0)
    job = world.server(deliver_after=world.now() + dt.timedelta(seconds=2))
    svc.startService()
    assert svc.last_report.errors == ["leases: queue is down"]
    world.clock.advance(1)
    world.clock.advance(1)
    assert world.get(job.id).state == "queued"  # the other rules ran
    assert len(calls) == 3 and calls[-1] == NOW + dt.timedelta(seconds=2)
    svc.stopService()


def test_stopping_waits_for_the_tick_under_way(sqlite_server_db):
    pending = defer.Deferred()
    world = World(sqlite_server_db, lease_sweep=lambda context, now: pending)
    svc = SchedulerService(world.scheduler, interval=1.0)
    svc.startService()
    stopped = defer.maybeDeferred(svc.stopService)
    assert not stopped.called
    pending.callback(3)
    assert stopped.called and svc.last_report.leases_swept == 3


def test_a_failing_rule_does_not_stop_the_others(sqlite_server_db):
    class Broken(Scheduler):
        def select_expired_thd(self, conn, now, limit):
            raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    world = World(sqlite_server_db)
    world.scheduler = Broken(world.context, lease_sweep=lambda c, n: 0)
    job = world.server(deliver_after=world.now() + HOUR)
    world.advance(HOUR)
    report = world.tick()
    assert report.errors and report.errors[0].startswith("expiry:")
    assert world.get(job.id).state == "queued" and report.scheduled_queued == 1


# --- batches ------------------------------------------------------------------------------


def test_work_is_done_in_bounded_batches_and_the_rest_next_tick(sqlite_server_db):
    world = World(sqlite_server_db, batch_size=2, max_batches=2)
    jobs = due_jobs(world, 5)
    world.advance(HOUR)
    first = world.tick()
    assert first.scheduled_queued == 4
    assert len(world.queue.published) == 1 and len(world.queue.published[0]) == 4
    second = world.tick()
    assert second.scheduled_queued == 1
    assert sorted(i for batch in world.queue.published for i in batch) == sorted(j.id for j in jobs)
    assert world.tick().moved == 0


def test_each_move_is_its_own_transaction(sqlite_server_db):
    """A change that fails (here: refused by the state machine because the row
    changed meanwhile) is skipped; the others of the batch are applied."""
    world = World(sqlite_server_db)
    a, b = due_jobs(world, 2)
    world.advance(HOUR)
    _, moves = world.db.run_sync(world.scheduler.select_scheduled_server_thd, world.now(), 10)
    world.verb(a.id, "cancel")  # an administrator, between the read and the change
    results = [world.db.run_sync(world.scheduler.apply_thd, m, world.now()) for m in moves]
    assert results == [False, True]
    assert (world.get(a.id).state, world.get(b.id).state) == ("canceled", "queued")


# --- the lease sweep ------------------------------------------------------------------------


def test_lease_sweep_is_called_each_tick_with_the_time(sqlite_server_db):
    seen = []
    world = World(sqlite_server_db, lease_sweep=lambda context, now: seen.append((context, now)) or 2)
    assert world.tick().leases_swept == 2
    world.advance(HOUR)
    world.tick()
    assert seen == [(world.context, NOW), (world.context, NOW + HOUR)]


def test_find_lease_sweep_prefers_the_queue_method(sqlite_server_db):
    class Queue:
        def __init__(self):
            self.calls = []

        def sweep_expired_leases(self, now):
            self.calls.append(now)
            return 1

    q = Queue()
    ctx = ServerContext(reactor=None, db=sqlite_server_db, config=ServerConfig(), queue=q)
    sweep = find_lease_sweep(ctx)
    assert sweep(ctx, NOW) == 1 and q.calls == [NOW]


def test_find_lease_sweep_finds_a_module_function_or_none(sqlite_server_db, monkeypatch):
    ctx = ServerContext(reactor=None, db=sqlite_server_db, config=ServerConfig())
    monkeypatch.setattr(scheduler_module, "LEASE_SWEEP_LOCATIONS", (("no_such_module_xyz", "sweep"),))
    assert find_lease_sweep(ctx) is None
    monkeypatch.setattr(scheduler_module, "LEASE_SWEEP_LOCATIONS",
                        (("no_such_module_xyz", "sweep"), ("server.db.activities", "decide_waiting")))
    assert find_lease_sweep(ctx) is activities_module.decide_waiting


# --- query plans: indexed ranges, never a scan of every activity -------------------------


def _queries(now):
    q = activities_module
    return {
        "scheduled-server": q.due_scheduled_server_query(now, 500),
        "held": q.due_held_query(now, 500),
        **{f"expired-{s}": q.expired_query(s, now, 500) for s in q.EXPIRING_STATES},
        "no-answer": q.no_answer_due_query(now, 500),
        "provisional-cancels": q.provisional_cancels_due_query(now, 500),
        "waiting": q.waiting_decided_query(now, 500),
    }


def _plan(db, query) -> list[str]:
    """The database's plan of ``query`` with its real parameters."""
    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters))

    with db.engine.begin() as conn:
        sa.event.listen(conn, "before_cursor_execute", capture)
        conn.execute(query).all()
        sa.event.remove(conn, "before_cursor_execute", capture)
        statement, parameters = captured[-1]
        if db.engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return [r[-1] for r in rows]
        # Without rows the planner prefers a sequential scan whatever the indexes;
        # forbidding it shows whether an index can serve the query at all.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return [r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()]


@pytest.mark.parametrize("name", sorted(_queries(NOW)))
def test_due_time_queries_read_an_index_range(server_db, name):
    world = World(server_db)
    due_jobs(world, 3)  # a few rows so the tables are not empty
    world.client()
    plan = _plan(world.db, _queries(NOW)[name])
    text = "\n".join(plan)
    if world.db.engine.dialect.name == "sqlite":
        main = [line for line in plan if " activities " in f" {line} " and "prerequisite" not in line]
        assert main and all(line.startswith("SEARCH activities USING INDEX ix_activities_state_") for line in main), text
        assert "SCAN activities" not in text and "SCAN prerequisite" not in text, text
    else:
        assert "Seq Scan" not in text, text
        assert "ix_activities_state_" in text, text


# --- with the queue engineer's real publisher and database queue --------------------------


def _real_publisher(world):
    from server.queue import make_publisher

    return make_publisher(ServerConfig(), reactor=world.clock, db=world.db, types=None, consumer_name="test")


def test_with_the_real_publisher_due_jobs_reach_the_database_queue(server_db):
    from server.db.tables import job_queue

    world = World(server_db, queue=_real_publisher)
    job = world.server(deliver_after=world.now() + HOUR)
    world.advance(HOUR)
    report = world.tick()
    assert report.scheduled_queued == 1 and report.published and report.errors == []
    rows = world.db.run_sync(lambda conn: conn.execute(sa.select(job_queue.c.activity_id)).scalars().all())
    assert rows == [job.id]
    assert world.get(job.id).published_at == world.now()


def test_with_the_real_publisher_expired_leases_end_interrupted(server_db):
    from protocol import codes

    world = World(server_db, queue=_real_publisher)
    world.scheduler = Scheduler(world.context)  # finds the publisher's sweep by itself
    job = world.server()
    world.move(job.id, "queued", "in-progress", actor="job-handler",
               values={"claimed_by": "h1", "lease_expires_at": world.now() + dt.timedelta(seconds=30)})
    assert world.tick().leases_swept == 0
    world.advance(dt.timedelta(seconds=31))
    report = world.tick()
    after = world.get(job.id)
    assert report.leases_swept == 1
    assert (after.state, after.result_code) == ("failed", codes.INTERRUPTED)
