"""A scripted landscape-client broker for the message-system tests.

It plays the observed behaviour of spec/message-system.md, using ``protocol/``
for everything on the wire: an empty first exchange; the register message once
``register`` is accepted (the queue wiped first); ``set-id``/``unknown-id``
handling; the token cleared before every attempt; ``client-accepted-types``
sent while the server's hash differs (kept in memory only); the outgoing queue
with S/P and ``protocol.exchange.client_ack``; a count of processed server
messages as ``next-expected-sequence``, with no deduplication.

Requests go through ``treq.testing.StubTreq`` on the real resources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import bpickle
from protocol import exchange as px
from protocol import messages as pm


def fired(d):
    box: list = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def post(treq, url: str, body: bytes, headers: dict[bytes, bytes] | None = None) -> tuple[int, bytes]:
    d = treq.post(url, data=body, headers=headers or {})
    treq.flush()
    response = fired(d)
    content = fired(response.content())
    return response.code, content


def landscape_config_register(treq, account="standalone", title="cfgbox", password=None, url="http://server/message-system"):
    """landscape-config's bare registration; returns the decoded reply."""
    message = {
        "type": "register", "account_name": account, "computer_title": title, "hostname": "cfg.example",
        "container_info": "", "vm_info": b"", "machine_id": "5923867a-0000", "tags": "web, prod",
        "ubuntu_pro_info": "{}", "access_group": "mygroup",
    }
    if password is not None:
        message["registration_password"] = password
    code, body = post(treq, url, bpickle.dumps({"messages": [message]}), {b"X-Message-API": b"3.3"})
    assert code == 200, body
    return bpickle.loads(body)


@dataclass
class ScriptedClient:
    treq: object
    title: str = "box"
    account: str = "standalone"
    password: str | None = None
    handles: tuple[str, ...] = ("execute-script",)  # manager plugin types, beyond the broker's own
    url: str = "http://server/message-system"
    clone_of_secure_id: str | None = None

    secure_id: bytes | None = None
    insecure_id: int | None = None
    token: bytes | None = None
    server_api: bytes = px.DEFAULT_SERVER_API
    accepted: list[str] = field(default_factory=list)
    client_types_hash: bytes | None = None
    server_sequence: int = 0  # server messages processed (next-expected-sequence)
    sequence: int = 0  # S
    pending_offset: int = 0  # P
    store: list[dict] = field(default_factory=list)  # retained + pending outgoing messages
    received: list[dict] = field(default_factory=list)  # every server message processed, in order
    requests: list[dict] = field(default_factory=list)
    registration_failed: str | None = None

    @property
    def client_types(self) -> list[str]:
        broker = ["accepted-types", "registration", "resynchronize", "set-id", "set-intervals", "unknown-id"]
        return sorted(set(broker) | set(self.handles))

    def send(self, message: dict) -> None:
        self.store.append({**message, "api": self.server_api, "timestamp": 1700000000})

    def _pending(self) -> list[dict]:
        out = []
        for m in self.store[self.pending_offset:]:
            if m["type"] not in self.accepted:
                break  # held; landscape stops the batch at a held message only by skipping, kept simple
            out.append(m)
            if len(out) == px.MAX_MESSAGES_PER_EXCHANGE:
                break
        return out

    def payload(self) -> dict:
        if self.secure_id is None and "register" in self.accepted and self.registration_failed is None:
            self.store, self.sequence, self.pending_offset = [], self.sequence, 0
            reg = pm.register(self.account, self.title, "host.example", registration_password=self.password,
                              tags="web, prod", vm_info=b"kvm", access_group="lab",
                              clone_secure_id=self.clone_of_secure_id, api=self.server_api,
                              timestamp=1700000000)
            self.store.append(reg)
        messages = self._pending()
        req = px.ExchangeRequest(
            server_api=messages[0]["api"] if messages else self.server_api,
            client_api=px.CLIENT_API,
            sequence=self.sequence,
            accepted_types_digest=px.accepted_types_digest(self.accepted),
            messages=messages,
            total_messages=len(self.store) - self.pending_offset,
            next_expected_sequence=self.server_sequence,
        )
        wire = req.to_wire()
        if px.accepted_types_digest(self.client_types) != self.client_types_hash:
            wire["client-accepted-types"] = self.client_types
        return wire

    def headers(self, token: bytes | None) -> dict[bytes, bytes]:
        h = {b"X-Message-API": self.server_api, b"Content-Type": b"application/octet-stream"}
        if self.secure_id is not None:
            h[b"X-Computer-ID"] = self.secure_id
        if token is not None:
            h[b"X-Exchange-Token"] = token
        return h

    def exchange(self, *, lose_reply: bool = False, token: bytes | None | str = "held") -> dict | None:
        """One exchange; ``lose_reply``: the server answers but the client never sees it."""
        payload = self.payload()
        self.requests.append(payload)
        use_token = self.token if token == "held" else token
        self.token = None  # cleared before every attempt, as landscape does
        code, body = post(self.treq, self.url, bpickle.dumps(payload), self.headers(use_token))
        assert code == 200, (code, body)
        reply = bpickle.loads(body)
        if lose_reply:
            return None
        self.handle(reply, payload)
        return reply

    def handle(self, reply: dict, payload: dict) -> None:
        resp = px.ExchangeResponse.from_wire(reply)
        if resp.server_api >= self.server_api:
            self.server_api = min(resp.server_api, b"3.3")
        sent = len(payload["messages"])
        n = px.expected_after_reply(resp.next_expected_sequence, payload["sequence"], sent)
        ack = px.client_ack(n, self.sequence, self.pending_offset, len(self.store) - self.pending_offset)
        if ack.delete_acknowledged:
            self.store = self.store[self.pending_offset:]
        self.sequence, self.pending_offset = ack.sequence, ack.pending_offset
        if ack.action == "resync":
            self.send({"type": "resynchronize"})
        self.token = resp.next_exchange_token
        if resp.client_accepted_types_hash is not None:
            self.client_types_hash = resp.client_accepted_types_hash
        for raw in resp.messages:
            message = pm.validate_server_message(raw)
            self.received.append(message)
            self.server_sequence += 1
            mtype = message["type"]
            if mtype == "accepted-types":
                self.accepted = sorted(message["types"])
            elif mtype == "set-id":
                self.secure_id, self.insecure_id = message["id"], message["insecure-id"]
                self.store, self.pending_offset = [], 0
            elif mtype == "unknown-id":
                if message["clone-of"] is not None:
                    self.clone_of_secure_id = self.secure_id.decode()
                self.secure_id = self.insecure_id = None
            elif mtype == "registration":
                self.registration_failed = message["info"]
            elif mtype == "resynchronize":
                self.send({"type": "resynchronize", "operation-id": message["operation-id"]})

    def operations(self, mtype: str = "execute-script") -> list[dict]:
        return [m for m in self.received if m["type"] == mtype]

    def register(self) -> None:
        """Exchange until registered (empty first exchange, then register)."""
        for _ in range(3):
            if self.secure_id is not None:
                return
            self.exchange()
        assert self.secure_id is not None, self.received
