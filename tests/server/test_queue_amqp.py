"""RabbitMQ under trouble, with real job-handlers on a real database: the
connection closed by the broker mid-stream, a consumer that dies before its ack,
two handlers racing for the same activities, a broker that is not there."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

from server.config import ServerConfig
from server.context import ServerContext
from server.db import attach_components
from server.db.base import Database, ThreadPoolRunner, create_engine
from server.db.tables import metadata
from server.jobhandler.runner import JobHandler
from server.plugins import ActivityTypes
from server.queue import QueueUnavailable
from server.queue.amqp import AmqpQueue
from server.queue.publisher import Publisher

from jobs_support import NOW, TestJobs, close_rabbitmq_connection, sleep, until


@pytest.fixture
def env(request, amqp_url, amqp_queue_name, postgres_url):
    """A PostgreSQL database used through a real thread pool, and a factory of
    job-handlers, each with its own RabbitMQ connection."""
    from twisted.internet import reactor

    engine = create_engine(postgres_url)
    metadata.create_all(engine)
    pool = ThreadPool(minthreads=1, maxthreads=8, name="test-db")
    pool.start()
    db = attach_components(Database(engine, ThreadPoolRunner(reactor, pool)))
    jobs = TestJobs()
    types = ActivityTypes.from_plugins([jobs], load_entry_points=False)
    made = []

    class Env:
        def __init__(self):
            self.db, self.jobs, self.types = db, jobs, types

        def handler(self, name=None, **kw):
            name = name or f"ridgeline-test-{uuid.uuid4().hex[:8]}"
            backend = AmqpQueue(reactor=reactor, url=amqp_url, queue_name=amqp_queue_name, connection_name=name,
                                retry_delay=0.1)
            publisher = Publisher(reactor=reactor, db=db, queue=backend, types=types)
            ctx = ServerContext(reactor=reactor, db=db, config=ServerConfig(), plugins=types, queue=publisher)
            backend.start()
            h = JobHandler(ctx, name=name, **kw)
            made.append(h)
            return h

        def create(self, n=1, **params):
            from server.db.activities import NewActivity

            return [db.run_sync(db.activities.create_thd,
                                NewActivity(kind="server", type="test-job", parameters=params, creator="t"), NOW).id
                    for _ in range(n)]

        def states(self, ids):
            return [db.run_sync(db.activities.get_thd, i).state for i in ids]

    yield Env()
    for h in made:
        if h.running:
            pytest_twisted.blockon(h.stopService().addTimeout(15, reactor).addErrback(lambda _: None))
        pytest_twisted.blockon(h.queue.close().addTimeout(15, reactor).addErrback(lambda _: None))
    pool.stop()
    engine.dispose()


@pytest_twisted.ensureDeferred
async def test_connection_closed_by_the_broker_mid_stream(env):
    h = env.handler()
    h.startService()
    first = env.create(20)
    await h.context.queue.publish_pending()
    await until(lambda: len(env.jobs.started) >= 1, what="the first job")
    assert close_rabbitmq_connection(h.name) == 1
    second = env.create(20)
    # Publishing waits for the reconnection (bounded by the queue's timeout).
    await until(lambda: h.queue.connected, what="the reconnection")
    assert await h.context.queue.publish_pending() == 20
    await until(lambda: set(env.states(first + second)) == {"succeeded"}, what="every job done")
    assert sorted(env.jobs.started) == sorted(first + second)  # each ran exactly once
    assert h.queue.connections == 2


@pytest_twisted.ensureDeferred
async def test_consumer_dying_before_its_ack_gets_the_message_redelivered_not_run_twice(env):
    a = env.handler(name=f"ridgeline-test-a-{uuid.uuid4().hex[:6]}")
    never = defer.Deferred()

    def claim_then_die(activity_id):
        # Claims (the database records it) but never acknowledges.
        return JobHandler.handle_message(a, activity_id).addCallback(lambda _: never)

    a.handle_message = claim_then_die
    a.startService()
    [aid] = env.create(1, do="wait")
    await a.context.queue.publish_pending()
    await until(lambda: env.jobs.started == [aid], what="the claim")
    b = env.handler(prefetch=5)
    b.startService()
    await sleep(0.5)
    assert b.stats["dropped"] == 0  # the unacknowledged message is not B's yet
    a.queue._running = False  # "killed": it will not come back
    assert close_rabbitmq_connection(a.name) == 1
    await until(lambda: b.stats["dropped"] == 1, what="the redelivery to B")
    assert env.jobs.started == [aid] and b.stats["claimed"] == 0
    env.jobs.release(aid, "done once")
    await until(lambda: env.states([aid]) == ["succeeded"], what="A finishing the job")
    never.callback(None)


@pytest_twisted.ensureDeferred
async def test_two_handlers_racing_run_each_activity_exactly_once(env):
    h1, h2 = env.handler(), env.handler()
    ids = env.create(40)
    h1.startService()
    h2.startService()
    # Every id twice, from two publishers: both handlers see every activity.
    await defer.gatherResults([h1.queue.publish(ids), h2.queue.publish(ids)])
    await until(lambda: set(env.states(ids)) == {"succeeded"}, what="every job done")
    await sleep(0.5)
    counts = Counter(env.jobs.started)
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    assert h1.stats["claimed"] + h2.stats["claimed"] == 40
    assert h1.stats["dropped"] + h2.stats["dropped"] == 40


@pytest_twisted.ensureDeferred
async def test_publish_to_an_absent_broker_fails_within_the_timeout():
    from twisted.internet import reactor
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    q = AmqpQueue(reactor=reactor, url=f"amqp://guest:guest@127.0.0.1:{port}/", queue_name="x",
                  connection_name="absent", op_timeout=1.0, connect_timeout=1.0)
    q.start()
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        await q.publish([1])
    assert time.monotonic() - started < 5
    await q.close()
