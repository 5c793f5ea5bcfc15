"""A small message-system server for agent tests and the footprint benchmark.

It speaks the protocol through ``protocol/`` (bpickle, payload classes and the
sequence rules), keeps per-computer state in memory, and has knobs to make it
misbehave: fail the next exchanges with a status (and Retry-After), lose a reply
after processing the request, answer a registration with a failure.
"""

from __future__ import annotations

import uuid as _uuid
from dataclasses import dataclass, field

from twisted.web.resource import Resource

from protocol import bpickle
from protocol import exchange as px

REGISTERED_TYPES = ["operation-result", "resynchronize", "test-data"]
UNREGISTERED_TYPES = ["register", "resynchronize"]


@dataclass
class Computer:
    secure_id: bytes
    insecure_id: int
    title: str
    register: dict
    token: bytes | None = None
    expected: int = 0  # next client message number the server expects
    oldest_kept: int = 0
    outbox: list = field(default_factory=list)  # messages numbered oldest_kept..
    received: list = field(default_factory=list)
    accepted_types: list = field(default_factory=lambda: list(REGISTERED_TYPES))
    client_types: list | None = None
    sent_upto: int = 0  # messages below this number went out in some reply

    @property
    def next_to_assign(self) -> int:
        return self.oldest_kept + len(self.outbox)


class FakeServer:
    def __init__(self, uuid: bytes = b"fake-server-uuid") -> None:
        self.uuid = uuid
        self.computers: dict[bytes, Computer] = {}
        self.requests: list[dict] = []  # {"headers": {...}, "payload": {...}}
        self.pings: list[dict] = []
        self.fail_next: list[tuple[int, dict]] = []  # (status, headers)
        self.lose_next_reply = 0
        self.registration_reply: dict | None = None  # e.g. {"type": "registration", "info": ...}
        self.next_insecure_id = 1
        self.ping_answer: bool | None = None  # None: True when messages wait

    # --- test helpers ------------------------------------------------------------------

    def resource(self) -> Resource:
        root = Resource()
        root.putChild(b"message-system", _Exchange(self))
        root.putChild(b"ping", _Ping(self))
        return root

    def only_computer(self) -> Computer:
        assert len(self.computers) == 1, self.computers
        return next(iter(self.computers.values()))

    def send(self, message: dict, computer: Computer | None = None) -> None:
        (computer or self.only_computer()).outbox.append(message)

    def received_messages(self, type_: str | None = None) -> list[dict]:
        out = []
        for c in self.computers.values():
            out.extend(m for m in c.received if type_ is None or m["type"] == type_)
        return out

    # --- the exchange ----------------------------------------------------------------

    def handle(self, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        payload = bpickle.loads(body)
        self.requests.append({"headers": headers, "payload": payload})
        if self.fail_next:
            status, extra = self.fail_next.pop(0)
            return status, extra, b"failing on purpose"
        request = px.ExchangeRequest.from_wire(payload)
        secure_id = headers.get(b"x-computer-id")
        computer = self.computers.get(secure_id) if secure_id else None
        messages: list[dict] = []
        if secure_id and computer is None:
            messages = [{"type": "unknown-id"}]
            return self._reply(messages, None, request)
        token = headers.get(b"x-exchange-token")
        if computer is not None and token is not None and token != computer.token:
            return self._reply([{"type": "unknown-id", "clone-of": computer.title}], None, request)
        if computer is None:
            return self._anonymous(request)
        plan = px.receive_client_messages(computer.expected, request.sequence, len(request.messages))
        computer.received.extend(request.messages[plan.skip : plan.skip + plan.process])
        computer.expected = plan.next_expected
        if request.client_accepted_types is not None:
            computer.client_types = request.client_accepted_types
        send = px.server_messages_to_send(request.next_expected_sequence, computer.oldest_kept, computer.next_to_assign)
        drop = send.delete_before - computer.oldest_kept
        del computer.outbox[:drop]
        computer.oldest_kept = send.delete_before + send.renumber_by
        if request.accepted_types_digest != px.accepted_types_digest(computer.accepted_types):
            computer.outbox.append({"type": "accepted-types", "types": list(computer.accepted_types)})
        computer.token = _uuid.uuid4().hex.encode()
        computer.sent_upto = computer.next_to_assign
        return self._reply(list(computer.outbox), computer, request)

    def _anonymous(self, request: px.ExchangeRequest) -> tuple[int, dict, bytes]:
        registers = [m for m in request.messages if m.get("type") == "register"]
        if registers:
            if self.registration_reply is not None:
                return self._reply([dict(self.registration_reply)], None, request)
            reg = registers[-1]
            secure_id = f"secure-{_uuid.uuid4().hex}".encode()
            computer = Computer(
                secure_id=secure_id,
                insecure_id=self.next_insecure_id,
                title=reg["computer_title"],
                register=reg,
                oldest_kept=request.next_expected_sequence,
                expected=request.sequence + len(request.messages),
                client_types=request.client_accepted_types,
            )
            self.next_insecure_id += 1
            self.computers[secure_id] = computer
            computer.outbox.append({"type": "set-id", "id": secure_id, "insecure-id": computer.insecure_id})
            computer.outbox.append({"type": "accepted-types", "types": list(computer.accepted_types)})
            computer.token = _uuid.uuid4().hex.encode()
            return self._reply(list(computer.outbox), computer, request)
        messages = []
        if request.accepted_types_digest != px.accepted_types_digest(UNREGISTERED_TYPES):
            messages.append({"type": "accepted-types", "types": list(UNREGISTERED_TYPES)})
        return self._reply(messages, None, request)

    def _reply(self, messages, computer, request) -> tuple[int, dict, bytes]:
        response = px.ExchangeResponse(
            server_api=px.SERVER_API,
            server_uuid=self.uuid,
            messages=messages,
            next_expected_sequence=computer.expected if computer else (request.sequence or 0) + len(request.messages),
            next_exchange_token=computer.token if computer else None,
            client_accepted_types_hash=(
                px.accepted_types_digest(computer.client_types) if computer and computer.client_types else None
            ),
        )
        if self.lose_next_reply:
            self.lose_next_reply -= 1
            return 502, {}, b"reply lost"
        return 200, {}, bpickle.dumps(response.to_wire())

    def ping(self, form: dict) -> bytes:
        self.pings.append(form)
        if self.ping_answer is not None:
            return bpickle.dumps({"messages": self.ping_answer})
        iid = int(form.get(b"insecure_id", [b"0"])[0])
        waiting = any(c.insecure_id == iid and c.next_to_assign > c.sent_upto for c in self.computers.values())
        return bpickle.dumps({"messages": waiting})


class _Exchange(Resource):
    isLeaf = True

    def __init__(self, server: FakeServer) -> None:
        super().__init__()
        self.fake = server

    def render_POST(self, request):
        headers = {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()}
        status, extra, body = self.fake.handle(headers, request.content.read())
        request.setResponseCode(status)
        for k, v in extra.items():
            request.setHeader(k, v)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return body


class _Ping(Resource):
    isLeaf = True

    def __init__(self, server: FakeServer) -> None:
        super().__init__()
        self.fake = server

    def render_POST(self, request):
        return self.fake.ping(request.args)
