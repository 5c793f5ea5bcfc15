"""The HTTP side of the message system: ``/message-system``, ``/ping``,
``/attachment/<id>``.

Errors are short text (``text/plain``) with the status landscape-client logs;
a reply is never a traceback. Every decision is in ``exchange.py`` and
``server.db.exchangestate``; these resources only translate HTTP.
"""

from __future__ import annotations

import datetime as dt

from twisted.web import server
from twisted.web.resource import Resource

from protocol import bpickle
from server.db.computers import hash_secret
from server.messagesystem.exchange import BadRequest, MessageSystem, parse_request

OCTET_STREAM = b"application/octet-stream"
# Longest X-Computer-ID / X-Exchange-Token we look at; ours are 43 and 32 characters.
MAX_ID_LENGTH = 512


def _text(request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


def _body(request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` (the site refuses
    those already; this keeps the resource safe when mounted elsewhere)."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(limit + 1)
    return None if len(data) > limit else data


class _AgentResource(Resource):
    """What the message system's resources share: answering once a Deferred fires."""

    isLeaf = True

    def __init__(self, messagesystem: MessageSystem):
        super().__init__()
        self.ms = messagesystem
        self.log = messagesystem.log

    def answer_later(self, request, d, write, what: str):
        """Call ``write(result)`` when ``d`` fires, then finish the request; a
        failure is logged and answered 500 saying the server could not ``what``.
        Nothing is written to a client that has gone away."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def done(result) -> None:
            if not gone:
                write(result)
                request.finish()

        def failed(f) -> None:
            self.log.failure("could not {what}", f, what=what)
            if not gone:
                request.write(_text(request, 500, f"the server could not {what}"))
                request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class ExchangeResource(_AgentResource):
    """``POST /message-system``: bpickle in, bpickle out."""

    def render_POST(self, request):
        limit = self.ms.config.max_body_size
        body = _body(request, limit)
        if body is None:
            self.log.warn("exchange refused: body over {limit} bytes", limit=limit)
            return _text(request, 413, f"request body exceeds {limit} bytes")
        secure_id = request.getHeader(b"x-computer-id")
        token = request.getHeader(b"x-exchange-token")
        try:
            if (secure_id and len(secure_id) > MAX_ID_LENGTH) or (token and len(token) > MAX_ID_LENGTH):
                raise BadRequest("X-Computer-ID or X-Exchange-Token is too long")
            incoming = parse_request(
                body,
                secure_id=secure_id or None,
                token=token or None,
                message_api=request.getHeader(b"x-message-api") or None,
                max_size=limit,
            )
        except BadRequest as e:
            self.log.warn("exchange refused (400) from {peer}: {reason}", peer=_peer(request), reason=str(e))
            return _text(request, 400, f"bad exchange request: {e}")

        def answer(payload: dict) -> None:
            data = bpickle.dumps(payload)
            request.setHeader(b"content-type", OCTET_STREAM)
            request.setHeader(b"content-length", b"%d" % len(data))
            request.write(data)

        return self.answer_later(request, self.ms.exchange(incoming), answer, "complete the exchange")

    def render_GET(self, request):
        request.setHeader(b"allow", b"POST")
        return _text(request, 405, "use POST")


class PingResource(_AgentResource):
    """``POST /ping`` with form field ``insecure_id``: ``{"messages": True}`` only
    when the computer has something waiting now. One indexed query."""

    def render_POST(self, request):
        values = (request.args or {}).get(b"insecure_id") or []
        try:
            if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 18:
                raise ValueError
            insecure_id = int(values[0])
        except ValueError:
            return _text(request, 400, "bad ping: expected one form field insecure_id=<number>")
        now = dt.datetime.fromtimestamp(self.ms.context.reactor.seconds(), tz=dt.timezone.utc)
        def answer(waiting: bool) -> None:
            request.setHeader(b"content-type", OCTET_STREAM)
            request.write(bpickle.dumps({"messages": bool(waiting)}))

        return self.answer_later(request, self.ms.db.exchange.ping(insecure_id, now), answer, "answer the ping")

    def render_GET(self, request):
        request.setHeader(b"allow", b"POST")
        return _text(request, 405, "use POST")


class AttachmentResource(_AgentResource):
    """``GET /attachment/<id>`` with ``X-Computer-ID``: the raw file, only for a
    computer one of whose delivered activities uses it."""

    def render_GET(self, request):
        path = request.postpath
        if len(path) != 1 or not path[0].isdigit() or len(path[0]) > 18:
            return _text(request, 404, "no such attachment")
        attachment_id = int(path[0])
        secure_id = request.getHeader(b"x-computer-id")
        if not secure_id or len(secure_id) > MAX_ID_LENGTH:
            return _text(request, 403, "X-Computer-ID is required")
        def answer(result) -> None:
            outcome, name, data = result
            if outcome == "ok":
                request.setHeader(b"content-type", OCTET_STREAM)
                request.setHeader(b"content-length", b"%d" % len(data))
                request.write(data)
            elif outcome == "not-found":
                request.write(_text(request, 404, "no such attachment"))
            else:
                self.log.warn("security: attachment {id} refused ({outcome}) to {peer}", id=attachment_id,
                              outcome=outcome, peer=_peer(request))
                request.write(_text(request, 403, "this computer may not fetch that attachment"))

        d = self.ms.db.exchange.attachment(hash_secret(secure_id), attachment_id)
        return self.answer_later(request, d, answer, "serve the attachment")


def _peer(request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))
