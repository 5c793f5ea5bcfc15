"""One message exchange, from a parsed request to the reply payload.

:func:`parse_request` checks the HTTP body and headers off the database (bad
input never opens a transaction). :class:`MessageSystem` then runs the whole
exchange in **one transaction**:

1. authenticate: ``X-Computer-ID`` (its sha256 is looked up; unknown or removed
   → ``unknown-id``), then ``X-Exchange-Token``: missing is fine (landscape-client
   drops it after any failure), wrong is a clone → ``unknown-id`` with
   ``clone-of``, nothing changed;
2. take the client's messages from the sequence the server expects
   (``protocol.exchange.receive_client_messages``): ``operation-result`` goes to
   ``ActivitiesConnector.apply_result_thd``;
3. acknowledge and plan the server's messages
   (``protocol.exchange.server_messages_to_send``): forget what the agent has
   processed, renumber and queue ``resynchronize`` when its count is outside
   what the server holds;
4. deliver every deliverable activity of an accepted computer: in-progress, an
   answer deadline, its message appended to the outbox;
5. ``accepted-types`` when the client's digest differs from the server's list;
6. one UPDATE of the computer's bookkeeping: a fresh exchange token (only its
   hash is stored), last seen, the client sequence, the client's types.

The idle exchange (nothing received, nothing to send, the agent up to date)
costs one SELECT (the computer row with two indexed sub-queries: oldest kept
outbox number, any deliverable work) and that one UPDATE. On a SQLite file it
runs in the reactor thread, where a thread-pool hop would cost more than the two
statements; it never waits for a lock there (a busy database sends it to the
pool) and leaves WAL checkpoints to the pool
(``ExchangeStateConnector.idle_exchange_inline``). Work adds a constant
number of statements for reading and appending plus, per delivered activity,
the state machine's compare-and-set (``transition_thd``).

Registration happens on a request without ``X-Computer-ID`` that carries a
``register`` message (either shape). Replies to unregistered clients are not
numbered in any outbox: no computer exists to keep them for; the new computer's
outbox starts at the client's own count, so both sides agree from the start.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from protocol import bpickle, codes
from protocol import exchange as px
from protocol import messages as pm
from server import states
from server.db.activities import Activity, NewActivity
from server.db.computers import NewComputer, hash_secret
from server.db.exchangestate import BUSY
from server.hookspecs import Delivery

#: What the server accepts from a client that has not registered yet.
UNREGISTERED_TYPES: tuple[str, ...] = ("register", "resynchronize")
#: What it accepts from a registered computer (two or more types, never ``register``:
#: ``landscape-config --actively-registered`` relies on both).
REGISTERED_TYPES: tuple[str, ...] = ("operation-result", "resynchronize")

_UNREGISTERED_DIGEST = px.accepted_types_digest(UNREGISTERED_TYPES)
_REGISTERED_DIGEST = px.accepted_types_digest(REGISTERED_TYPES)

#: Type of the activity recording a ``resynchronize`` request to an agent: its
#: id is the message's ``operation-id``, so those ids come from the one sequence
#: that never reuses a number.
RESYNCHRONIZE_ACTIVITY = "resynchronize"
ACTOR = "message-system"
SECURE_ID_BYTES = 32
TOKEN_BYTES = 24


class BadRequest(ValueError):
    """A request the server refuses with 400; the text is short and safe to show."""


@dataclass(frozen=True)
class Incoming:
    """A checked exchange request."""

    request: px.ExchangeRequest
    messages: list[dict]  # validated, normalised (protocol.messages)
    secure_id: bytes | None
    token: bytes | None


def parse_request(body: bytes, *, secure_id: bytes | None, token: bytes | None,
                  message_api: bytes | None, max_size: int) -> Incoming:
    """Decode and check a request body; :class:`BadRequest` names the problem."""
    try:
        obj = bpickle.loads(body, max_length=max(max_size, 1))
    except bpickle.DecodeError as e:
        raise BadRequest(f"body is not valid bpickle: {e.reason} at byte {e.offset}") from None
    try:
        req = px.ExchangeRequest.from_wire(obj, message_api=message_api)
    except px.PayloadError as e:
        raise BadRequest(str(e)) from None
    checked = []
    for i, m in enumerate(req.messages):
        try:
            checked.append(pm.validate_client_message(m))
        except pm.MessageError as e:
            raise BadRequest(f"message {i}: {e}") from None
    return Incoming(req, checked, secure_id or None, token or None)


@dataclass
class Reply:
    """The reply payload being built."""

    messages: list[dict] = field(default_factory=list)
    next_expected: int | None = None
    token: bytes | None = None
    client_types_hash: bytes | None = None


def _now(reactor) -> dt.datetime:
    return dt.datetime.fromtimestamp(reactor.seconds(), tz=dt.timezone.utc)


class MessageSystem:
    """The exchange logic of one server process (see the module docstring)."""

    def __init__(self, context, activity_types=None):
        self.context = context
        self.db = context.db
        self.config = context.config
        self.log = context.log
        self._types = activity_types
        self.server_uuid = (context.server_uuid or "").encode("ascii")

    @property
    def activity_types(self):
        if self._types is None:
            self._types = self.context.plugins
            if self._types is None:
                from server.plugins import ActivityTypes

                self._types = ActivityTypes.from_plugins()
        return self._types

    # --- entry point -----------------------------------------------------------------

    def exchange(self, incoming: Incoming):
        """Deferred of the reply payload (a dict for bpickle)."""
        now = _now(self.context.reactor)
        if not _maybe_idle(incoming):
            return self.db.run(self.exchange_thd, incoming, now)
        store = self.db.exchange
        if store.inline_idle:
            # SQLite: the idle exchange right here (see idle_exchange_inline): no
            # thread hop. Not idle → the full exchange; database busy → the pool.
            token = secrets.token_urlsafe(TOKEN_BYTES).encode("ascii")
            try:
                state = store.idle_exchange_inline(*self._idle_args(incoming, token), now)
            except Exception:
                return defer.fail()
            if state is None:
                return self.db.run(self.exchange_thd, incoming, now)
            if state is not BUSY:
                return defer.succeed(self._idle_reply(state, token))
        return self.db.runner(self._idle_or_full, incoming, now)

    @staticmethod
    def _idle_args(inc: Incoming, token: bytes) -> tuple:
        req = inc.request
        return (
            hash_secret(inc.secure_id),
            None if inc.token is None else hash_secret(inc.token),
            hash_secret(token),
            req.next_expected_sequence,
            req.client_api.decode("ascii", "replace")[:16] if req.client_api else None,
        )

    def _idle_reply(self, state, token: bytes) -> dict:
        # Nothing received: the client's next number is what we expect, or a gap
        # (it is ahead) that we answer with what we expect, as the full path does.
        return self._wire(Reply(next_expected=state.client_sequence, token=token,
                                client_types_hash=state.client_accepted_types_hash))

    def _idle_or_full(self, inc: Incoming, now: dt.datetime) -> dict:
        """The idle exchange in one short transaction of two statements; anything
        else (or any doubt) falls back to the full exchange. In the database thread."""
        token = secrets.token_urlsafe(TOKEN_BYTES).encode("ascii")
        state = self.db.exchange.idle_exchange_sync(*self._idle_args(inc, token), now)
        if state is None:
            return self.db.run_sync(self.exchange_thd, inc, now)
        return self._idle_reply(state, token)

    def exchange_thd(self, conn, incoming: Incoming, now: dt.datetime) -> dict:
        if incoming.secure_id is None:
            reply = self._unregistered_thd(conn, incoming, now)
        else:
            reply = self._registered_thd(conn, incoming, now)
        return self._wire(reply)

    def _wire(self, reply: Reply) -> dict:
        return px.ExchangeResponse(
            server_api=px.SERVER_API,
            server_uuid=self.server_uuid,
            messages=reply.messages,
            next_expected_sequence=reply.next_expected,
            next_exchange_token=reply.token,
            client_accepted_types_hash=reply.client_types_hash,
        ).to_wire()

    # --- registration --------------------------------------------------------------

    def _unregistered_thd(self, conn, inc: Incoming, now: dt.datetime) -> Reply:
        req = inc.request
        register = next((m for m in inc.messages if m["type"] == "register"), None)
        if register is None:
            # No hash of the client's types here: it must send them again with
            # its register message, so the new computer knows them.
            if req.accepted_types_digest != _UNREGISTERED_DIGEST:
                return Reply(messages=[pm.accepted_types(UNREGISTERED_TYPES)])
            return Reply()
        cfg = self.config
        if register["account_name"] != cfg.account_name:
            self.log.warn("registration refused: unknown account {account!r} (title {title!r})",
                          account=register["account_name"], title=register["computer_title"])
            return Reply(messages=[pm.registration(pm.REGISTRATION_UNKNOWN_ACCOUNT)])
        key = cfg.registration_key
        password = register["registration_password"] or ""
        accepted = key is None or hmac.compare_digest(password.encode(), key.encode())
        if not accepted and cfg.refuse_pending:
            self.log.warn("registration refused: wrong or missing registration key (title {title!r})",
                          title=register["computer_title"])
            return Reply(messages=[pm.registration(pm.REGISTRATION_UNKNOWN_ACCOUNT)])
        clone_of_id = None
        if register["clone_secure_id"]:
            original = self.db.computers.get_by_secure_id_thd(conn, register["clone_secure_id"])
            clone_of_id = original.id if original is not None else None
        secure_id = secrets.token_urlsafe(SECURE_ID_BYTES).encode("ascii")
        computer = self.db.computers.create_thd(conn, NewComputer(
            title=register["computer_title"],
            hostname=register["hostname"],
            account_name=register["account_name"],
            secure_id=secure_id,
            accepted=accepted,
            tags=register["tags"],
            access_group=register["access_group"],
            vm_info=register["vm_info"],
            container_info=register["container_info"],
            machine_id=register["machine_id"],
            ubuntu_pro_info=register["ubuntu_pro_info"],
            clone_of_id=clone_of_id,
        ), now)
        self.log.info("computer {id} registered ({status}): {title!r}{clone}", id=computer.id,
                      status=computer.status, title=computer.title,
                      clone=f", a clone of computer {clone_of_id}" if clone_of_id else "")
        token = secrets.token_urlsafe(TOKEN_BYTES).encode("ascii")
        values: dict[str, Any] = {"exchange_token_hash": hash_secret(token), "last_seen": now,
                                  "client_api": (req.client_api or b"").decode("ascii", "replace")[:16] or None}
        reply = Reply(token=token)
        if req.client_accepted_types is not None:
            listed = sorted(set(req.client_accepted_types))
            values["client_accepted_types"] = ";".join(listed)
            reply.client_types_hash = px.accepted_types_digest(listed)
            values["client_accepted_types_hash"] = reply.client_types_hash.hex()
        set_id = pm.set_id(secure_id, computer.id)
        if req.bare:
            # landscape-config reads only set-id and keeps no sequence numbers:
            # answer outside the outbox; the broker's first exchange starts at 0
            # with an empty accepted-types digest and gets the list then.
            self.db.exchange.save_thd(conn, computer.id, **values)
            reply.messages = [set_id]
            return reply
        values["client_sequence"] = req.sequence + len(req.messages)
        values["server_sequence"] = req.next_expected_sequence or 0
        self.db.exchange.save_thd(conn, computer.id, **values)
        queued = [set_id, pm.accepted_types(REGISTERED_TYPES), *self._intervals()]
        self.db.outbox.append_thd(conn, computer.id, queued, now)
        reply.messages = queued
        reply.next_expected = values["client_sequence"]
        return reply

    def _intervals(self) -> list[dict]:
        cfg = self.config
        given = {"exchange": cfg.exchange_interval, "urgent_exchange": cfg.urgent_exchange_interval,
                 "ping": cfg.ping_interval}
        if all(v is None for v in given.values()):
            return []
        # Never below 10 s: landscape-client's scheduler crashes on less.
        return [pm.set_intervals(**{k: max(int(v), pm.MIN_INTERVAL) for k, v in given.items() if v is not None})]

    # --- authenticated exchange ------------------------------------------------------

    def _registered_thd(self, conn, inc: Incoming, now: dt.datetime) -> Reply:
        req = inc.request
        state = self.db.exchange.load_thd(conn, hash_secret(inc.secure_id), now)
        if state is None:
            self.log.info("exchange with an unknown or revoked secure id: answered unknown-id")
            return Reply(messages=[pm.unknown_id()])
        if (inc.token is not None and state.exchange_token_hash is not None
                and not hmac.compare_digest(hash_secret(inc.token), state.exchange_token_hash)):
            self.log.warn("security: computer {id} ({title!r}) presented a wrong exchange token: "
                          "treated as a clone and answered unknown-id", id=state.id, title=state.title)
            return Reply(messages=[pm.unknown_id(clone_of=state.title)])

        cid = state.id
        values: dict[str, Any] = {"last_seen": now}
        reply = Reply()

        # 2. the client's messages
        client_sequence = state.client_sequence
        if not req.bare:
            plan = px.receive_client_messages(client_sequence, req.sequence, len(inc.messages))
            for message in inc.messages[plan.skip: plan.skip + plan.process]:
                self._client_message_thd(conn, state, message, now)
            if plan.gap:
                self.log.info("computer {id} sent messages from {seq}, expected {exp}: asked to resend",
                              id=cid, seq=req.sequence, exp=client_sequence)
            client_sequence = plan.next_expected
        if client_sequence != state.client_sequence:
            values["client_sequence"] = client_sequence
        reply.next_expected = client_sequence

        # the client's own types (what we may send it)
        client_types = state.client_accepted_types
        reply.client_types_hash = state.client_accepted_types_hash
        if req.client_accepted_types is not None:
            listed = tuple(sorted(set(req.client_accepted_types)))
            digest = px.accepted_types_digest(listed)
            if digest != state.client_accepted_types_hash:
                values["client_accepted_types"] = ";".join(listed)
                values["client_accepted_types_hash"] = digest.hex()
            client_types, reply.client_types_hash = listed, digest
        if req.client_api:
            client_api = req.client_api.decode("ascii", "replace")[:16]
            if client_api != state.client_api:
                values["client_api"] = client_api

        # 3. acknowledge, and what is kept to resend
        pending: list[dict] = []
        if not req.bare:
            pending = self._plan_outbox_thd(conn, state, req.next_expected_sequence, now)

        # 4. and 5. new messages
        new: list[dict] = []
        new_ids: list[int | None] = []
        if state.accepted and state.has_work:
            for message, activity_id in self._deliver_thd(conn, state, client_types, now):
                new.append(message)
                new_ids.append(activity_id)
        if (not req.bare and req.accepted_types_digest != _REGISTERED_DIGEST
                and not any(m["type"] == "accepted-types" for m in pending)):
            for message in (pm.accepted_types(REGISTERED_TYPES), *self._intervals()):
                new.append(message)
                new_ids.append(None)
        if new:
            self.db.outbox.append_thd(conn, cid, new, now, new_ids)
        reply.messages = pending + new if not req.bare else []

        # 6. bookkeeping, one UPDATE
        reply.token = secrets.token_urlsafe(TOKEN_BYTES).encode("ascii")
        values["exchange_token_hash"] = hash_secret(reply.token)
        self.db.exchange.save_thd(conn, cid, **values)
        return reply

    def _client_message_thd(self, conn, state, message: dict, now: dt.datetime) -> None:
        mtype = message["type"]
        actor = f"computer {state.id}"
        if mtype == "operation-result":
            outcome, _ = self.db.activities.apply_result_thd(
                conn, computer_id=state.id, operation_id=message["operation-id"], status=message["status"],
                result_code=message["result-code"], result_text=message["result-text"], now=now, actor=actor,
            )
            if outcome == "not-yours":
                self.log.warn("security: computer {id} sent a result for operation {op}, which is not one of "
                              "its activities: ignored", id=state.id, op=message["operation-id"])
        elif mtype == "resynchronize":
            op = message["operation-id"]
            if op is not None:  # the agent's answer to our resynchronize
                a = conn.execute(
                    _activity_state_query(op, state.id)
                ).first()
                if a is not None and a.type == RESYNCHRONIZE_ACTIVITY and a.state == states.IN_PROGRESS:
                    self.db.activities.apply_result_thd(
                        conn, computer_id=state.id, operation_id=op, status=codes.SUCCEEDED, result_code=None,
                        result_text="the agent resynchronized", now=now, actor=actor)
        elif mtype == "register":
            self.log.info("computer {id} sent register while registered: ignored", id=state.id)
        # Anything else the server does not accept; the agent holds such types.

    def _plan_outbox_thd(self, conn, state, client_next_expected: int | None, now: dt.datetime) -> list[dict]:
        """Forget acknowledged messages, renumber on disagreement; the kept messages
        from the agent's count on, to resend."""
        next_to_assign = state.server_sequence
        oldest = state.oldest_kept if state.oldest_kept is not None else next_to_assign
        n = client_next_expected if client_next_expected is not None else oldest
        plan = px.server_messages_to_send(n, oldest, next_to_assign)
        if state.oldest_kept is not None and plan.delete_before > state.oldest_kept:
            self.db.outbox.delete_before_thd(conn, state.id, plan.delete_before)
        if plan.resynchronize:
            self.log.warn("computer {id} counts {n} server messages, the server holds {lo}..{hi}: "
                          "{reason}; renumbering and resynchronizing", id=state.id, n=n, lo=oldest,
                          hi=next_to_assign, reason=plan.reason)
            self.db.outbox.renumber_thd(conn, state.id, plan.renumber_by)
        if plan.send_to > plan.send_from:
            kept = self.db.outbox.messages_thd(conn, state.id, plan.send_from + plan.renumber_by)
            pending = [m.message for m in kept]
        else:
            pending = []
        if plan.resynchronize:
            resync = self._resynchronize_thd(conn, state.id, now)
            self.db.outbox.append_thd(conn, state.id, [resync.message], now, [resync.id])
            pending.append(resync.message)
        return pending

    @dataclass(frozen=True)
    class _Resync:
        id: int
        message: dict

    def _resynchronize_thd(self, conn, computer_id: int, now: dt.datetime) -> "_Resync":
        acts = self.db.activities
        a = acts.create_thd(conn, NewActivity(
            kind=states.CLIENT, type=RESYNCHRONIZE_ACTIVITY, parameters={}, creator=ACTOR,
            summary="resynchronize the agent's state", computer_ids=[computer_id],
        ), now)
        acts.transition_thd(conn, a.id, a.state, states.IN_PROGRESS, actor=ACTOR, now=now,
                            reason="sequence numbers disagreed", values={
                                "answer_deadline": now + dt.timedelta(seconds=self.config.no_answer_deadline)})
        return self._Resync(a.id, pm.resynchronize(a.id))

    # --- delivery --------------------------------------------------------------------

    def _deliver_thd(self, conn, state, client_types, now: dt.datetime) -> list[tuple[dict, int]]:
        """Move every deliverable activity to in-progress; their messages.

        A constant number of statements however many there are: one locked read
        (``deliverable_thd``) and one bulk compare-and-set
        (``ActivitiesConnector.transition_many_thd``).

        A type the agent does not list in ``client-accepted-types`` stays where it
        is (a landscape-client without the ScriptExecution plugin never gets
        scripts); the scheduler expires it in the end. A type no plugin declares
        any more is left alone as well, with a log line.
        """
        out: list[tuple[dict, int]] = []
        moves: list[tuple[Activity, dict]] = []
        unbuildable: list[tuple[Activity, dict]] = []
        listed = set(client_types)
        for a in self.db.exchange.deliverable_thd(conn, state.id, now):
            atype = self.activity_types.get(a.type)
            if atype is None or atype.kind != states.CLIENT:
                self.log.warn("activity {id}: type {type!r} is not a known client type: not delivered",
                              id=a.id, type=a.type)
                continue
            if atype.agent_message_type not in listed:
                continue
            delivery = Delivery(activity=a, computer_id=state.id, account_name=state.account_name,
                                env=self.landscape_env(a, state))
            try:
                message = atype.to_message(delivery)
                bpickle.dumps(message)
            except Exception as e:
                # Stored parameters the type cannot turn into a message: the work
                # can never go out; end it rather than retry on every exchange.
                self.log.error("activity {id}: cannot build its message: {e}", id=a.id, e=e)
                unbuildable.append((a, {"result_text": f"The server could not build the message: {e}"}))
                continue
            deadline = now + dt.timedelta(seconds=self.answer_seconds(atype, a))
            moves.append((a, {"answer_deadline": deadline}))
            out.append((message, a.id))
        self.db.activities.transition_many_thd(
            conn, moves, states.IN_PROGRESS, actor=ACTOR, now=now, reason=f"delivered to computer {state.id}")
        self.db.activities.transition_many_thd(
            conn, unbuildable, states.CANCELED, actor=ACTOR, now=now, reason="its message could not be built")
        return out

    def answer_seconds(self, atype, activity: Activity) -> float:
        """How long after delivery the agent has to answer."""
        if atype.answer_deadline is not None:
            return float(atype.answer_deadline)
        limit = activity.parameters.get("time_limit") if isinstance(activity.parameters, dict) else None
        return float(self.config.no_answer_deadline) + (float(limit) if isinstance(limit, (int, float)) else 0.0)

    def landscape_env(self, a: Activity, state) -> dict[str, str]:
        """The variables Landscape sends with a script."""
        return {
            "LANDSCAPE_ACCOUNT": state.account_name,
            "LANDSCAPE_COMPUTER_ID": str(state.id),
            "LANDSCAPE_ACTIVITY_ID": str(a.id),
            "LANDSCAPE_ACTIVITY_CREATOR_ID": a.creator,
            "LANDSCAPE_ACTIVITY_CREATION_TIME": a.created_at.astimezone(dt.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"),
        }


def _maybe_idle(inc: Incoming) -> bool:
    """A request that needs nothing but the idle path if the computer is up to date."""
    req = inc.request
    return (inc.secure_id is not None and not inc.messages and not req.bare
            and req.client_accepted_types is None and req.accepted_types_digest == _REGISTERED_DIGEST
            and req.next_expected_sequence is not None)


def _activity_state_query(activity_id: int, computer_id: int):
    import sqlalchemy as sa

    from server.db.tables import activities

    return sa.select(activities.c.type, activities.c.state).where(
        activities.c.id == activity_id, activities.c.computer_id == computer_id)
