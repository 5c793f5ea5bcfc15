"""Plain one-line descriptions of HTTP requests that got no answer.

Shared by the agent's exchange and by plugins that make their own requests
(attachment downloads), so an administrator reads the same sentence for the
same cause and never Twisted's or OpenSSL's reprs. No I/O, no imports of the
agent core: a plugin can import it cheaply.
"""

from __future__ import annotations

from twisted.python.failure import Failure


def describe_http_error(exc: BaseException) -> str:
    """One readable line for a request that got no answer: the cause inside
    Twisted's wrappers (``ResponseNeverReceived`` and the like hold a list of
    Failures), and for a refused TLS certificate what to do about it."""
    reasons = getattr(exc, "reasons", None)
    if isinstance(reasons, (list, tuple)) and reasons:
        texts: list[str] = []
        for reason in reasons:
            inner = reason.value if isinstance(reason, Failure) else reason
            text = describe_http_error(inner) if isinstance(inner, BaseException) else str(inner)
            if text not in texts:
                texts.append(text)
        return "; ".join(texts)
    kind = type(exc)
    # Checked by name: OpenSSL and service_identity load only when https is used.
    if kind.__module__.startswith("OpenSSL") and kind.__name__ == "Error":
        errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        texts = [str(e[-1]) for e in errors if isinstance(e, tuple) and e and e[-1]]
        if any("certificate verify failed" in t for t in texts):
            return ("the server's TLS certificate could not be verified (certificate verify failed); "
                    "set ssl_public_key to the file of the CA that signed it")
        return f"TLS failed: {', '.join(texts) or str(exc) or 'handshake error'}"
    if kind.__module__.startswith("service_identity") and kind.__name__ == "VerificationError":
        return "the server's TLS certificate does not name the host in the URL"
    text = str(exc).strip()
    return f"{kind.__name__}: {text}" if text else kind.__name__
