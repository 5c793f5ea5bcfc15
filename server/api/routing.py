"""The machinery every route module uses: the ``@route`` decorator (which also
carries the route's OpenAPI description), the ``Api`` that mounts route classes
on one klein app with authentication and error handling, and request helpers.

A route module defines a subclass of :class:`Routes` whose methods are decorated
with :func:`route`; the module's ``ROUTES`` names that class, and one line in
``server.api.ROUTE_MODULES`` mounts it. A handler is
``async def handler(self, request, **path_args) -> Reply | dict | list`` and may
raise :class:`server.api.errors.ApiError` (or the store's errors, mapped here).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlencode

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from server import activityservice, states
from server.activityservice import iso  # noqa: F401 (the route modules' time formatter)
from server.api import auth
from server.api.errors import ApiError, encode, invalid

log = Logger(namespace="ridgeline.server.api")


@dataclass(frozen=True)
class RouteSpec:
    """One route: method, klein/werkzeug path, and its OpenAPI operation object."""

    method: str
    path: str
    operation: dict
    authenticated: bool = True

    @property
    def openapi_path(self) -> str:
        return openapi_path(self.path)

    @property
    def query_names(self) -> tuple[str, ...]:
        """The query parameters the route declares: the only ones it accepts."""
        return tuple(p["name"] for p in self.operation.get("parameters", ()) if p["in"] == "query")


def openapi_path(werkzeug_path: str) -> str:
    """``/activities/<int:activity_id>`` → ``/activities/{activity_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", werkzeug_path)


def route(method: str, path: str, *, summary: str, responses: dict, parameters: Iterable[dict] = (),
          body: dict | None = None, description: str = "", tags: Iterable[str] = ()) -> Callable:
    """Declare a handler method as the route ``method path`` and describe it.

    ``responses``: ``{status: (description, schema or None)}``; the 400 (every
    route refuses query parameters it does not declare), 401 and 500 errors are
    added for every route.
    ``parameters``: OpenAPI parameter objects (path parameters are added from the
    path). ``body``: ``(description, schema, content type)`` of the request body.
    """
    ops: dict[str, Any] = {"summary": summary, "operationId": f"{method.lower()}_{_op_name(path)}"}
    if description:
        ops["description"] = description
    if tags:
        ops["tags"] = list(tags)
    params = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "integer", "minimum": 1} if conv == "int" else {"type": "string"}}
        for conv, name in re.findall(r"<(?:([^:<>]+):)?([^<>]+)>", path)
    ] + list(parameters)
    if params:
        ops["parameters"] = params
    if body is not None:
        desc, schema, ctype = body
        ops["requestBody"] = {"required": True, "description": desc, "content": {ctype: {"schema": schema}}}
    all_responses = dict(responses)
    all_responses.setdefault(401, ("No or an invalid API key.", ERROR_REF))
    all_responses.setdefault(500, ("Internal error (details in the server log).", ERROR_REF))
    all_responses.setdefault(400, ("Invalid request; `field` names the bad one.", ERROR_REF))
    if "{" in openapi_path(path):
        all_responses.setdefault(404, ("No such resource.", ERROR_REF))
    ops["responses"] = {
        str(status): ({"description": d} | ({"content": {"application/json": {"schema": s}}} if s else {}))
        for status, (d, s) in sorted(all_responses.items())
    }
    ops["security"] = [{"bearer": []}]

    def mark(fn):
        fn._route = RouteSpec(method.upper(), path, ops)
        return fn

    return mark


