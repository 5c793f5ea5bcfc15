"""The agent core: registration, the exchange loop, the ping, and dispatch.

One :class:`AgentCore` talks to one server. Timing (all on the injected reactor):

- Normal exchanges every ``exchange_interval``. An *urgent* exchange (results or
  other messages waiting, the ping said so, registration moved on) runs no sooner
  than ``urgent_exchange_interval`` after the previous one started, so the agent
  never sends more than one exchange per urgent interval -- except right after
  the server first accepts ``register`` and when the agent starts.
- A failed exchange (network error, non-200, bad body) backs off exponentially
  from the urgent interval, with jitter, capped at :data:`MAX_BACKOFF` (or the
  normal interval if larger); 503/429 with ``Retry-After`` waits at least that.
  Pings stop while backing off.
- The ping (only once registered) POSTs ``insecure_id=<id>`` to ``ping_url``;
  ``{"messages": True}`` asks for an urgent exchange.

Incoming messages are consumed one by one: each advances the durable
``server_sequence`` in the same transaction that records it (for an operation,
its row in ``operations``), then its handler runs. An operation already recorded
is never run again; its result, queued in the same transaction that marks it
finished, is sent at the next exchange.
"""

from __future__ import annotations

import email.utils
import os
import random as _random
from typing import Any, Callable

import treq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from agent.config import AgentConfig, ConfigError, with_intervals
from agent.hookspecs import OperationContext, OperationResult
from agent.httperrors import describe_http_error
from agent.plugins import AgentPlugins
from agent.procs import kill_leftover_group
from agent.store import INTERRUPTED, AgentStore, OperationKey
from protocol import bpickle, codes
from protocol import exchange as px
from protocol import messages as pm

#: Message types the core handles itself.
CORE_TYPES = frozenset(
    {"set-id", "unknown-id", "registration", "accepted-types", "resynchronize", "set-intervals", "cancel-activity"}
)
#: Longest wait between attempts while the server is failing (unless the normal
#: interval is longer).
MAX_BACKOFF = 3600.0
#: Longest Retry-After honoured (a broken header must not park the agent for days).
MAX_RETRY_AFTER = 86400.0
#: Largest exchange reply read; a bigger one fails the exchange as soon as it
#: is known to be bigger (bpickle's own input limit).
MAX_REPLY_BYTES = bpickle.DEFAULT_MAX_LENGTH
#: Longest result text sent (characters, marker included), as landscape's broker
#: caps it: a result too big for the server's body limit would be refused on
#: every retry and block every message queued after it.
MAX_RESULT_TEXT = 4 * 1024 * 1024 + 64
RESULT_TRUNCATED = "\n**RESULT TRUNCATED**"
#: Largest ping reply read (a real one is 15 bytes).
MAX_PING_REPLY_BYTES = 64 * 1024
#: The encoded messages of one exchange stay under this (one larger message
#: still goes alone): a batch of 100 large results would exceed the body limit
#: of a server (Ridgeline's default is 30 MiB) and be refused on every retry.
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
#: Exchange requests time out after this many seconds.
HTTP_TIMEOUT = 120.0
USER_AGENT = b"ridgeline-agent"


