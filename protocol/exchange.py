"""The message exchange: payloads both ways and the sequence rules.

An agent POSTs a bpickled :class:`ExchangeRequest` to the server's
``/message-system`` URL and gets a bpickled :class:`ExchangeResponse` back.
Both directions carry *numbered* messages, but the numbers never travel with
the messages themselves:

Client → server
    The request's ``sequence`` is the number of its first message; the next ones
    follow. The server answers with ``next-expected-sequence``: how many client
    messages it has taken so far. The client keeps the last acknowledged batch
    so that it can resend it if the server asks again (:func:`client_ack`); the
    server drops what it has already seen (:func:`receive_client_messages`).

Server → client
    The server sends no numbers. The client counts the messages it has processed
    and reports the count as the request's ``next-expected-sequence``; it does
    not deduplicate. The server keeps every message until that count passes it,
    and starts every reply at that count (:func:`server_messages_to_send`).

Capabilities
    The request's ``accepted-types`` is :func:`accepted_types_digest` of the
    types the server last told the client it accepts; the server resends its
    list (``accepted-types`` message) whenever the digest differs. The other
    way, the client sends ``client-accepted-types`` (the types it handles) until
    the server echoes the digest as ``client-accepted-types-hash``.

``landscape-config`` registers with a *bare* request, ``{"messages": [register]}``,
with no sequence numbers at all; :meth:`ExchangeRequest.from_wire` accepts it
and leaves the sequence fields ``None``.

Everything here is pure: no I/O, no clock, no storage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable

__all__ = [
    "CLIENT_API",
    "DEFAULT_SERVER_API",
    "MAX_MESSAGES_PER_EXCHANGE",
    "MAX_PAYLOAD_INT",
    "PING_MESSAGES_WAITING",
    "SERVER_API",
    "AckResult",
    "ExchangeRequest",
    "ExchangeResponse",
    "PayloadError",
    "ReceivePlan",
    "SendPlan",
    "accepted_types_digest",
    "client_ack",
    "expected_after_reply",
    "receive_client_messages",
    "server_messages_to_send",
]

#: The highest message API the server speaks (and the client will adopt).
SERVER_API = b"3.3"
#: The client's own API version, sent as ``client-api``.
CLIENT_API = b"3.8"
#: The API a fresh client assumes until a server announces a newer one.
DEFAULT_SERVER_API = b"3.2"
#: A client sends at most this many messages in one exchange.
MAX_MESSAGES_PER_EXCHANGE = 100
#: The ping reply meaning "messages are waiting: exchange now". Any other
#: reply means nothing is waiting.
PING_MESSAGES_WAITING = {"messages": True}
#: The largest sequence number or count a payload may carry: both sides store
#: them in 64-bit signed database columns.
MAX_PAYLOAD_INT = 2**63 - 1


class PayloadError(ValueError):
    """An exchange payload with a missing or mistyped key; ``key`` names it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"exchange payload key {key!r} {problem}")
        self.key = key


def accepted_types_digest(types: Iterable[str]) -> bytes:
    """The 16-byte md5 digest of a list of message types, as both sides compute it.

    ``md5(";".join(sorted(types)))``: the order of ``types`` does not matter,
    repeats do (as in landscape), so pass each type once.
    """
    return hashlib.md5(";".join(sorted(types)).encode("ascii")).digest()


# --- payloads ---------------------------------------------------------------------


def _get_int(obj: dict, key: str, *, required: bool) -> int | None:
    if key not in obj:
        if required:
            raise PayloadError(key, "is missing")
        return None
    value = obj[key]
    if type(value) is not int or value < 0:
        raise PayloadError(key, f"must be a non-negative int, not {_short(value)}")
    if value > MAX_PAYLOAD_INT:
        raise PayloadError(key, f"must be at most {MAX_PAYLOAD_INT} (a 64-bit int), not {_short(value)}")
    return value


def _short(value: object) -> str:
    # repr() of an int of thousands of digits raises (Python's int/str limit).
    if type(value) is int and value.bit_length() > 200:
        return f"an int of {value.bit_length()} bits"
    return f"{value!r:.60}"


