"""The queue contract, run against every implementation: the ``db`` queue on
SQLite and on PostgreSQL, and RabbitMQ (real broker, a vhost and queue name of
this test's own)."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from twisted.internet import defer

from server.db.base import Database, create_engine, inline_runner
from server.db.tables import metadata

from jobs_support import sleep, until


@pytest.fixture(params=["db-sqlite", pytest.param("db-postgresql", marks=pytest.mark.postgres), "amqp"])
def make_queue(request):
    """``make_queue()``: a started queue of the kind under test (several share one
    queue: the same database, or the same broker queue)."""
    from twisted.internet import reactor

    made = []
    if request.param == "amqp":
        from server.queue.amqp import AmqpQueue

        url = request.getfixturevalue("amqp_url")
        name = request.getfixturevalue("amqp_queue_name")

        def make():
            q = AmqpQueue(reactor=reactor, url=url, queue_name=name, retry_delay=0.1,
                          connection_name=f"ridgeline-test-{uuid.uuid4().hex[:8]}")
            q.start()
            made.append(q)
            return q
    else:
        from server.queue.dbqueue import DbQueue

        url = request.getfixturevalue("sqlite_url" if request.param == "db-sqlite" else "postgres_url")
        engine = create_engine(url)
        metadata.create_all(engine)
        db = Database(engine, inline_runner)
        # job_queue rows refer to activities: make a few.
        from server.db import attach_components
        from server.db.activities import NewActivity
        import datetime as dt

        attach_components(db)
        now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
        for _ in range(30):
            db.run_sync(db.activities.create_thd, NewActivity(kind="server", type="t", parameters={}, creator="x"), now)

        def make():
            q = DbQueue(reactor=reactor, db=db, consumer_name=f"c-{len(made)}", retry_delay=0.1,
                        visibility_timeout=60)
            q.start()
            made.append(q)
            return q
    yield make
    for q in made:
        # A test that failed half-way may leave a delivery unsettled: do not hang.
        pytest_twisted.blockon(q.close().addTimeout(10, reactor).addErrback(lambda _: None))


@pytest_twisted.ensureDeferred
async def test_publish_consume_ack(make_queue):
    q = make_queue()
    await q.publish([1, 2, 3])
    got = []
    q.consume(lambda aid: got.append(aid), prefetch=10)
    await until(lambda: sorted(got) == [1, 2, 3], what="three deliveries")
    await q.publish([4])
    await until(lambda: sorted(got) == [1, 2, 3, 4], what="a fourth delivery")
    await q.stop_consuming()
    # Acknowledged: a new consumer gets nothing again.
    again = []
    q2 = make_queue()
    q2.consume(lambda aid: again.append(aid), prefetch=10)
    await sleep(1.0)
    assert again == []


@pytest_twisted.ensureDeferred
async def test_failed_handler_returns_the_message(make_queue):
    q = make_queue()
    await q.publish([5])
    calls = []

    def handler(aid):
        calls.append(aid)
        if len(calls) == 1:
            raise RuntimeError("database down")

    q.consume(handler, prefetch=5)
    await until(lambda: calls == [5, 5], what="the redelivery")
    await sleep(0.5)
    assert calls == [5, 5]  # acknowledged the second time


@pytest_twisted.ensureDeferred
async def test_prefetch_bounds_unacknowledged_messages(make_queue):
    q = make_queue()
    await q.publish(list(range(1, 11)))
    held: list[tuple[int, defer.Deferred]] = []
    auto = []

    def handler(aid):
        d = defer.Deferred()
        held.append((aid, d))
        if auto:
            d.callback(None)
        return d

    q.consume(handler, prefetch=3)
    await until(lambda: len(held) == 3, what="three deliveries")
    await sleep(0.5)
    assert len(held) == 3
    held[0][1].callback(None)
    await until(lambda: len(held) == 4, what="one more after an ack")
    await sleep(0.3)
    assert len(held) == 4
    auto.append(True)
    for _, d in held[1:]:
        d.callback(None)
    await until(lambda: len(held) == 10, what="all ten")
    assert sorted(a for a, _ in held) == list(range(1, 11))


@pytest_twisted.ensureDeferred
async def test_two_consumers_share_the_messages_without_duplicates(make_queue):
    a, b = make_queue(), make_queue()
    got_a, got_b = [], []
    a.consume(lambda aid: got_a.append(aid), prefetch=2)
    b.consume(lambda aid: got_b.append(aid), prefetch=2)
    await a.publish(list(range(1, 21)))
    await until(lambda: len(got_a) + len(got_b) == 20, what="twenty deliveries")
    await sleep(0.5)
    assert sorted(got_a + got_b) == list(range(1, 21))


@pytest_twisted.ensureDeferred
async def test_stop_consuming_settles_deliveries_under_way(make_queue):
    q = make_queue()
    await q.publish([7])
    gate = defer.Deferred()
    seen = []

    def handler(aid):
        seen.append(aid)
        return gate

    q.consume(handler, prefetch=1)
    await until(lambda: seen == [7], what="the delivery")
    stopped = q.stop_consuming()
    await sleep(0.2)
    assert not stopped.called
    gate.callback(None)
    await stopped
    await q.publish([8])
    await sleep(0.8)
    assert seen == [7]
