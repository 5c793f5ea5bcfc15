"""A small synchronous client of the REST API (``/api/v1``), on urllib.

Every request has a timeout. Failures become one of two exceptions whose text is
the one line the CLI prints: :class:`ApiError` (the server answered with an error
status) and :class:`Unreachable` (no answer at all). No formatting lives here.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

from ridgeline import __version__

DEFAULT_TIMEOUT = 30.0
API_PREFIX = "/api/v1"


class CliError(Exception):
    """An error the CLI reports as one line on stderr, with exit status ``exit_code``."""

    exit_code = 1


class Unreachable(CliError):
    def __init__(self, url: str, reason: object):
        super().__init__(f"cannot reach the server at {url}: {reason}")
        self.url = url


class ApiError(CliError):
    """An error status from the server; ``code``/``message`` from its JSON body
    (``{"error": {"code", "message", ...}}``) and ``details`` the rest of it."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


def _error_from_body(status: int, reason: str, body: bytes, has_key: bool) -> ApiError:
    error: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            error = parsed["error"]
    except ValueError:
        pass
    code = str(error.get("code") or "")
    message = str(error.get("message") or "").strip()
    if status == 401:
        # The server's own words matter less than what to do about it.
        message = ("the API key was refused" if has_key else
                   "the server wants an API key: give --api-key-file FILE, --api-key KEY or set RIDGELINE_API_KEY")
    elif not message:
        text = body.decode("utf-8", "replace").strip().splitlines()
        message = f"the server answered {status} {reason}".rstrip()
        if text and len(text[0]) < 200:
            message += f": {text[0]}"
    return ApiError(status, code or "http-error", message, error)


class BadCaFile(CliError):
    """The CA file given to trust cannot be used (a usage error: exit status 2)."""

    exit_code = 2


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The context verifying an ``https`` server: against the certificates of
    ``ca_file`` (PEM: a CA, or a bundle) when given, else ``None`` (urllib's
    default, the system's roots). Raises :class:`BadCaFile`."""
    if not ca_file:
        return None
    try:
        # Only the given CAs: a private CA's users mean exactly that one.
        context = ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise BadCaFile(f"--ca-file {ca_file}: no such file") from None
    except (ssl.SSLError, ValueError):  # before OSError: SSLError is one
        raise BadCaFile(f"--ca-file {ca_file}: not a PEM file of CA certificates") from None
    except OSError as e:
        raise BadCaFile(f"--ca-file {ca_file}: cannot read it: {e.strerror or e}") from None
    if not context.get_ca_certs():
        raise BadCaFile(f"--ca-file {ca_file}: holds no CA certificate")
    return context


def _unreachable_reason(reason: object) -> object:
    """What to print for a failed connection; a refused certificate says how to trust one."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        detail = reason.verify_message or reason.reason or "verification failed"
        return (f"its TLS certificate is not trusted ({detail}); to trust a private CA "
                f"give --ca-file FILE or set RIDGELINE_CA_FILE")
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed: {reason.reason or reason}"
    return reason


class ApiClient:
    """Requests against ``base_url`` (the server's root, e.g. ``http://host:8080``).

    ``ca_file`` (PEM) is the CA that an ``https`` server's certificate must chain
    to; without it the system's trusted roots are used.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 ca_file: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.ca_file = ca_file
        self._tls = tls_context(ca_file)

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        url = self.base_url + API_PREFIX + path
        if query:
            pairs = []
            for k, v in query.items():
                if v is None:
                    continue
                for item in (v if isinstance(v, (list, tuple)) else [v]):
                    pairs.append((k, str(item).lower() if isinstance(item, bool) else str(item)))
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON reply (or the bytes when
        ``raw``). Raises :class:`ApiError` or :class:`Unreachable`."""
        headers = {"Accept": "application/json", "User-Agent": f"ridgeline-cli/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            content_type = "application/json"
        if data is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
        elif method in ("POST", "PUT", "PATCH"):
            data = b""
        req = urllib.request.Request(self.url(path, query), data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            with e:
                try:
                    body = e.read()
                except (OSError, http.client.HTTPException):
                    body = b""
            raise _error_from_body(e.code, e.reason or "", body, bool(self.api_key)) from None
        except urllib.error.URLError as e:
            reason = _unreachable_reason(e.reason)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                reason = f"no answer within {self.timeout:g} s"
            elif isinstance(reason, OSError) and reason.strerror:
                reason = reason.strerror
            raise Unreachable(self.base_url, reason) from None
        except (TimeoutError, socket.timeout):
            raise Unreachable(self.base_url, f"no answer within {self.timeout:g} s") from None
        except ssl.SSLError as e:
            raise Unreachable(self.base_url, _unreachable_reason(e)) from None
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(self.base_url, str(e) or type(e).__name__) from None
        if raw:
            return body
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise CliError(f"the server at {self.base_url} answered something that is not JSON") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None, **query: Any) -> Any:
        return self.request("POST", path, json_body=body, query=query)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
