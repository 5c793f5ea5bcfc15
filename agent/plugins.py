"""The agent's plugin manager: a small typed facade over pluggy.

Built-in plugins are registered explicitly (no string reflection); third-party
ones come from the entry-point group ``ridgeline.agent``, whose value is a module
or a class/factory called with no arguments. The ``plugins`` setting lists the
names to enable; ``None`` enables everything installed.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any, Callable, Iterable

import pluggy
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger

from agent import hookspecs
from agent.hookspecs import OperationContext, OperationResult

ENTRY_POINT_GROUP = "ridgeline.agent"
SCRIPTS_PLUGIN = "execute-script"

log = Logger(namespace="ridgeline.agent.plugins")


class PluginError(Exception):
    """A plugin could not be loaded or the ``plugins`` setting names an unknown one."""


def _builtin_factories(reactor) -> dict[str, Callable[[], Any]]:
    """Built-in plugins by name. The script plugin is imported lazily so that an
    agent without it (or with it disabled) never loads it."""

    def scripts():
        from plugins.scripts import ScriptExecutionPlugin

        return ScriptExecutionPlugin(reactor)

    return {SCRIPTS_PLUGIN: scripts}


class AgentPlugins:
    """The enabled handler plugins, behind typed methods."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    @classmethod
    def empty(cls) -> AgentPlugins:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        return cls(pm)

    @classmethod
    def load(
        cls,
        reactor,
        enabled: Iterable[str] | None = None,
        *,
        builtins: dict[str, Callable[[], Any]] | None = None,
        entry_points: bool = True,
    ) -> AgentPlugins:
        """Register the built-in plugins and those of the entry-point group.

        ``enabled``: names to enable (None = all found). A name in ``enabled`` that
        nothing provides is a :class:`PluginError`. A built-in plugin whose module
        is not installed is skipped when not explicitly enabled.
        """
        self = cls.empty()
        wanted = None if enabled is None else set(enabled)
        factories = dict(_builtin_factories(reactor) if builtins is None else builtins)
        sources: dict[str, Callable[[], Any]] = {}
        for name, factory in factories.items():
            sources[name] = factory
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in sources:
                    log.warn("Plugin {name!r} from an entry point is ignored: that name is built in", name=ep.name)
                    continue
                sources[ep.name] = _entry_point_factory(ep)
        if wanted is not None:
            missing = sorted(wanted - set(sources))
            if missing:
                raise PluginError(
                    f"plugins: no installed plugin named {', '.join(map(repr, missing))}"
                    f" (installed: {', '.join(sorted(sources)) or 'none'})"
                )
        for name, factory in sources.items():
            if wanted is not None and name not in wanted:
                continue
            try:
                plugin = factory()
            except ModuleNotFoundError as e:
                if name in factories and wanted is None:
                    log.info("Built-in plugin {name!r} is not available ({e}); skipped", name=name, e=e)
                    continue
                raise PluginError(f"plugin {name!r} cannot be loaded: {e}") from None
            except Exception as e:
                raise PluginError(f"plugin {name!r} cannot be loaded: {type(e).__name__}: {e}") from None
            self.register(plugin, name)
        return self

    def register(self, plugin: Any, name: str) -> None:
        """Register one plugin object under ``name`` and check its hook names."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as e:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} is invalid: {e}") from None

    def names(self) -> list[str]:
        return sorted(n for n, _ in self.pm.list_name_plugin())

    def message_types(self) -> set[str]:
        """Every message type some enabled plugin handles."""
        types: set[str] = set()
        for result in self.pm.hook.ridgeline_agent_message_types():
            types.update(str(t) for t in result or ())
        return types

    def handle(self, message: dict, context: OperationContext) -> Deferred | None:
        """Ask the plugins to handle ``message``. Returns None when none took it,
        else a Deferred firing with an :class:`OperationResult` (or failing). A
        plugin raising synchronously becomes a failed Deferred."""
        try:
            outcome = self.pm.hook.ridgeline_agent_handle(message=message, context=context)
        except Exception:
            return fail()
        if outcome is None:
            return None
        if isinstance(outcome, Deferred):
            return outcome
        if inspect.iscoroutine(outcome):
            return Deferred.fromCoroutine(outcome)
        if inspect.isawaitable(outcome):
            return ensureDeferred(outcome)
        # Lenient: a plugin that already has its result may return it directly.
        return succeed(outcome)

    def cancel(self, operation_id: int) -> bool:
        """Ask the plugins to stop ``operation_id``; True if one took it."""
        return bool(self.pm.hook.ridgeline_agent_cancel(operation_id=operation_id))


def _entry_point_factory(ep: importlib.metadata.EntryPoint) -> Callable[[], Any]:
    def factory():
        obj = ep.load()
        if inspect.ismodule(obj):
            return obj
        if callable(obj):
            return obj()
        raise PluginError(f"entry point {ep.name!r} ({ep.value}) is neither a module nor callable")

    return factory


__all__ = ["AgentPlugins", "PluginError", "OperationResult", "OperationContext", "ENTRY_POINT_GROUP"]
