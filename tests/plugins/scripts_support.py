"""Helpers shared by the execute-script tests (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="running scripts as another user needs root"
)


class FakeContext:
    """What the agent core passes to a handler, minus the database."""

    def __init__(self, tempdir, *, operation_id=1, script_users="ALL", output_limit=512,
                 http=None, secure_id=b"secure-123"):
        self.operation_id = operation_id
        self.reactor = global_reactor
        self.config = SimpleNamespace(
            url="https://server.invalid/message-system",
            script_users=script_users,
            script_output_limit=output_limit,
            script_tempdir=str(tempdir),
        )
        self.http = http
        self.secure_id = secure_id
        self.log = None
        self.recorded: list[tuple[int, float]] = []

    def attachment_url(self, attachment_id: int) -> str:
        return f"https://server.invalid/attachment/{attachment_id}"

    def record_process(self, pgid: int, start_time: float) -> None:
        self.recorded.append((pgid, start_time))


def message(code, *, interpreter="/bin/sh", username=None, time_limit=None,
            attachments=None, env=None, **extra):
    """An execute-script message as the server sends it (current user by default)."""
    msg = {
        "type": "execute-script",
        "operation-id": 1,
        "interpreter": interpreter,
        "code": code,
        "username": username or pwd.getpwuid(os.geteuid()).pw_name,
        "time-limit": time_limit,
        "attachments": attachments or {},
    }
    if env is not None:
        msg["env"] = env
    msg.update(extra)
    return msg


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie is not running: PID 1 here may not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def sleep(seconds: float) -> None:
    await deferLater(global_reactor, seconds, lambda: None)


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    """The text of ``path`` once a full line is in it."""
    for _ in range(int(timeout / 0.02)):
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        await sleep(0.02)
    raise AssertionError(f"{path} never appeared")


#: A broken plugin fails the test after this long instead of hanging the suite.
SAFETY_TIMEOUT = 60


async def run(plugin, ctx, msg):
    return await finish(plugin.ridgeline_agent_handle(msg, ctx))


async def finish(d):
    """Await a handle() Deferred, with :data:`SAFETY_TIMEOUT`."""
    return await d.addTimeout(SAFETY_TIMEOUT, global_reactor)


class AttachmentServer(Resource):
    """``/attachment/<id>``: the file's body, only for the right X-Computer-ID."""

    isLeaf = True

    def __init__(self, files: dict[int, bytes], secure_id: bytes = b"secure-123") -> None:
        super().__init__()
        self.files = files
        self.secure_id = secure_id
        self.requests: list[bytes] = []
        self.hanging: list = []

    def render_GET(self, request):
        self.requests.append(request.path)
        parts = request.path.split(b"/")
        if request.getHeader(b"X-Computer-ID") != self.secure_id:
            request.setResponseCode(403)
            return b"who are you?"
        if parts[:2] != [b"", b"attachment"] or not parts[2].isdigit():
            request.setResponseCode(404)
            return b""
        attachment_id = int(parts[2])
        if attachment_id == 999:  # never answers
            self.hanging.append(request)
            return NOT_DONE_YET
        if attachment_id not in self.files:
            request.setResponseCode(404)
            return b"no such attachment"
        return self.files[attachment_id]
