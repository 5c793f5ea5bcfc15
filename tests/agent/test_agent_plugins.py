"""The plugin manager facade: built-ins, entry points, the ``plugins`` setting."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from agent.hookspecs import OperationResult, hookimpl
from agent.plugins import AgentPlugins, PluginError
from protocol import codes

PLUGIN_SOURCE = '''
from agent.hookspecs import hookimpl, OperationResult
from protocol import codes

class Greeter:
    @hookimpl
    def ridgeline_agent_message_types(self):
        return ["greet"]

    @hookimpl
    def ridgeline_agent_handle(self, message, context):
        if message["type"] != "greet":
            return None
        async def run():
            return OperationResult(codes.SUCCEEDED, "hello " + message.get("name", "?"))
        return run()
'''


class Builtin:
    @hookimpl
    def ridgeline_agent_message_types(self):
        return ["builtin-thing"]


def test_entry_point_plugins_are_loaded_and_can_be_disabled(make_distribution):
    make_distribution(
        "greeter-plugin", files={"greeter_plugin.py": PLUGIN_SOURCE},
        entry_points={"ridgeline.agent": {"greeter": "greeter_plugin:Greeter"}},
    )
    builtins = {"builtin": Builtin}
    pm = AgentPlugins.load(Clock(), None, builtins=builtins)
    assert {"greeter", "builtin"} <= set(pm.names())
    assert {"greet", "builtin-thing"} <= pm.message_types()
    only = AgentPlugins.load(Clock(), ["greeter"], builtins=builtins)
    assert only.names() == ["greeter"]
    assert "builtin-thing" not in only.message_types()
    with pytest.raises(PluginError, match="no-such"):
        AgentPlugins.load(Clock(), ["no-such"], builtins=builtins)


def test_missing_builtin_is_skipped_unless_asked_for():
    def missing():
        raise ModuleNotFoundError("No module named 'plugins.nothing'")

    assert AgentPlugins.load(Clock(), None, builtins={"x": missing}, entry_points=False).names() == []
    with pytest.raises(PluginError, match="cannot be loaded"):
        AgentPlugins.load(Clock(), ["x"], builtins={"x": missing}, entry_points=False)


def test_a_plugin_with_a_misspelt_hook_is_refused():
    class Bad:
        @hookimpl
        def ridgeline_agent_handel(self, message, context):
            return None

    pm = AgentPlugins.empty()
    with pytest.raises(PluginError, match="invalid"):
        pm.register(Bad(), "bad")
    assert pm.names() == []


def test_handle_wraps_results_and_errors():
    class P:
        @hookimpl
        def ridgeline_agent_handle(self, message, context):
            if message["type"] == "boom":
                raise RuntimeError("kaput")
            if message["type"] == "plain":
                return OperationResult(codes.SUCCEEDED, "done")
            return None

    pm = AgentPlugins.empty()
    pm.register(P(), "p")
    assert pm.handle({"type": "other"}, None) is None
    got = []
    pm.handle({"type": "plain"}, None).addCallback(got.append)
    assert got == [OperationResult(codes.SUCCEEDED, "done")]
    failed = []
    pm.handle({"type": "boom"}, None).addErrback(failed.append)
    assert "kaput" in str(failed[0].value)
    assert pm.cancel(3) is False
