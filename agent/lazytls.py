"""Leaving TLS out of an agent that talks plain http.

Importing Twisted's reactor or HTTP client imports pyOpenSSL when it is
installed, and pyOpenSSL loads ``cryptography``: some 12 MB of the agent's
resident memory, of no use when every URL it talks to is plain http. The
composition root (``agent.cli``) imports Twisted's networking inside
:func:`without_tls` in that case.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from agent.config import AgentConfig


def needs_tls(config: AgentConfig) -> bool:
    """Whether the agent talks https (its exchange URL or its ping URL)."""
    return any(url.lower().startswith("https:") for url in (config.url, config.ping_url))


@contextlib.contextmanager
def without_tls() -> Iterator[None]:
    """Modules imported inside this block see no pyOpenSSL.

    Twisted treats a missing pyOpenSSL as "no TLS": the reactor then has no
    ``connectSSL``/``startTLS``, and ``twisted.web.client`` refuses https URLs
    with "SSL support unavailable". The ban is lifted when the block ends, so a
    plugin may still import ``OpenSSL`` for its own use; modules imported before
    the block are left as they are (if TLS is loaded already, nothing changes).
    """
    banned = "OpenSSL" not in sys.modules
    if banned:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # ``import OpenSSL`` raises ImportError
    try:
        yield
    finally:
        if banned and "OpenSSL" in sys.modules and sys.modules["OpenSSL"] is None:
            del sys.modules["OpenSSL"]
