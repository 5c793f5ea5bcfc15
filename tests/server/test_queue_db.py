"""The ``db`` queue and the publisher on SQLite and PostgreSQL with a Clock:
claims, visibility deadline, prompt wake-up, publish/mark, the unpublished sweep,
the expired-lease sweep and its retries."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from twisted.internet import defer
from twisted.internet.task import Clock

from protocol import codes
from server.config import ServerConfig
from server.db.tables import activities, job_queue
from server.queue.dbqueue import DbQueue
from server.queue.leases import sweep_expired_leases_thd
from server.queue.publisher import QueueService, mark_published_thd, unpublished_thd

from jobs_support import make_world


@pytest.fixture
def world(server_db):
    return make_world(server_db)


def rows(w):
    return w.db.run_sync(lambda c: [tuple(r) for r in c.execute(
        sa.select(job_queue.c.activity_id, job_queue.c.claimed_by).order_by(job_queue.c.id))])


def test_claims_are_exclusive_and_acks_delete(world):
    ids = [world.create().id for _ in range(6)]
    a = DbQueue(reactor=world.clock, db=world.db, consumer_name="a")
    b = DbQueue(reactor=world.clock, db=world.db, consumer_name="b")
    world.db.run_sync(DbQueue._insert_thd, ids, world.now)
    got_a, got_b = [], []
    held = defer.Deferred()
    a.consume(lambda i: (got_a.append(i), held)[1], prefetch=4)
    b.consume(lambda i: (got_b.append(i), held)[1], prefetch=4)
    world.pump()
    assert sorted(got_a + got_b) == ids and len(got_a) == 4 and len(got_b) == 2
    assert {c for _, c in rows(world)} == {"a", "b"}
    held.callback(None)
    world.pump()
    assert rows(world) == []


def test_claim_statement_is_a_compare_and_set(world):
    ids = [world.create().id for _ in range(3)]
    world.db.run_sync(DbQueue._insert_thd, ids, world.now)
    later = world.now + dt.timedelta(seconds=60)
    first = world.db.run_sync(DbQueue._claim_thd, "a", 2, world.now, later)
    second = world.db.run_sync(DbQueue._claim_thd, "b", 5, world.now, later)
    assert [aid for _, aid in first] == ids[:2] and [aid for _, aid in second] == ids[2:]
    assert world.db.run_sync(DbQueue._claim_thd, "c", 5, world.now, later) == []
    # Past the visibility deadline, a message is free again.
    again = world.db.run_sync(DbQueue._claim_thd, "c", 5, later + dt.timedelta(seconds=1), later)
    assert sorted(aid for _, aid in again) == ids


def test_unacknowledged_messages_come_back_after_the_visibility_deadline(world):
    aid = world.create().id
    dead = DbQueue(reactor=world.clock, db=world.db, consumer_name="dead", visibility_timeout=60)
    dead.consume(lambda i: defer.Deferred(), prefetch=1)  # never acks: a consumer that died
    world.db.run_sync(DbQueue._insert_thd, [aid], world.now)
    world.pump(0.3)
    alive = DbQueue(reactor=world.clock, db=world.db, consumer_name="alive")
    got = []
    alive.consume(got.append, prefetch=1)
    world.pump(59)
    assert got == []
    world.pump(1.5)
    assert got == [aid]


def test_a_publish_in_this_process_wakes_the_consumer_at_once(world):
    q = world.context.queue.queue
    got = []
    q.consume(got.append, prefetch=5)
    world.pump(10)  # idle polls find nothing
    aid = world.create().id
    world.context.queue.publish_pending()
    world.pump(0)  # no time passes
    assert got == [aid]


def test_another_process_is_noticed_within_the_poll_interval(world):
    q = world.context.queue.queue
    got = []
    q.consume(got.append, prefetch=5)
    world.pump(1)
    aid = world.create().id
    world.db.run_sync(DbQueue._insert_thd, [aid], world.now)  # as another process would
    world.pump(0.1)
    assert got == []
    world.pump(0.15)
    assert got == [aid]
    assert q.poll_interval < 1


def test_publish_pending_publishes_queued_server_activities_once(world):
    queued = world.create().id
    blocked = world.create(requires_approval=True).id
    assert world.publish() == 1
    assert [aid for aid, _ in rows(world)] == [queued]
    assert world.get(queued).published_at == world.now and world.get(blocked).published_at is None
    assert world.publish() == 0
    assert len(rows(world)) == 1


def test_crash_between_commit_and_publish_is_repaired_by_the_sweep(world):
    aid = world.create().id  # committed queued; "the process died" before publishing
    svc = QueueService(world.context.queue, sweep_interval=5)
    svc.startService()
    world.pump()
    assert [a for a, _ in rows(world)] == [aid]
    later = world.create().id  # nobody calls publish_pending
    world.pump(5)
    assert [a for a, _ in rows(world)] == [aid, later]
    svc.stopService()


def test_publish_failure_leaves_activities_unpublished(world):
    class Refusing:
        def publish(self, ids):
            return defer.fail(RuntimeError("broker down"))

    world.context.queue.queue = Refusing()
    aid = world.create().id
    assert world.publish() is None
    assert world.db.run_sync(unpublished_thd, 10) == [aid]


def test_an_activity_back_in_queued_is_published_again(world):
    aid = world.create().id
    world.publish()
    world.db.run_sync(world.db.activities.apply_verb_thd, aid, "pause", actor="admin", now=world.now)
    world.start_handler()
    world.pump(1)  # the message arrives while paused: dropped
    assert world.handler.stats["dropped"] == 1 and world.jobs.started == []
    world.db.run_sync(world.db.activities.apply_verb_thd, aid, "resume", actor="admin", now=world.now)
    assert world.get(aid).published_at is None
    world.publish()
    world.pump()
    assert world.jobs.started == [aid] and world.get(aid).state == "succeeded"


def test_mark_published_only_marks_unmarked(world):
    aid = world.create().id
    first = world.now
    assert world.db.run_sync(mark_published_thd, [aid], first) == 1
    world.pump(5)
    assert world.db.run_sync(mark_published_thd, [aid], world.now) == 0
    assert world.get(aid).published_at == first


# --- the expired-lease sweep ---------------------------------------------------------------


def claim(w, aid, holder="dead-handler", lease=30):
    w.db.run_sync(w.db.activities.transition_thd, aid, "queued", "in-progress", actor=holder, reason="claimed",
                  now=w.now, values={"claimed_by": holder, "lease_expires_at": w.now + dt.timedelta(seconds=lease)})


def test_expired_lease_fails_interrupted(world):
    aid = world.create().id
    other = world.create().id
    claim(world, aid)
    claim(world, other, lease=60)
    world.pump(30)
    assert world.context.queue.sweep_expired_leases(world.now).result == 0  # not before it expires
    world.pump(1)
    assert world.context.queue.sweep_expired_leases(world.now).result == 1
    a = world.get(aid)
    assert (a.state, a.result_code, a.result_name) == ("failed", codes.INTERRUPTED, "interrupted")
    assert "dead-handler" in a.result_text and a.lease_expires_at is None
    assert world.get(other).state == "in-progress"
    # Not retry-safe: no new activity.
    assert world.db.run_sync(lambda c: c.execute(sa.select(sa.func.count()).select_from(activities)).scalar()) == 2


def test_retry_safe_types_are_retried_up_to_the_configured_count(server_db):
    w = make_world(server_db, config=ServerConfig(retry_count=2))
    aid = w.create("retry-job", {"do": "wait"}).id
    chain = [aid]
    for expected_retry in (1, 2):
        claim(w, chain[-1])
        w.pump(31)
        assert w.context.queue.sweep_expired_leases(w.now).result == 1
        retry = w.db.run_sync(lambda c: c.execute(
            sa.select(activities.c.id).where(activities.c.origin_id == chain[-1])).scalar())
        r = w.get(retry)
        assert (r.state, r.type, r.parameters, r.retry_count, r.origin_id) == (
            "queued", "retry-job", {"do": "wait"}, expected_retry, chain[-1])
        assert [a for a, _ in rows(w)][-1] == retry  # published
        chain.append(retry)
    claim(w, chain[-1])
    w.pump(31)
    assert w.context.queue.sweep_expired_leases(w.now).result == 1
    assert w.db.run_sync(lambda c: c.execute(
        sa.select(sa.func.count()).where(activities.c.origin_id == chain[-1])).scalar()) == 0


def test_two_sweeps_end_a_lease_once_and_retry_once(server_db):
    w = make_world(server_db, config=ServerConfig(retry_count=1))
    aid = w.create("retry-job").id
    claim(w, aid)
    w.pump(31)
    types = w.context.plugins

    def both(conn):
        first = sweep_expired_leases_thd(conn, w.db.activities, types=types, retry_limit=1, now=w.now)
        second = sweep_expired_leases_thd(conn, w.db.activities, types=types, retry_limit=1, now=w.now)
        return first, second

    first, second = w.db.run_sync(both)
    assert first.ended == [aid] and len(first.retries) == 1 and second.ended == [] and second.retries == []