def _get_bytes(obj: dict, key: str, *, required: bool) -> bytes | None:
    """bytes, or str (which landscape also accepts for API versions and uuids)."""
    if key not in obj:
        if required:
            raise PayloadError(key, "is missing")
        return None
    value = obj[key]
    if type(value) is bytes:
        return value
    if type(value) is str:
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            raise PayloadError(key, "must be ASCII") from None
    if value is None and not required:
        return None
    raise PayloadError(key, f"must be bytes, not {type(value).__name__}")


def _get_messages(obj: dict) -> list[dict]:
    if "messages" not in obj:
        raise PayloadError("messages", "is missing")
    messages = obj["messages"]
    if type(messages) is not list:
        raise PayloadError("messages", f"must be a list, not {type(messages).__name__}")
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise PayloadError("messages", f"item {i} must be a dict, not {type(message).__name__}")
    return messages


def _get_str_list(obj: dict, key: str) -> list[str] | None:
    if key not in obj or obj[key] is None:
        return None
    value = obj[key]
    if type(value) not in (list, tuple):
        raise PayloadError(key, f"must be a list of str, not {type(value).__name__}")
    out = []
    for item in value:
        if type(item) is bytes:
            try:
                item = item.decode("ascii")
            except UnicodeDecodeError:
                raise PayloadError(key, "items must be ASCII") from None
        if type(item) is not str:
            raise PayloadError(key, f"items must be str, not {type(item).__name__}")
        out.append(item)
    return out


def _require_dict(obj: object) -> dict:
    if type(obj) is not dict:
        raise PayloadError("(payload)", f"must be a dict, not {type(obj).__name__}")
    return obj


@dataclass
class ExchangeRequest:
    """What a client POSTs (client → server).

    ``sequence`` and ``next_expected_sequence`` are ``None`` only for
    ``landscape-config``'s bare ``{"messages": [...]}`` registration request.
    """

    server_api: bytes
    client_api: bytes | None
    sequence: int | None
    accepted_types_digest: bytes | None
    messages: list[dict]
    total_messages: int | None = None
    next_expected_sequence: int | None = None
    client_accepted_types: list[str] | None = None

    @property
    def bare(self) -> bool:
        """True for landscape-config's registration request without sequence numbers."""
        return self.sequence is None

    @classmethod
    def from_wire(cls, obj: object, *, message_api: bytes | None = None) -> ExchangeRequest:
        """Check and type a decoded request payload.

        ``message_api`` (the ``X-Message-API`` header) stands in for a missing
        ``server-api``, as in the bare form; without either it is
        :data:`DEFAULT_SERVER_API`. Messages are only checked to be dicts: validate
        each with :func:`protocol.messages.validate_client_message`.

        :raises PayloadError: naming the first bad key.
        """
        obj = _require_dict(obj)
        server_api = _get_bytes(obj, "server-api", required=False)
        if server_api is None:
            server_api = message_api if message_api is not None else DEFAULT_SERVER_API
        return cls(
            server_api=server_api,
            client_api=_get_bytes(obj, "client-api", required=False),
            sequence=_get_int(obj, "sequence", required=False),
            accepted_types_digest=_get_bytes(obj, "accepted-types", required=False),
            messages=_get_messages(obj),
            total_messages=_get_int(obj, "total-messages", required=False),
            next_expected_sequence=_get_int(obj, "next-expected-sequence", required=False),
            client_accepted_types=_get_str_list(obj, "client-accepted-types"),
        )

    def to_wire(self) -> dict:
        """The payload dict to bpickle; keys whose value is ``None`` are left out."""
        wire: dict = {"server-api": self.server_api, "messages": self.messages}
        for key, value in (
            ("client-api", self.client_api),
            ("sequence", self.sequence),
            ("accepted-types", self.accepted_types_digest),
            ("total-messages", self.total_messages),
            ("next-expected-sequence", self.next_expected_sequence),
            ("client-accepted-types", self.client_accepted_types),
        ):
            if value is not None:
                wire[key] = value
        return wire