class ExchangeFailed(Exception):
    """An exchange did not complete; ``retry_after`` is the server's Retry-After."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: bytes | str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


def _capped(text: str) -> str:
    if len(text) <= MAX_RESULT_TEXT:
        return text
    return text[: MAX_RESULT_TEXT - len(RESULT_TRUNCATED)] + RESULT_TRUNCATED


async def _read_limited(response, limit: int) -> bytes:
    """The body of ``response``, or ExchangeFailed once it exceeds ``limit``
    bytes (the connection is then closed instead of read to the end)."""
    length = response.length
    if isinstance(length, int) and length > limit:
        response.deliverBody(_Discard())
        raise ExchangeFailed(f"the server's reply of {length} bytes is larger than the limit of {limit}")
    chunks: list[bytes] = []
    received = 0

    def collect(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received > limit:
            raise ExchangeFailed(f"the server's reply is larger than the limit of {limit} bytes")
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


class _Discard(Protocol):
    """Drops a body that will not be read, closing the connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _readable(failure: Failure) -> str:
    exc = failure.value
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AgentCore:
    """Registration, exchange loop, ping and dispatch for one agent.

    Built by :mod:`agent.service` (the composition root) or by tests with a
    ``Clock``, a ``StubTreq`` and a temporary store.
    """

    log = Logger(namespace="ridgeline.agent")

    def __init__(
        self,
        *,
        config: AgentConfig,
        reactor: Any,
        http: Any,
        store: AgentStore,
        plugins: AgentPlugins,
        random: _random.Random | None = None,
        hostname: str | None = None,
        on_intervals_changed: Callable[[AgentConfig], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.http = http
        self.store = store
        self.plugins = plugins
        self.random = random or _random.Random()
        self.hostname = hostname or os.uname().nodename
        self._on_intervals_changed = on_intervals_changed
        state = store.get_state()
        if state.intervals:
            try:
                config = with_intervals(config, **state.intervals)
            except ConfigError as e:
                self.log.warn("Ignoring stored intervals: {e}", e=e)
        self.config = config
        self.failures = 0
        self.exchanging = False
        self.running = False
        self._call = None
        self._ping_call = None
        self._ping_in_flight = False
        self._due_at: float | None = None
        self._last_exchange_start: float | None = None
        self._again_urgent = False
        self._client_types_hash: bytes | None = None  # kept in memory only, as landscape
        self._in_flight: dict[int, Deferred] = {}
        self._register_sent = False
        self._registration_failed = False
        self._stopped_done: Deferred | None = None

    # --- life cycle ----------------------------------------------------------------

    def client_accepted_types(self) -> list[str]:
        return sorted(CORE_TYPES | self.plugins.message_types())

    def start(self) -> None:
        """Recover from a previous run, then exchange at once and start pinging."""
        self.running = True
        self.recover_interrupted()
        self._schedule_at(0)
        self._schedule_ping()

    def stop(self) -> Deferred:
        """Stop the timers. Running operations are left alone: the next start
        reports them interrupted."""
        self.running = False
        for call in (self._call, self._ping_call):
            if call is not None and call.active():
                call.cancel()
        self._call = self._ping_call = None
        from twisted.internet.defer import succeed

        return succeed(None)

    def recover_interrupted(self) -> int:
        """For each operation left ``running`` by a previous process: kill what is
        left of its process group, then queue FAILED/INTERRUPTED, once."""
        count = 0
        state = self.store.get_state()
        for op in self.store.running_operations():
            if op.key.operation_id in self._in_flight:
                continue
            if op.pgid is not None:
                if kill_leftover_group(op.pgid, op.process_start):
                    self.log.warn(
                        "Killed the leftover process group {pgid} of operation {op}",
                        pgid=op.pgid,
                        op=op.key.operation_id,
                    )
            result = None
            if self._same_identity(op.key, state):
                result = pm.operation_result(
                    op.key.operation_id,
                    codes.FAILED,
                    result_text="The agent stopped while this operation was running; it did not finish.",
                    result_code=codes.INTERRUPTED,
                )
                result = self._stamp(result, state)
            if self.store.finish_operation(op.key, result, state=INTERRUPTED):
                count += 1
                self.log.warn("Operation {op} ({type}) was interrupted by a restart", op=op.key.operation_id, type=op.type)
        return count

    # --- scheduling ----------------------------------------------------------------

    def _schedule_at(self, delay: float) -> None:
        """Run the next exchange in ``delay`` seconds, replacing any later one."""
        if not self.running:
            return
        delay = max(0.0, delay)
        due = self.reactor.seconds() + delay
        if self._call is not None and self._call.active():
            if self._due_at is not None and self._due_at <= due:
                return
            self._call.cancel()
        self._due_at = due
        self._call = self.reactor.callLater(delay, self._fire)

    def _reschedule(self, delay: float) -> None:
        """Run the next exchange in exactly ``delay`` seconds (after an exchange)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._due_at = None
        self._schedule_at(delay)

    def schedule_urgent(self) -> None:
        """Ask for an exchange soon: no sooner than the urgent interval after the
        previous exchange started, and never during a backoff."""
        if self.exchanging:
            self._again_urgent = True
            return
        if self.failures:
            return  # the backoff timer decides
        self._schedule_at(self._urgent_delay())

    def _urgent_delay(self) -> float:
        if self._last_exchange_start is None:
            return 0.0
        return self._last_exchange_start + self.config.urgent_exchange_interval - self.reactor.seconds()

    def _fire(self) -> None:
        self._call = None
        self._due_at = None
        Deferred.fromCoroutine(self.exchange())

    def _backoff_delay(self, retry_after: float | None) -> float:
        base = float(self.config.urgent_exchange_interval)
        cap = max(MAX_BACKOFF, float(self.config.exchange_interval))
        delay = min(cap, base * 2 ** min(self.failures - 1, 30))
        # Jitter spreads a fleet's retries after an outage.
        delay = delay * self.random.uniform(0.75, 1.0)
        delay = max(delay, float(self.config.urgent_exchange_interval) if self.failures > 1 else 0.0)
        if retry_after is not None:
            delay = max(delay, retry_after + self.random.uniform(0, min(retry_after * 0.1, 60.0)))
        return delay

    # --- the exchange ----------------------------------------------------------------

    def should_register(self, state=None) -> bool:
        state = state or self.store.get_state()
        return (
            state.secure_id is None
            and "register" in state.accepted_types
            and bool(self.config.account_name)
            and bool(self.config.computer_title)
        )

    def _register_message(self, state) -> dict:
        msg = pm.register(
            account_name=self.config.account_name,
            computer_title=self.config.computer_title,
            hostname=self.hostname,
            registration_password=self.config.registration_key,
            tags=self.config.tags,
            clone_secure_id=(state.clone_secure_id.decode("ascii") if state.clone_secure_id else None),
        )
        return msg

    def _stamp(self, message: dict, state=None) -> dict:
        state = state or self.store.get_state()
        message = dict(message)
        message.setdefault("api", state.server_api or px.DEFAULT_SERVER_API)
        message.setdefault("timestamp", int(self.reactor.seconds()))
        return message

    def queue(self, message: dict, urgent: bool = True) -> None:
        """Queue a message for the server (stamped with ``api`` and ``timestamp``)."""
        self.store.add_message(self._stamp(message))
        if urgent:
            self.schedule_urgent()

    async def exchange(self) -> bool:
        """One exchange. Returns True on success. Never raises."""
        if self.exchanging:
            self._again_urgent = True
            return False
        self.exchanging = True
        self._again_urgent = False
        self._last_exchange_start = self.reactor.seconds()
        registering = False
        try:
            state = self.store.get_state()
            if self.should_register(state):
                # As landscape: registration starts from an empty queue.
                self.store.delete_all_messages()
                self.store.add_message(self._stamp(self._register_message(state), state))
                registering = True
                self.log.info("Registering with {url} as {title!r}", url=self.config.url, title=self.config.computer_title)
                state = self.store.get_state()
            payload, sent = self._make_payload(state)
            token = self.store.take_exchange_token()
            body = await self._post(payload, state, token)
            response = self._parse(body)
            await self._handle_response(response, payload, sent)
        except ExchangeFailed as e:
            self.exchanging = False
            self.failures += 1
            delay = self._backoff_delay(e.retry_after)
            self.log.warn(
                "Message exchange failed: {error}; next attempt in {delay:.0f} s", error=str(e), delay=delay
            )
            self._reschedule(delay)
            return False
        except Exception:
            # A bug or a store error: log it, keep running, retry later.
            self.exchanging = False
            self.failures += 1
            self.log.failure("Message exchange failed unexpectedly")
            self._reschedule(self._backoff_delay(None))
            return False
        self.exchanging = False
        self.failures = 0
        self._register_sent = registering
        state = self.store.get_state()
        if self.should_register(state) and not registering and not self._registration_failed:
            self._reschedule(0)
        elif self._again_urgent or self.store.count_pending() > 0:
            self._reschedule(self._urgent_delay())
        else:
            self._reschedule(self.config.exchange_interval)
        return True

    def _make_payload(self, state) -> tuple[dict, int]:
        pending = self.store.pending_messages(px.MAX_MESSAGES_PER_EXCHANGE)
        server_api = state.server_api or px.DEFAULT_SERVER_API
        batch: list[dict] = []
        size = 0
        for m in pending:
            api = m.get("api", server_api)
            if batch and api != batch[0].get("api", server_api):
                break  # one API per batch, as landscape
            size += len(bpickle.dumps(m))
            if batch and size > MAX_PAYLOAD_BYTES:
                break  # the rest goes in the next exchange
            batch.append(m)
        if batch:
            server_api = batch[0].get("api", server_api)
        types = self.client_accepted_types()
        request = px.ExchangeRequest(
            server_api=server_api,
            client_api=px.CLIENT_API,
            sequence=state.sequence,
            accepted_types_digest=px.accepted_types_digest(state.accepted_types),
            messages=batch,
            total_messages=self.store.count_pending(),
            next_expected_sequence=state.server_sequence,
            client_accepted_types=(
                types if self._client_types_hash != px.accepted_types_digest(types) else None
            ),
        )
        return request.to_wire(), len(batch)

    async def _post(self, payload: dict, state, token: bytes | None) -> bytes:
        headers = {
            b"Content-Type": [b"application/octet-stream"],
            b"X-Message-API": [payload["server-api"]],
            b"User-Agent": [USER_AGENT],
        }
        if state.secure_id:
            headers[b"X-Computer-ID"] = [state.secure_id]
        if token:
            headers[b"X-Exchange-Token"] = [token]
        try:
            response = await self.http.post(
                self.config.url,
                data=bpickle.dumps(payload),
                headers=headers,
                timeout=HTTP_TIMEOUT,
                reactor=self.reactor,
            )
            body = await _read_limited(response, MAX_REPLY_BYTES)
        except ExchangeFailed:
            raise
        except Exception as e:
            raise ExchangeFailed(describe_http_error(e)) from None
        if response.code != 200:
            retry_after = None
            if response.code in (429, 503):
                retry_after = parse_retry_after(
                    response.headers.getRawHeaders(b"Retry-After", [None])[0], self.reactor.seconds()
                )
            raise ExchangeFailed(f"the server answered HTTP {response.code}", retry_after)
        return body

    @staticmethod
    def _parse(body: bytes) -> px.ExchangeResponse:
        try:
            return px.ExchangeResponse.from_wire(bpickle.loads(body))
        except (bpickle.DecodeError, px.PayloadError) as e:
            raise ExchangeFailed(f"the server's reply is not a valid exchange payload: {e}") from None

    async def _handle_response(self, response: px.ExchangeResponse, payload: dict, sent: int) -> None:
        state = self.store.get_state()
        updates: dict[str, Any] = {}
        server_api = min(response.server_api, px.SERVER_API)
        if state.server_api is None or response.server_api >= (state.server_api or px.DEFAULT_SERVER_API):
            updates["server_api"] = server_api
        uuid = response.server_uuid.decode("ascii", "replace")
        if state.server_uuid != uuid:
            if state.server_uuid is not None:
                self.log.warn("The server's uuid changed from {old} to {new}", old=state.server_uuid, new=uuid)
            updates["server_uuid"] = uuid
        updates["exchange_token"] = response.next_exchange_token
        if response.client_accepted_types_hash is not None:
            self._client_types_hash = response.client_accepted_types_hash
        self.store.update_state(**updates)

        n = px.expected_after_reply(response.next_expected_sequence, payload["sequence"], sent)
        ack = px.client_ack(n, state.sequence, state.pending_offset, self.store.count_pending())
        self.store.apply_ack(ack.action, ack.sequence, ack.pending_offset, ack.delete_acknowledged)
        if ack.action == "resync":
            self.log.warn("Resynchronizing with the server (it expects message {n})", n=n)
            self.queue({"type": "resynchronize"})
        elif ack.action == "rewind" and ack.sequence < state.sequence + sent:
            self.log.info("The server asked for messages from {n} again", n=n)

        for message in response.messages:
            self._handle_message(message)

    # --- incoming messages ----------------------------------------------------------------

    def _handle_message(self, raw: dict) -> None:
        state = self.store.get_state()
        next_seq = state.server_sequence + 1
        try:
            message = pm.validate_server_message(raw)
        except pm.MessageError as e:
            op_id = raw.get("operation-id") if isinstance(raw, dict) else None
            mtype = raw.get("type") if isinstance(raw, dict) else None
            self.log.warn("Invalid message from the server ({type}): {e}", type=mtype, e=e)
            # An id the store cannot hold is consumed without a record or result.
            if type(op_id) is int and 0 <= op_id <= pm.MAX_OPERATION_ID and state.secure_id and state.server_uuid:
                key = OperationKey(state.server_uuid, state.secure_id, op_id)
                if self.store.begin_message(next_seq, key, str(mtype), self.reactor.seconds()):
                    self._finish(key, OperationResult(codes.FAILED, f"The agent could not accept this message: {e}"))
            else:
                self.store.begin_message(next_seq, None, "", 0)
            return
        mtype = message["type"]
        handler = getattr(self, "_on_" + mtype.replace("-", "_"), None) if mtype in CORE_TYPES else None
        if handler is not None:
            if mtype == "resynchronize":
                handler(message, next_seq)
            else:
                self.store.begin_message(next_seq, None, mtype, 0)
                handler(message)
            return
        op_id = message.get("operation-id")
        if op_id is None:
            self.store.begin_message(next_seq, None, mtype, 0)
            self.log.info("Ignoring a {type} message: nothing here handles it", type=mtype)
            return
        self._run_operation(message, next_seq, state)

    def _run_operation(self, message: dict, next_seq: int, state) -> None:
        op_id = message["operation-id"]
        mtype = message["type"]
        if not (state.secure_id and state.server_uuid):
            self.store.begin_message(next_seq, None, mtype, 0)
            self.log.warn("Ignoring operation {op}: the agent is not registered", op=op_id)
            return
        key = OperationKey(state.server_uuid, state.secure_id, op_id)
        # Recorded durably BEFORE anything runs: a crash from here on reports it
        # interrupted instead of running it again.
        if not self.store.begin_message(next_seq, key, mtype, self.reactor.seconds()):
            self.log.info("Operation {op} ({type}) was already received; not running it again", op=op_id, type=mtype)
            return
        self.log.info("Operation {op}: {type}", op=op_id, type=mtype)
        if mtype not in self.plugins.message_types():
            self._finish(key, self._no_handler(mtype))
            return
        context = OperationContext(
            operation_id=op_id,
            reactor=self.reactor,
            config=self.config,
            http=self.http,
            secure_id=state.secure_id,
            log=Logger(namespace=f"ridgeline.agent.{mtype}"),
            record_process=lambda _op, pgid, start: self.store.set_operation_process(key, pgid, start),
        )
        d = self.plugins.handle(message, context)
        if d is None:
            self._finish(key, self._no_handler(mtype))
            return
        self._in_flight[op_id] = d

        def done(result):
            self._in_flight.pop(op_id, None)
            if not isinstance(result, OperationResult):
                result = OperationResult(
                    codes.FAILED, f"The {mtype} handler returned {type(result).__name__}, not an OperationResult."
                )
            self._finish(key, result)

        def failed(failure: Failure):
            self._in_flight.pop(op_id, None)
            self.log.failure("The {type} handler failed on operation {op}", failure, type=mtype, op=op_id)
            self._finish(key, OperationResult(codes.FAILED, f"The {mtype} handler failed: {_readable(failure)}"))

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: self.log.failure("Could not store the result of operation {op}", f, op=op_id))

    @staticmethod
    def _no_handler(mtype: str) -> OperationResult:
        return OperationResult(
            codes.FAILED,
            f"No enabled plugin on this agent handles {mtype!r} messages.",
            codes.NO_HANDLER,
        )

    def _finish(self, key: OperationKey, result: OperationResult) -> None:
        state = self.store.get_state()
        message = None
        if self._same_identity(key, state):
            message = self._stamp(
                pm.operation_result(
                    key.operation_id,
                    int(result.status),
                    result_text=_capped(str(result.result_text or "")),
                    result_code=result.result_code,
                ),
                state,
            )
        else:
            self.log.warn("Dropping the result of operation {op}: the agent re-registered since", op=key.operation_id)
        if self.store.finish_operation(key, message) and message is not None:
            self.schedule_urgent()

    @staticmethod
    def _same_identity(key: OperationKey, state) -> bool:
        return key.secure_id == state.secure_id and key.server_uuid == state.server_uuid

    # --- core message handlers ----------------------------------------------------------------

    def _on_accepted_types(self, message: dict) -> None:
        types = list(message["types"])
        if self.store.set_accepted_types(types):
            self.schedule_urgent()
        self.log.debug("The server accepts: {types}", types=", ".join(sorted(types)))

    def _on_set_id(self, message: dict) -> None:
        secure_id = message["id"]
        self.store.update_state(
            secure_id=secure_id, insecure_id=message["insecure-id"], clone_secure_id=None
        )
        self._registration_failed = False
        self.log.info(
            "Registered: secure id ...{tail}, insecure id {iid}",
            tail=secure_id[-10:].decode("ascii", "replace"),
            iid=message["insecure-id"],
        )
        self._schedule_ping()
        self.schedule_urgent()

    def _on_unknown_id(self, message: dict) -> None:
        state = self.store.get_state()
        clone_of = message.get("clone-of")
        updates: dict[str, Any] = {"secure_id": None, "insecure_id": None, "exchange_token": None}
        if clone_of is not None:
            updates["clone_secure_id"] = state.secure_id
            self.log.warn(
                "The server says this computer is a clone of {orig!r}; registering again as a new computer",
                orig=clone_of,
            )
        else:
            self.log.warn("The server does not know this computer; registering again")
        self.store.update_state(**updates)
        self.schedule_urgent()

    def _on_registration(self, message: dict) -> None:
        info = message.get("info")
        reasons = {
            "unknown-account": f"the server has no account named {self.config.account_name!r}",
            "max-pending-computers": "the account has too many computers waiting for acceptance",
        }
        self._registration_failed = True
        self.log.error(
            "Registration failed: {reason}. Retrying in {delay} s.",
            reason=reasons.get(info, f"the server said {info!r}"),
            delay=self.config.exchange_interval,
        )

    def _on_resynchronize(self, message: dict, next_seq: int) -> None:
        state = self.store.get_state()
        op_id = message.get("operation-id")
        if op_id is not None and state.secure_id and state.server_uuid:
            key = OperationKey(state.server_uuid, state.secure_id, op_id)
            if not self.store.begin_message(next_seq, key, "resynchronize", self.reactor.seconds()):
                return
            reply = self._stamp({"type": "resynchronize", "operation-id": op_id}, state)
            self.store.finish_operation(key, reply)
        else:
            self.store.begin_message(next_seq, None, "resynchronize", 0)
        self.log.info("The server asked for a resynchronization")
        self.schedule_urgent()

    def _on_set_intervals(self, message: dict) -> None:
        names = {"exchange": "exchange_interval", "urgent-exchange": "urgent_exchange_interval", "ping": "ping_interval"}
        new = {names[k]: message[k] for k in names if message.get(k) is not None}
        try:
            config = with_intervals(self.config, **new)
        except ConfigError as e:
            self.log.warn("Ignoring set-intervals from the server: {e}", e=e)
            return
        self.config = config
        state = self.store.get_state()
        stored = dict(state.intervals or {})
        stored.update(new)
        self.store.update_state(intervals=stored)
        self.log.info("New intervals from the server: {new}", new=new)
        if "ping_interval" in new:
            self._schedule_ping()
        if self._on_intervals_changed is not None:
            self._on_intervals_changed(config)

    def _on_cancel_activity(self, message: dict) -> None:
        target = message["target-operation-id"]
        if self.plugins.cancel(target):
            self.log.info("Canceling operation {op}", op=target)
        else:
            self.log.info("Cancel for operation {op} ignored: it is not running", op=target)

    # --- ping ----------------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        if not self.running:
            return
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = self.reactor.callLater(self.config.ping_interval, self._ping_tick)

    def _ping_tick(self) -> None:
        self._ping_call = None
        d = Deferred.fromCoroutine(self.ping())
        d.addBoth(lambda _: self._schedule_ping())

    async def ping(self) -> bool:
        """Ask the ping URL whether messages wait; True if it said so. Never raises."""
        state = self.store.get_state()
        if state.insecure_id is None or self.failures or self.exchanging:
            return False
        try:
            response = await self.http.post(
                self.config.ping_url,
                data={"insecure_id": str(state.insecure_id)},
                headers={b"User-Agent": [USER_AGENT]},
                timeout=30,
                reactor=self.reactor,
            )
            body = await _read_limited(response, MAX_PING_REPLY_BYTES)
        except Exception as e:
            self.log.debug("Ping failed: {e}", e=e)
            return False
        if response.code != 200:
            self.log.debug("Ping answered HTTP {code}", code=response.code)
            return False
        try:
            waiting = bpickle.loads(body) == px.PING_MESSAGES_WAITING
        except bpickle.DecodeError:
            return False
        if waiting:
            self.schedule_urgent()
        return waiting
