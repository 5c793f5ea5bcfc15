"""The script plugin through the agent core's real plugin manager and context."""

from __future__ import annotations

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor as global_reactor
from twisted.logger import Logger

from agent.config import AgentConfig
from agent.hookspecs import OperationContext
from agent.plugins import AgentPlugins
from protocol import codes

from scripts_support import AttachmentServer, finish, message, wait_for_file


def context(tempdir, recorded, *, operation_id=1, http=None):
    config = AgentConfig(
        url="https://server.invalid/message-system",
        ping_url="https://server.invalid/ping",
        script_users="ALL",
        script_tempdir=str(tempdir),
    )
    return OperationContext(
        operation_id=operation_id,
        reactor=global_reactor,
        config=config,
        http=http,
        secure_id=b"secure-123",
        log=Logger(),
        record_process=lambda op, pgid, start: recorded.append((op, pgid, start)),
    )


@pytest_twisted.ensureDeferred
async def test_dispatch_through_the_agent_plugin_manager(tempdir):
    plugins = AgentPlugins.load(global_reactor, entry_points=False)
    assert "execute-script" in plugins.message_types()
    recorded: list = []
    server = AttachmentServer({3: b"three"})
    ctx = context(tempdir, recorded, operation_id=9, http=StubTreq(server))
    msg = message('echo $$; cat "$RIDGELINE_ATTACHMENTS/f"', attachments={"f": 3})
    result = await finish(plugins.handle(msg, ctx))
    pid, body = result.result_text.splitlines()
    assert (result.status, body) == (codes.SUCCEEDED, "three")
    assert [(op, pgid) for op, pgid, _ in recorded] == [(9, int(pid))]
    assert server.requests == [b"/attachment/3"], "attachment_url of the real context"


@pytest_twisted.ensureDeferred
async def test_cancel_through_the_agent_plugin_manager(tempdir, tmp_path):
    plugins = AgentPlugins.load(global_reactor, entry_points=False)
    flag = tmp_path / "flag"
    d = plugins.handle(message(f"echo up > {flag}; sleep 1000"), context(tempdir, [],
                                                                        operation_id=4))
    await wait_for_file(flag)
    assert plugins.cancel(4) is True
    result = await finish(d)
    assert (result.status, result.result_code) == (codes.FAILED, codes.CANCELED)
    assert plugins.cancel(4) is False