@dataclass
class ExchangeResponse:
    """What the server answers (server → client).

    ``server-api``, ``server-uuid`` and ``messages`` are always sent: without
    them landscape-client fails the exchange silently. ``next-exchange-token``
    must be bytes (a str one breaks landscape-client's next exchange).
    """

    server_api: bytes
    server_uuid: bytes
    messages: list[dict] = field(default_factory=list)
    next_expected_sequence: int | None = None
    next_exchange_token: bytes | None = None
    client_accepted_types_hash: bytes | None = None

    def to_wire(self) -> dict:
        """The payload dict to bpickle, with every value of the type the client needs.

        :raises PayloadError: if a field has the wrong type (a str token, say).
        """
        for key, value, required in (
            ("server-api", self.server_api, True),
            ("server-uuid", self.server_uuid, True),
            ("next-exchange-token", self.next_exchange_token, False),
            ("client-accepted-types-hash", self.client_accepted_types_hash, False),
        ):
            if type(value) is not bytes and (required or value is not None):
                raise PayloadError(key, f"must be bytes, not {type(value).__name__}")
        wire: dict = {
            "server-api": self.server_api,
            "server-uuid": self.server_uuid,
            "messages": list(self.messages),
        }
        if self.next_expected_sequence is not None:
            wire["next-expected-sequence"] = self.next_expected_sequence
        if self.next_exchange_token is not None:
            wire["next-exchange-token"] = self.next_exchange_token
        if self.client_accepted_types_hash is not None:
            wire["client-accepted-types-hash"] = self.client_accepted_types_hash
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> ExchangeResponse:
        """Check and type a decoded response payload (str or bytes accepted where
        landscape accepts both). Validate each message with
        :func:`protocol.messages.validate_server_message`.

        :raises PayloadError: naming the first missing or bad key.
        """
        obj = _require_dict(obj)
        return cls(
            server_api=_get_bytes(obj, "server-api", required=True),  # type: ignore[arg-type]
            server_uuid=_get_bytes(obj, "server-uuid", required=True),  # type: ignore[arg-type]
            messages=_get_messages(obj),
            next_expected_sequence=_get_int(obj, "next-expected-sequence", required=False),
            next_exchange_token=_get_bytes(obj, "next-exchange-token", required=False),
            client_accepted_types_hash=_get_bytes(obj, "client-accepted-types-hash", required=False),
        )


# --- sequence rules: the server receiving client messages --------------------------


@dataclass(frozen=True)
class ReceivePlan:
    """What the server does with the messages of one request.

    Process ``messages[skip : skip + process]``, then acknowledge with
    ``next_expected`` (the reply's ``next-expected-sequence``). ``gap`` is
    True when the request starts beyond what the server expects: messages in
    between were lost, so nothing is taken and the client is asked to resend
    from ``next_expected`` (it rewinds, or resynchronizes if it no longer has them).
    """

    skip: int
    process: int
    next_expected: int
    gap: bool = False


def receive_client_messages(expected: int, sequence: int, count: int) -> ReceivePlan:
    """Which of a request's ``count`` messages, numbered from ``sequence``, the server takes.

    ``expected`` is the number of the next client message the server has not
    seen yet. The cases:

    - ``sequence == expected``: take them all (``next_expected = expected + count``).
    - ``sequence < expected`` (a resend after a lost reply): drop the overlap,
      the first ``expected - sequence`` messages, and take the rest.
    - ``sequence > expected``: a gap. Take nothing and keep ``expected``.
    """
    if sequence > expected:
        return ReceivePlan(skip=count, process=0, next_expected=expected, gap=True)
    skip = min(expected - sequence, count)
    process = count - skip
    return ReceivePlan(skip=skip, process=process, next_expected=expected + process)


# --- sequence rules: the server sending its messages -------------------------------


@dataclass(frozen=True)
class SendPlan:
    """Which stored server→client messages go in the reply, and what to forget.

    The server numbers its outgoing messages for one computer ``0, 1, 2, ...``
    and keeps those from ``oldest_kept`` to ``next_to_assign - 1``.

    - ``send_from`` .. ``send_to - 1``: the stored numbers to put in the reply,
      in order (a reply may carry fewer, taking a prefix).
    - ``delete_before``: stored messages numbered below it are acknowledged and
      may be deleted.
    - ``resynchronize``: the client's count is outside what the server holds
      (``reason`` is ``"ancient"`` or ``"too-high"``); the server must renumber
      and should queue a ``resynchronize`` message.
    - ``renumber_by``: add this to every kept message's number (and to
      ``next_to_assign``) so the server's numbers agree with the client's count
      again; 0 unless ``resynchronize``. ``send_from``/``send_to``/``delete_before``
      are in the numbering *before* this shift.
    """

    send_from: int
    send_to: int
    delete_before: int
    resynchronize: bool = False
    renumber_by: int = 0
    reason: str = "ok"


