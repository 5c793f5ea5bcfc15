"""The ``amqp://`` queue: RabbitMQ through pika (kept behind this module).

Why pika's ``TwistedProtocolConnection``: it runs on the reactor itself, so
nothing ever blocks the reactor and there are no threads to hand messages
across; publisher confirms come back as Deferreds, so a batch of publishes is
pipelined and confirmed together instead of one round trip each (a dedicated
thread with ``BlockingConnection`` would wait for every confirm in turn).

Guarantees:

- the queue is durable and every message persistent (``delivery_mode=2``);
- ``publish`` fires only when the broker confirmed every message (publisher
  confirms), and fails (never hangs) after ``op_timeout`` seconds when it
  cannot: the caller leaves the activities unpublished and the sweeper retries;
- consumers use manual acknowledgement, after the handler's Deferred fired (the
  database recorded the claim); a failed handler's message is returned to the
  queue after ``retry_delay``; at most ``prefetch`` messages are unacknowledged;
- a lost connection is re-established with exponential backoff (0.5 s doubling
  to 30 s); messages unacknowledged on the lost connection are redelivered by
  the broker, and the consumer's compare-and-set drops those already claimed;
- a silent broker is noticed by AMQP heartbeats (``heartbeat`` seconds, default
  10, overridable in the URL query) and every call has a timeout.

The connection carries the client property ``connection_name`` (the consumer
name), so an operator (or a test) can find it with
``rabbitmqctl list_connections name client_properties``.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.logger import Logger

from server.queue import QueueUnavailable

log = Logger(namespace="ridgeline.queue.amqp")


def _display(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path or '/'}"


class AmqpQueue:
    """See the module docstring and :class:`server.queue.JobQueue`."""

    name = "amqp"

    def __init__(self, *, reactor, url: str, queue_name: str, connection_name: str, op_timeout: float = 10.0,
                 connect_timeout: float = 10.0, retry_delay: float = 1.0, backoff_max: float = 30.0,
                 rng: random.Random | None = None):
        self.reactor = reactor
        self.url = url
        self.queue_name = queue_name
        self.connection_name = connection_name
        self.op_timeout = op_timeout
        self.connect_timeout = connect_timeout
        self.retry_delay = retry_delay
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._params = self._parameters(url)
        self._running = False
        self._conn: TwistedProtocolConnection | None = None
        self._pub_channel = None
        self._consumer: tuple | None = None  # (channel, consumer_tag)
        self._handler: Callable[[int], defer.Deferred] | None = None
        self._prefetch = 1
        self._inflight: set[defer.Deferred] = set()
        self._waiters: list[defer.Deferred] = []
        self._reconnect_call = None
        self._backoff = 0.5
        self._connecting = False
        #: Connections made so far (tests and logs).
        self.connections = 0

    def _parameters(self, url: str) -> pika.URLParameters:
        params = pika.URLParameters(url)
        query = parse_qs(urlsplit(url).query)
        if "heartbeat" not in query:
            params.heartbeat = 10
        if "blocked_connection_timeout" not in query:
            params.blocked_connection_timeout = 30
        params.client_properties = {"connection_name": self.connection_name, "product": "ridgeline"}
        return params

    # --- connection --------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._connect_now()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._pub_channel is not None

    def _connect_now(self) -> None:
        self._reconnect_call = None
        if not self._running or self._connecting or self._conn is not None:
            return
        self._connecting = True
        d = defer.Deferred.fromCoroutine(self._connect())
        d.addErrback(self._connect_failed)

    async def _connect(self) -> None:
        p = self._params
        if p.ssl_options is not None:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = SSL4ClientEndpoint(self.reactor, p.host, p.port, optionsForClientTLS(p.host),
                                          timeout=self.connect_timeout)
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, p.host, p.port, timeout=self.connect_timeout)
        conn = TwistedProtocolConnection(p, custom_reactor=self.reactor)
        await connectProtocol(endpoint, conn).addTimeout(self.connect_timeout, self.reactor)
        try:
            await conn.ready.addTimeout(self.connect_timeout, self.reactor)
            channel = await self._timed(conn.channel())
            await self._timed(channel.queue_declare(queue=self.queue_name, durable=True))
            await self._timed(channel.confirm_delivery())
        except BaseException:
            conn.transport.abortConnection()
            raise
        self._conn = conn
        self._pub_channel = channel
        self._connecting = False
        self._backoff = 0.5
        self.connections += 1
        conn.closed.addBoth(self._lost, conn)
        log.info("connected to RabbitMQ at {url}, queue {queue}", url=_display(self.url), queue=self.queue_name)
        if self._handler is not None:
            await self._start_consumer(conn)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.called:
                w.callback(channel)

    def _timed(self, d: defer.Deferred) -> defer.Deferred:
        return d.addTimeout(self.op_timeout, self.reactor)

    def _connect_failed(self, failure) -> None:
        self._connecting = False
        log.warn("cannot connect to RabbitMQ at {url}: {error}; retrying in {delay:.1f}s", url=_display(self.url),
                 error=failure.getErrorMessage() or failure.type.__name__, delay=self._backoff)
        self._retry_later()

    def _retry_later(self) -> None:
        if not self._running or self._reconnect_call is not None:
            return
        delay = self._backoff * (0.75 + 0.5 * self._rng.random())
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self._reconnect_call = self.reactor.callLater(delay, self._connect_now)

    def _lost(self, reason, conn) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._pub_channel = None
        self._consumer = None
        if self._running:
            log.warn("lost the RabbitMQ connection ({reason}); reconnecting", reason=reason)
            self._retry_later()

    def _publisher_channel(self) -> defer.Deferred:
        if self._pub_channel is not None:
            return defer.succeed(self._pub_channel)
        if not self._running:
            return defer.fail(QueueUnavailable("the queue is closed"))
        d = defer.Deferred()
        self._waiters.append(d)

        def timed_out(f):
            f.trap(defer.TimeoutError, defer.CancelledError)
            if d in self._waiters:
                self._waiters.remove(d)
            raise QueueUnavailable(f"no connection to RabbitMQ at {_display(self.url)} within {self.op_timeout}s")

        return d.addTimeout(self.op_timeout, self.reactor).addErrback(timed_out)

    # --- publishing --------------------------------------------------------------------

    def publish(self, activity_ids: Sequence[int]) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._publish(list(activity_ids)))

    async def _publish(self, ids: list[int]) -> None:
        if not ids:
            return
        channel = await self._publisher_channel()
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="text/plain")
        try:
            confirms = [
                channel.basic_publish(exchange="", routing_key=self.queue_name, body=str(i).encode(),
                                      properties=props, mandatory=True)
                for i in ids
            ]
        except Exception as e:  # the channel closed under us
            raise QueueUnavailable(f"publishing failed: {e!r}") from None
        try:
            await defer.gatherResults(confirms, consumeErrors=True).addTimeout(self.op_timeout, self.reactor)
        except defer.FirstError as e:
            raise QueueUnavailable(f"the broker did not confirm: {e.subFailure.getErrorMessage() or e.subFailure.type.__name__}") from None
        except defer.TimeoutError:
            raise QueueUnavailable(f"the broker did not confirm within {self.op_timeout}s") from None

    # --- consuming ---------------------------------------------------------------------

    def consume(self, handler: Callable[[int], defer.Deferred], prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._handler = handler
        self._prefetch = prefetch
        if self._conn is not None and self._consumer is None:
            defer.Deferred.fromCoroutine(self._start_consumer(self._conn)).addErrback(
                lambda f: log.warn("cannot start consuming: {error}", error=f.getErrorMessage()))

    async def _start_consumer(self, conn) -> None:
        channel = await self._timed(conn.channel())
        await self._timed(channel.basic_qos(prefetch_count=self._prefetch))
        queue_obj, tag = await self._timed(channel.basic_consume(queue=self.queue_name, auto_ack=False))
        if conn is not self._conn or self._handler is None:
            return
        self._consumer = (channel, tag)
        defer.Deferred.fromCoroutine(self._consume_loop(channel, queue_obj))

    async def _consume_loop(self, channel, queue_obj) -> None:
        while True:
            try:
                msg = await queue_obj.get()
            except Exception:
                return  # channel closed or consumer canceled: a reconnect starts a new loop
            self._deliver(channel, msg)

    def _deliver(self, channel, msg) -> None:
        tag = msg.method.delivery_tag
        try:
            activity_id = int(msg.body.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            log.warn("dropping a message that is not an activity id: {body!r}", body=msg.body[:100])
            channel.basic_ack(tag)
            return
        handler = self._handler
        if handler is None:
            channel.basic_nack(tag, requeue=True)
            return
        d = defer.maybeDeferred(handler, activity_id)
        self._inflight.add(d)

        def ok(_):
            if channel.is_open:
                channel.basic_ack(tag)
            # else: the broker redelivers it; the claim's compare-and-set drops it.

        def failed(f):
            log.warn("activity {id} not handled, returned to the queue: {error}", id=activity_id,
                     error=f.getErrorMessage())
            # Later, not at once: a failing database would otherwise spin.
            self.reactor.callLater(self.retry_delay, lambda: channel.is_open and channel.basic_nack(tag, requeue=True))

        d.addCallbacks(ok, failed)
        d.addBoth(lambda _: self._inflight.discard(d))

    def stop_consuming(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._stop_consuming())

    async def _stop_consuming(self) -> None:
        self._handler = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            channel, tag = consumer
            try:
                await self._timed(channel.basic_cancel(tag))
            except Exception:
                pass
        if self._inflight:
            await defer.DeferredList(list(self._inflight))

    def close(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        await self._stop_consuming()
        self._running = False
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()
        self._reconnect_call = None
        conn, self._conn = self._conn, None
        self._pub_channel = None
        for w in self._waiters:
            if not w.called:
                w.errback(QueueUnavailable("the queue is closed"))
        self._waiters = []
        if conn is not None:
            try:
                closed = conn.close()
                if closed is not None:
                    await closed.addTimeout(self.op_timeout, self.reactor)
            except Exception:
                if conn.transport is not None:
                    conn.transport.abortConnection()
