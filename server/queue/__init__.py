"""The queue of server activities: one small interface, two implementations.

A queue carries activity ids from the server (publisher) to job-handlers
(consumers). It is never the source of truth: the database is. A message only
says "activity N may be runnable"; the consumer's compare-and-set
``queued`` → ``in-progress`` decides, so a duplicate or stale message is harmless
(acked and dropped, the activity untouched).

Implementations, chosen by ``queue_url``:

- ``db`` (:class:`server.queue.dbqueue.DbQueue`): the ``job_queue`` table of the
  server's own database;
- ``amqp://user:pass@host:port/vhost`` (:class:`server.queue.amqp.AmqpQueue`):
  RabbitMQ through pika.

Contract of a :class:`JobQueue`:

``publish(activity_ids) -> Deferred``
    Fires once every id is durably in the queue (database commit; broker
    confirm), fails otherwise (never hangs: a dead broker fails it within a
    timeout). Publishing an id twice is allowed.

``consume(handler, prefetch) -> None``
    Start delivering ids: ``handler(activity_id) -> Deferred`` is called for each
    message, at most ``prefetch`` unacknowledged at a time. When the handler's
    Deferred succeeds the message is acknowledged (removed for good); when it
    fails the message is returned to the queue to be delivered again later. The
    handler must only succeed after the database recorded the outcome of its
    claim, so a consumer that dies earlier leaves the message to be redelivered.

``stop_consuming() -> Deferred``
    No new deliveries; fires when deliveries under way have been settled.

``start()`` / ``close() -> Deferred``
    Connect (and keep reconnecting) / disconnect.

The :class:`~server.queue.publisher.Publisher` (``ServerContext.queue``) keeps the
database and the queue in step: see its docstring.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from twisted.internet import defer

DEFAULT_AMQP_QUEUE = "ridgeline.jobs"


class QueueUnavailable(Exception):
    """The queue cannot take or give messages right now (broker down, timeout)."""


class JobQueue(Protocol):
    name: str

    def start(self) -> None: ...

    def publish(self, activity_ids: Sequence[int]) -> defer.Deferred: ...

    def consume(self, handler: Callable[[int], defer.Deferred], prefetch: int) -> None: ...

    def stop_consuming(self) -> defer.Deferred: ...

    def close(self) -> defer.Deferred: ...


def open_queue(url: str, *, reactor: Any, db: Any, consumer_name: str, log: Any = None,
               amqp_queue_name: str = DEFAULT_AMQP_QUEUE, visibility_timeout: float = 60.0) -> JobQueue:
    """The queue for ``url`` (``"db"`` or ``amqp://...``); nothing connects until ``start()``."""
    if url == "db":
        from server.queue.dbqueue import DbQueue

        return DbQueue(reactor=reactor, db=db, consumer_name=consumer_name, visibility_timeout=visibility_timeout)
    if url.startswith(("amqp://", "amqps://")):
        from server.queue.amqp import AmqpQueue

        return AmqpQueue(reactor=reactor, url=url, queue_name=amqp_queue_name, connection_name=consumer_name)
    raise ValueError(f'unknown queue URL {url!r}: expected "db" or an amqp:// URL')


def make_publisher(config, *, reactor, db, types, consumer_name: str | None = None, amqp_queue_name: str | None = None):
    """The process's :class:`~server.queue.publisher.Publisher` over the queue of
    ``config.queue_url`` (for ``ServerContext.queue``)."""
    from server.jobhandler.runner import handler_name
    from server.queue.publisher import Publisher

    backend = open_queue(config.queue_url, reactor=reactor, db=db, consumer_name=consumer_name or handler_name(),
                         amqp_queue_name=amqp_queue_name or DEFAULT_AMQP_QUEUE,
                         visibility_timeout=max(2.0 * config.lease_seconds, 10.0))
    return Publisher(reactor=reactor, db=db, queue=backend, types=types, retry_limit=config.retry_count)