def server_messages_to_send(client_next_expected: int, oldest_kept: int, next_to_assign: int) -> SendPlan:
    """Plan a reply from the client's ``next-expected-sequence`` (N).

    - ``oldest_kept <= N <= next_to_assign`` (normal): everything below N was
      processed by the client, so delete it; send N onwards. When N is
      ``next_to_assign`` there is nothing to send.
    - ``N < oldest_kept`` ("ancient": the client lost state, e.g. restored an old
      file, and asks for messages it had acknowledged and the server deleted):
      the server cannot resend those. Resend everything still kept, renumbered
      so the first is N, and resynchronize.
    - ``N > next_to_assign`` ("too high": the client counts messages this
      server never sent, e.g. the server's database was restored): whether the
      kept messages arrived is unknown, so resend them all, renumbered from N,
      and resynchronize. (Operation ids make repeated operations harmless for
      Ridgeline's agent, which never runs one twice.)
    """
    if oldest_kept > next_to_assign:
        raise ValueError(f"oldest_kept {oldest_kept} is above next_to_assign {next_to_assign}")
    if oldest_kept <= client_next_expected <= next_to_assign:
        return SendPlan(send_from=client_next_expected, send_to=next_to_assign, delete_before=client_next_expected)
    reason = "ancient" if client_next_expected < oldest_kept else "too-high"
    return SendPlan(
        send_from=oldest_kept,
        send_to=next_to_assign,
        delete_before=oldest_kept,
        resynchronize=True,
        renumber_by=client_next_expected - oldest_kept,
        reason=reason,
    )


# --- sequence rules: the client receiving the server's acknowledgement -------------


@dataclass(frozen=True)
class AckResult:
    """What the client does with the server's ``next-expected-sequence``.

    - ``action``: ``"ack"``, ``"rewind"`` or ``"resync"`` (on ``"resync"`` the
      client queues ``{"type": "resynchronize"}`` and re-sends its full state).
    - ``sequence`` / ``pending_offset``: the new S and P to store.
    - ``delete_acknowledged``: delete the retained messages *before the old*
      pending offset (the batch acknowledged the time before) before applying
      the new offset.
    """

    action: str
    sequence: int
    pending_offset: int
    delete_acknowledged: bool = False


def client_ack(next_expected: int, sequence: int, pending_offset: int, pending_count: int) -> AckResult:
    """landscape-client's rule (spec §3.3) for an acknowledgement N.

    The client's outgoing queue is a list of messages; those before position
    ``pending_offset`` (P) were sent and acknowledged but are kept for resends;
    the message at P is numbered ``sequence`` (S) and ``pending_count`` (C)
    messages from P on are unacknowledged. Four cases, checked in this order:

    1. ``N - S > C``, too high: the server expects more than the client ever
       had. Delete the retained messages, P := 0, S := N, resync.
    2. ``N > S``, normal ack: delete the previously retained batch, keep the
       just-acknowledged one: P := N - S, S := N.
    3. ``N < S - P``, ancient: the server wants messages no longer kept.
       P := 0, S := N, resync (what is left is resent numbered from N).
    4. ``S - P <= N <= S``, rewind: P := P + N - S, S := N, and resend from N.
       ``N == S`` is a rewind by zero: nothing was consumed.
    """
    n, s, p = next_expected, sequence, pending_offset
    if n - s > pending_count:
        return AckResult("resync", sequence=n, pending_offset=0, delete_acknowledged=True)
    if n > s:
        return AckResult("ack", sequence=n, pending_offset=n - s, delete_acknowledged=True)
    if n < s - p:
        return AckResult("resync", sequence=n, pending_offset=0)
    return AckResult("rewind", sequence=n, pending_offset=p + n - s)


def expected_after_reply(next_expected: int | None, sequence: int, sent: int) -> int:
    """The server's acknowledgement, defaulting as landscape-client does.

    A reply without ``next-expected-sequence`` means the whole batch
    (``sent`` messages numbered from ``sequence``) arrived.
    """
    return sequence + sent if next_expected is None else next_expected
