"""The server's HTTP site: one root resource for the REST API and the message
system, plus ``/healthz``.

Mount points filled by other modules (imported when the site is built; a module
that is not there yet is skipped with a log line, so the server starts without it;
a module that is there but fails to import stops the start, loudly):

``server.api.make_resource(context: ServerContext) -> IResource``
    Mounted at ``/api/v1``. The resource sees paths relative to it: a klein app
    routes ``/activities``, served as ``/api/v1/activities``. It does its own
    authentication (``context.db.apikeys.authenticate``).

``server.messagesystem.make_resources(context: ServerContext) -> dict[bytes, IResource]``
    Each key is one top-level path segment (``b"message-system"``, ``b"ping"``,
    ``b"attachment"``), mounted at ``/<key>``; the resource handles what follows.

Every request body is limited to ``config.max_body_size`` here, before any
resource sees it (413 with a JSON error); resources may apply smaller limits.
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Callable

import sqlalchemy as sa
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from server.context import ServerContext

API_PREFIX = (b"api", b"v1")
HEALTH_TIMEOUT = 5.0  # seconds before /healthz calls an unanswering database down

_log = Logger(namespace="ridgeline.server.web")


def json_error(request, status: int, code: str, message: str) -> bytes:
    """Set the status and JSON content type; return the error body the API uses."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class NotFound(Resource):
    isLeaf = True

    def render(self, request):
        return json_error(request, 404, "not-found", "no such resource")


class Root(Resource):
    """Known children, else a JSON 404 (never Twisted's HTML page)."""

    def getChild(self, path, request):
        return NotFound()

    def render(self, request):
        return json_error(request, 404, "not-found", "no such resource")


class HealthResource(Resource):
    """``GET /healthz``: 200 ``{"status": "ok", "database": "ok"}``, or 503 with
    ``"database": "unavailable"`` when the database does not answer in time."""

    isLeaf = True

    def __init__(self, db, reactor, timeout: float = HEALTH_TIMEOUT):
        super().__init__()
        self._db = db
        self._reactor = reactor
        self._timeout = timeout

    def render_GET(self, request):
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self._db.run(lambda conn: conn.execute(sa.text("SELECT 1")).scalar())
        d.addTimeout(self._timeout, self._reactor)

        def answer(status: int, body: dict) -> None:
            if gone:
                return
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(json.dumps(body).encode())
            request.finish()

        def failed(f):
            _log.warn("health check: the database did not answer: {error}", error=f.getErrorMessage() or f.type)
            answer(503, {"status": "unavailable", "database": "unavailable"})

        d.addCallbacks(lambda _: answer(200, {"status": "ok", "database": "ok"}), failed)
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def render(self, request):
        if request.method in (b"GET", b"HEAD"):
            return super().render(request)
        # Twisted's own answer would be an HTML page; every error here is JSON.
        request.setHeader(b"allow", b"GET, HEAD")
        return json_error(request, 405, "method-not-allowed",
                          f"method {request.method.decode('latin-1')} not allowed here; allowed: GET, HEAD")


def optional_factory(module_name: str, attribute: str, *, log: Logger = _log,
                     absent: str = "not mounted") -> Callable[..., Any] | None:
    """``module_name.attribute`` of an optional part of the server, or None when
    the module is not installed or lacks it (logged with ``absent``: what that
    means). A module that is there but fails to import raises: that is a bug."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            log.info("{module} is not installed: {absent}", module=module_name, absent=absent)
            return None
        raise
    factory = getattr(module, attribute, None)
    if factory is None:
        log.warn("{module} has no {attribute}(): {absent}", module=module_name, attribute=attribute, absent=absent)
    return factory


def build_root(context: ServerContext) -> Resource:
    """The root resource with ``/healthz`` and every mount point that is available."""
    root = Root()
    root.putChild(b"healthz", HealthResource(context.db, context.reactor))

    make_api = optional_factory("server.api", "make_resource")
    if make_api is not None:
        api = Root()
        api.putChild(API_PREFIX[1], make_api(context))
        root.putChild(API_PREFIX[0], api)

    make_ms = optional_factory("server.messagesystem", "make_resources")
    if make_ms is not None:
        for name, resource in make_ms(context).items():
            segment = name.encode() if isinstance(name, str) else name
            segment = segment.strip(b"/")
            if not segment or b"/" in segment or segment in (b"healthz", b"api"):
                raise ValueError(f"server.messagesystem returned a bad mount point {name!r}")
            root.putChild(segment, resource)
    return root


class _LimitedRequest(server.Request):
    """A request whose body may not exceed ``max_body_size`` bytes.

    A declared Content-Length over the limit is not spooled at all; a chunked
    body is dropped once it passes the limit. Either way the request is answered
    413 instead of reaching a resource.
    """

    max_body_size = 30 * 1024 * 1024
    _too_large = False
    _received = 0

    def gotLength(self, length):
        if length is not None and length > self.max_body_size:
            self._too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self.max_body_size:
            self._too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def process(self):
        if not self._too_large:
            return super().process()
        self.site = self.channel.site
        body = json_error(self, 413, "too-large", f"request body exceeds {self.max_body_size} bytes")
        self.setHeader(b"content-length", str(len(body)).encode())
        self.write(body)
        self.finish()


#: Seconds a connection may stay silent before the server closes it (any data
#: received restarts the count). Twisted's default of 12 hours lets stalled and
#: half-open connections pile up; keep-alive clients simply reconnect.
IDLE_TIMEOUT = 300


def make_site(root: Resource, max_body_size: int) -> server.Site:
    """A ``Site`` serving ``root`` that refuses bodies over ``max_body_size``
    and closes connections idle for :data:`IDLE_TIMEOUT` seconds."""
    request_class = type("LimitedRequest", (_LimitedRequest,), {"max_body_size": max_body_size})
    site = server.Site(root, requestFactory=request_class, timeout=IDLE_TIMEOUT)
    site.displayTracebacks = False  # never a traceback to a client
    return site
