"""Hook specifications of the server: the contract for server-side plugins.

A server plugin is any object (module, class instance) carrying functions marked
with :data:`hookimpl`. Built-in plugins are registered explicitly; third-party
ones come from the entry-point groups ``ridgeline.server`` (activity types, e.g.
the server-side half of an agent handler plugin) and ``ridgeline.jobs`` (job
plugins). Both groups load into one plugin manager (``server.plugins``).

There is one hook, :func:`ridgeline_activity_types`: a plugin returns the activity
types it adds, each an :class:`ActivityType` that carries everything the server
needs: its kind, a JSON Schema of its parameters, and

- for a **client** type, how an activity becomes the agent's message
  (``to_message``), so a third party adding an agent handler adds its server-side
  type in the same package;
- for a **server** type (a *job*), the coroutine that runs it (``run``), its time
  limit and whether it is safe to run again after a job-handler died mid-job.

Example (a job plugin)::

    from server.hookspecs import ActivityType, JobResult, hookimpl

    async def count_computers(job):
        count, _ = await job.list_computers(limit=1)
        return JobResult(f"{count} computers")

    @hookimpl
    def ridgeline_activity_types():
        return [ActivityType(name="count-computers", kind="server",
                             parameters_schema={"type": "object", "additionalProperties": False},
                             run=count_computers, retry_safe=True)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from server.db.activities import Activity

PROJECT = "ridgeline.server"
#: Entry-point groups loaded into the server's plugin manager.
ENTRY_POINT_GROUPS = ("ridgeline.server", "ridgeline.jobs")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ParameterError(ValueError):
    """Parameters a type refuses: ``field`` names the first bad one (the API's 400)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Delivery:
    """What the server knows when it hands a client activity to an agent.

    ``env`` holds the variables Landscape sends with a script
    (``LANDSCAPE_ACCOUNT``, ``LANDSCAPE_COMPUTER_ID``, ``LANDSCAPE_ACTIVITY_ID``,
    ``LANDSCAPE_ACTIVITY_CREATOR_ID``, ``LANDSCAPE_ACTIVITY_CREATION_TIME``).
    """

    activity: "Activity"
    computer_id: int
    account_name: str
    env: Mapping[str, str]


@dataclass(frozen=True)
class JobResult:
    """What a job returns: its result text, and a result code when it failed."""

    text: str = ""
    code: int | None = None
    failed: bool = False


class JobContext(Protocol):
    """What a running job may use. Built by the job-handler for each activity.

    - ``activity``: the activity being run (``activity.parameters`` are validated).
    - ``log``: a ``twisted.logger.Logger``.
    - ``reactor``: for time and timers (``reactor.seconds()``, ``callLater``).
    - ``canceled``: True once an administrator canceled the activity; long jobs
      check it between steps, or await ``wait_canceled()``.
    """

    activity: "Activity"
    log: Any
    reactor: Any

    @property
    def canceled(self) -> bool: ...

    def wait_canceled(self) -> Awaitable[None]:
        """Fires when the activity is canceled (never, if it is not)."""

    async def report_progress(self, percent: int) -> None:
        """Store progress 0–100 on the activity (waiting thresholds use it)."""

    async def store_output(self, name: str, data: bytes, content_type: str) -> None:
        """Store an output of the job in the database (size-limited), served at
        ``GET /api/v1/activities/{id}/output``."""

    async def get_activity(self, activity_id: int) -> "Activity":
        """One activity."""

    async def list_activities(self, **filters: Any) -> tuple[int, list["Activity"]]:
        """Activities, filtered like ``GET /api/v1/activities``."""

    async def list_computers(self, **filters: Any) -> tuple[int, list[Any]]:
        """Computers, filtered like ``GET /api/v1/computers``."""

    async def create_activity(self, request: Mapping[str, Any]) -> "Activity":
        """Create activities as ``POST /api/v1/activities`` does (so a job can fan
        work out to computers); the creator is recorded as this job."""

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work off the reactor thread."""


@dataclass(frozen=True)
class ActivityType:
    """One activity type.

    ``name``: the type (for client types also the agent message type, unless
    ``message_type`` says otherwise). ``kind``: ``"client"`` or ``"server"``.
    ``parameters_schema``: JSON Schema (draft 2020-12) of ``parameters``.
    ``validate``: optional further checks after the schema; returns the
    normalised parameters or raises :class:`ParameterError`.

    Client types: ``to_message(delivery) -> dict`` builds the complete agent
    message, ``operation-id`` included (the activity id); ``answer_deadline``:
    seconds after delivery without an answer before the activity ends
    ``failed``/``no-answer`` (None: the server's setting, plus the parameters'
    ``time_limit`` when there is one).

    Server types: ``run(job: JobContext) -> JobResult | str | None`` (a
    coroutine function). A returned str is the result text of a success; raising
    fails the activity with a readable text. ``time_limit`` in seconds (None:
    the server's setting). ``retry_safe``: the job may run again after a
    job-handler died mid-job (a new activity is created, linked by ``origin_id``).
    """

    name: str
    kind: str
    parameters_schema: Mapping[str, Any]
    description: str = ""
    validate: Callable[[dict], dict] | None = None
    # client types
    to_message: Callable[[Delivery], dict] | None = None
    message_type: str | None = None
    answer_deadline: float | None = None
    # server types
    run: Callable[[JobContext], Awaitable[JobResult | str | None]] | None = None
    time_limit: float | None = None
    retry_safe: bool = False
    attachments_parameter: str | None = field(default=None)
    """Name of a parameter mapping file names to attachment ids, if the type uses
    attachments (the server checks they exist and links them to the activity)."""

    def __post_init__(self):
        if self.kind not in ("client", "server"):
            raise ValueError(f"activity type {self.name!r}: kind must be 'client' or 'server'")
        if self.kind == "client" and self.to_message is None:
            raise ValueError(f"client activity type {self.name!r} needs to_message")
        if self.kind == "server" and self.run is None:
            raise ValueError(f"server activity type {self.name!r} needs run")

    @property
    def agent_message_type(self) -> str | None:
        return (self.message_type or self.name) if self.kind == "client" else None


@hookspec
def ridgeline_activity_types() -> list[ActivityType]:
    """Return the activity types this plugin adds (client and/or server types).

    Called once when the plugin manager is built. Two plugins declaring the same
    name is an error at start.
    """
