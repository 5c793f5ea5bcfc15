"""The agent's plugin contract: hook specifications and the types they use.

A handler plugin is an object (a module, a class instance, or whatever a factory
returns) carrying methods or functions decorated with :data:`hookimpl`. The agent
core registers the built-in ``execute-script`` plugin explicitly and third-party
ones from the entry-point group ``ridgeline.agent``; the ``plugins`` setting of the
agent's configuration enables or disables them by name.

For each message the server sends with a type a plugin declared in
:func:`ridgeline_agent_message_types`, the core first records the operation
durably, then calls :func:`ridgeline_agent_handle`. The awaitable it returns fires
with an :class:`OperationResult`, which the core queues as an
``operation-result`` message. A plugin never talks to the server itself.

Example::

    from agent.hookspecs import hookimpl, OperationResult
    from protocol import codes

    class HelloPlugin:
        @hookimpl
        def ridgeline_agent_message_types(self):
            return ["hello"]

        @hookimpl
        def ridgeline_agent_handle(self, message, context):
            if message["type"] != "hello":
                return None
            async def run():
                return OperationResult(codes.SUCCEEDED, "hello to you too")
            return run()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from agent.config import AgentConfig

PROJECT = "ridgeline.agent"
#: Marks the hook specifications below (used by the agent core only).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's implementation of one of the hooks below.
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class OperationResult:
    """The outcome of one operation, as the agent reports it to the server.

    ``status`` is :data:`protocol.codes.SUCCEEDED` or :data:`protocol.codes.FAILED`;
    ``result_code`` one of the codes of :mod:`protocol.codes` (or ``None``).
    """

    status: int
    result_text: str = ""
    result_code: int | None = None


class OperationContext:
    """What a handler gets besides the message, built by the core per operation.

    Attributes:
        operation_id: the message's ``operation-id``.
        reactor: the reactor to schedule on and spawn processes with
            (``IReactorTime`` + ``IReactorProcess``; a ``Clock`` in tests).
        config: the agent's :class:`agent.config.AgentConfig`.
        http: a ``treq.HTTPClient`` (``StubTreq`` in tests).
        secure_id: the computer's secure id, for the ``X-Computer-ID`` header.
        log: a ``twisted.logger.Logger``.
    """

    def __init__(
        self,
        *,
        operation_id: int,
        reactor: Any,
        config: AgentConfig,
        http: Any,
        secure_id: bytes,
        log: Any,
        record_process: Callable[[int, int, float], None],
    ) -> None:
        self.operation_id = operation_id
        self.reactor = reactor
        self.config = config
        self.http = http
        self.secure_id = secure_id
        self.log = log
        self._record_process = record_process

    def attachment_url(self, attachment_id: int) -> str:
        """The URL of attachment ``attachment_id``: the exchange URL's last path
        segment replaced by ``attachment/<id>`` (as landscape-client does)."""
        base = self.config.url.rsplit("/", 1)[0]
        return f"{base}/attachment/{int(attachment_id)}"

    def record_process(self, pgid: int, start_time: float) -> None:
        """Durably record the process group the operation runs, and its start time.

        Call it right after spawning and before waiting on the process: after a
        crash the core kills what is left of that group, but only when the
        group leader's start time (from ``/proc/<pid>/stat``, in clock ticks since
        boot) still matches, so a reused pgid is never killed.
        """
        self._record_process(self.operation_id, pgid, start_time)


@hookspec
def ridgeline_agent_message_types() -> list[str]:
    """Message types this plugin handles; they go into ``client-accepted-types``.

    The server only sends a Ridgeline extension type to agents that list it, so
    declaring a type is how a plugin asks to receive it.
    """


@hookspec(firstresult=True)
def ridgeline_agent_handle(message: dict, context: OperationContext):
    """Handle one validated server message of a type this plugin declared.

    Return ``None`` if the type is not yours. Otherwise return an awaitable
    (coroutine or ``Deferred``) that fires with an :class:`OperationResult`.
    The core has already recorded the operation durably when this is called and
    never calls it twice for the same operation. Raising (or the awaitable
    failing) gives a FAILED result with a readable text; the agent keeps running.
    """


@hookspec(firstresult=True)
def ridgeline_agent_cancel(operation_id: int) -> bool | None:
    """Stop the running operation ``operation_id`` now (its whole process tree).

    Return ``True`` if it was yours and is being stopped; its ``handle()``
    awaitable then fires with FAILED / result code
    :data:`protocol.codes.CANCELED`. Return ``None`` if it is not yours.
    """