def _op_name(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", openapi_path(path).lower()).strip("_") or "root"


ERROR_REF = {"$ref": "#/components/schemas/Error"}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass
class Reply:
    """A JSON reply with a status other than 200, and optional headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RawReply:
    """A reply that is not JSON (e.g. a job's stored output): bytes and their type."""

    data: bytes
    content_type: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class Routes:
    """Base of a route module's class. ``SCHEMAS``: its OpenAPI component schemas."""

    SCHEMAS: dict[str, dict] = {}

    def __init__(self, api: "Api"):
        self.api = api
        self.context = api.context


class Api:
    """One klein app with every route class mounted, for one ``ServerContext``."""

    def __init__(self, context, route_classes: Iterable[type[Routes]]):
        self.context = context
        self.app = Klein()
        self.routes: list[RouteSpec] = []
        self.schemas: dict[str, dict] = {}
        for cls in route_classes:
            instance = cls(self)
            self.schemas.update(cls.SCHEMAS)
            for name in sorted(dir(instance)):
                handler = getattr(instance, name)
                spec = getattr(handler, "_route", None)
                if isinstance(spec, RouteSpec):
                    self._mount(spec, handler)
        self.app.handle_errors(NotFound)(self._not_found)
        self.app.handle_errors(MethodNotAllowed)(self._not_allowed)

    def _mount(self, spec: RouteSpec, handler) -> None:
        key = (spec.method, spec.openapi_path)
        if any((r.method, r.openapi_path) == key for r in self.routes):
            raise ValueError(f"route {spec.method} {spec.path} is declared twice")
        self.routes.append(spec)

        def endpoint(request, **kw):
            return defer.Deferred.fromCoroutine(self._respond(request, handler, kw, spec))

        self.app.route(spec.path, methods=[spec.method], endpoint=f"{spec.method} {spec.path}")(endpoint)

    def resource(self):
        return self.app.resource()

    async def _respond(self, request, handler, kw, spec: RouteSpec) -> bytes:
        status, body, headers = 200, None, {}
        try:
            if spec.authenticated:
                request.api_key = await auth.authenticate(self.context, request)
            # A parameter the route does not know is refused on every route, as
            # a typo in a filter must not silently list (or change) everything.
            Query(request, spec.query_names)
            if any(type(v) is int and v > activityservice.MAX_ID for v in kw.values()):
                # No row has such an id; the database driver would refuse the query.
                raise ApiError(404, "not-found", "no such resource")
            result = await handler(request, **kw)
            if isinstance(result, RawReply):
                request.setResponseCode(result.status)
                request.setHeader(b"content-type", result.content_type.encode("latin-1"))
                request.setHeader(b"cache-control", b"no-store")
                for k, v in result.headers.items():
                    request.setHeader(k.encode(), v.encode())
                return result.data
            if isinstance(result, Reply):
                status, body, headers = result.status, result.body, result.headers
            else:
                body = result
        except Exception as e:  # every failure becomes a JSON error, never a traceback
            error = self._map_error(e)
            status, body, headers = error.status, error.body(), {}
            if error.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="ridgeline"'
        return self._write(request, status, body, headers)

    def _map_error(self, e: Exception) -> ApiError:
        from server.db.activities import ActivityNotFound
        from server.db.attachments import AttachmentNotFound
        from server.db.computers import ComputerNotFound

        if isinstance(e, ApiError):
            return e
        if isinstance(e, activityservice.RequestError):
            return ApiError(e.status, e.code, e.message, field=e.field)
        if isinstance(e, states.TransitionError):
            return ApiError(409, "conflict", str(e), current_state=e.current)
        if isinstance(e, (ActivityNotFound, ComputerNotFound, AttachmentNotFound)):
            return ApiError(404, "not-found", str(e))
        log.failure("API request failed", failure=_failure(e))
        return ApiError(500, "internal", "internal error; the server log has the details")

    def _write(self, request, status: int, body: Any, headers: dict[str, str]) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        for k, v in headers.items():
            request.setHeader(k.encode(), v.encode())
        try:
            return encode(body)
        except Exception as e:  # a reply that cannot be encoded is our bug: still a JSON 500
            error = self._map_error(e)
            request.setResponseCode(error.status)
            return encode(error.body())

    async def _error_after_auth(self, request, error: ApiError) -> bytes:
        try:
            await auth.authenticate(self.context, request)
        except Exception as e:
            error = self._map_error(e)
        headers = {"WWW-Authenticate": 'Bearer realm="ridgeline"'} if error.status == 401 else {}
        return self._write(request, error.status, error.body(), headers)

    def _not_found(self, request, failure):
        return defer.Deferred.fromCoroutine(
            self._error_after_auth(request, ApiError(404, "not-found", "no such resource")))

    def _not_allowed(self, request, failure):
        allowed = ", ".join(getattr(failure.value, "valid_methods", None) or [])
        error = ApiError(405, "method-not-allowed", f"method {request.method.decode()} not allowed here"
                         + (f"; allowed: {allowed}" if allowed else ""))
        if allowed:
            request.setHeader(b"allow", allowed.encode())
        return defer.Deferred.fromCoroutine(self._error_after_auth(request, error))


def _failure(e: Exception):
    from twisted.python.failure import Failure

    return Failure(e)


# --- request helpers ------------------------------------------------------------------


class _Refused(ValueError):
    """A JSON document that parses but cannot be used (message says why)."""


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"the number {text[:40]} is too large")
    return value


def _parse_constant(name: str):
    raise _Refused(f"{name} is not JSON")


def _object(pairs: list) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Refused(f"the key {repeated!r} is given more than once in an object")
    return result


def read_json(request) -> Any:
    """The request body as JSON (400 ``invalid-json`` when it is not).

    Stricter than ``json.loads`` where its leniency would reach the database or the
    reply: NaN and infinities (no JSON column stores them), a key repeated in an
    object (which value was meant?) and lone surrogates (``"\\ud800"``: not a character,
    cannot be stored or sent back as UTF-8) are refused.
    """
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        raise ApiError(400, "invalid-json", "a JSON request body is required")
    try:
        value = json.loads(raw.decode("utf-8"), parse_float=_parse_float,
                           parse_constant=_parse_constant, object_pairs_hook=_object)
    except _Refused as e:
        raise ApiError(400, "invalid-json", f"the request body is not usable JSON: {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ApiError(400, "invalid-json", f"the request body is not valid JSON: {e}") from None
    try:
        # Surrogates can only come from \u escapes; one encode finds any, anywhere.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ApiError(400, "invalid-json", "the request body is not usable JSON: nested too deeply") from None
    except UnicodeEncodeError:
        raise ApiError(400, "invalid-json", "the request body is not usable JSON: it holds a lone "
                       "surrogate escape (\\ud800-\\udfff without its pair), which is not a character") from None
    return value


class Query:
    """The query string, refusing unknown or repeated parameters (a typo in a
    filter must not silently list everything)."""

    def __init__(self, request, allowed: Iterable[str]):
        self.values: dict[str, str] = {}
        allowed = set(allowed)
        for raw_key, raw_values in (request.args or {}).items():
            key = raw_key.decode("utf-8", "replace")
            if key not in allowed:
                raise invalid(key, f"unknown query parameter {key!r}; known: {', '.join(sorted(allowed))}")
            if len(raw_values) != 1:
                raise invalid(key, f"query parameter {key!r} given more than once")
            try:
                self.values[key] = raw_values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise invalid(key, f"query parameter {key!r} is not UTF-8") from None

    def str(self, name: str, choices: Iterable[str] | None = None) -> str | None:
        value = self.values.get(name)
        if value is not None and choices is not None and value not in choices:
            raise invalid(name, f"{name} must be one of: {', '.join(choices)}")
        return value

    def int(self, name: str, default: int | None = None, *, minimum: int | None = None,
            maximum: int | None = None) -> int | None:
        value = self.values.get(name)
        if value is None:
            return default
        if not re.fullmatch(r"-?[0-9]{1,18}", value):
            raise invalid(name, f"{name} must be an integer")
        number = int(value)
        if minimum is not None and number < minimum:
            raise invalid(name, f"{name} must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise invalid(name, f"{name} must be at most {maximum}")
        return number

    def time(self, name: str):
        value = self.values.get(name)
        if value is None:
            return None
        try:
            return activityservice.parse_time(value, name)
        except activityservice.RequestError as e:
            raise invalid(name, e.message) from None

    def page(self) -> tuple[int, int]:
        return (self.int("limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT),
                self.int("offset", 0, minimum=0))


DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PAGE_PARAMETERS = [
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
    {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "default": 0}},
]


def query_parameter(name: str, schema: dict, description: str = "") -> dict:
    p = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        p["description"] = description
    return p


def time_parameter(name: str, description: str) -> dict:
    return query_parameter(name, {"type": "string", "format": "date-time"},
                           description + " ISO 8601; a time without a zone is UTC.")


def page_schema(item: dict) -> dict:
    return {
        "type": "object",
        "required": ["count", "results", "next"],
        "properties": {
            "count": {"type": "integer", "description": "Number of matches in all pages."},
            "results": {"type": "array", "items": item},
            "next": {"type": ["string", "null"], "format": "uri", "description": "URL of the next page, or null."},
        },
    }


def page(request, query: Query, count: int, results: list, limit: int, offset: int) -> dict:
    """``{count, results, next}``; ``next`` is the absolute URL of the next page."""
    next_url = None
    if offset + len(results) < count and results:
        args = dict(query.values, limit=str(limit), offset=str(offset + len(results)))
        scheme = "https" if request.isSecure() else "http"
        host = request.getHeader(b"host")
        host = host.decode("latin-1") if isinstance(host, bytes) else (host or "localhost")
        path = request.path.decode("utf-8", "replace")
        next_url = f"{scheme}://{host}{path}?{urlencode(sorted(args.items()))}"
    return {"count": count, "results": results, "next": next_url}


def creator_of(request) -> str:
    """The name recorded as creator/actor: the API key's name."""
    return request.api_key.name
