"""``ServerContext``: what the composition root hands to every part of the server.

``server.service`` builds one per process and passes it to the modules that mount
resources or start services (see ``server.web``). Nothing in it is global.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from server.config import ServerConfig


@dataclass(frozen=True)
class ServerContext:
    """The process's shared objects.

    - ``reactor``: the reactor (or a ``Clock``/``MemoryReactorClock`` in tests);
      use it for time (``reactor.seconds()``) and timers, never import one.
    - ``db``: the ``server.db.base.Database`` with its connector components.
    - ``config``: the resolved ``ServerConfig``.
    - ``plugins``: the server's pluggy plugin manager facade, or None until the
      activity-types module provides one.
    - ``server_uuid``: this installation's uuid (stable, stored in the database).
    - ``log``: a ``twisted.logger.Logger`` for the server.
    - ``queue``: the ``server.queue.publisher.Publisher`` of this process, or None
      (tools). ``queue.publish_pending()`` publishes committed ``queued`` server
      activities (call it after creating or queueing one; it never fails, and a
      periodic sweep catches anything missed); ``queue.sweep_expired_leases(now)``
      ends expired job leases; ``queue.queue`` is the underlying ``JobQueue``.
    """

    reactor: Any
    db: Any
    config: ServerConfig
    plugins: Any = None
    server_uuid: str = ""
    log: Logger = field(default_factory=lambda: Logger(namespace="ridgeline.server"))
    queue: Any = None
