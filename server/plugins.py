"""The server's plugin manager and the registry of activity types it yields.

``build_plugin_manager(builtins, enabled_entry_points=True)`` registers the given
built-in plugins explicitly, then every entry point of the groups in
``server.hookspecs.ENTRY_POINT_GROUPS``. ``ActivityTypes`` is the typed facade the
rest of the server uses: look a type up by name, list them, validate parameters.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Iterable, Mapping

import jsonschema
import pluggy

from server import hookspecs
from server.hookspecs import ActivityType, ParameterError


class PluginError(Exception):
    """A plugin could not be loaded, or declares something inconsistent."""


def default_builtins() -> list[object]:
    """The built-in server plugins, imported when the manager is built."""
    builtins: list[object] = []
    from plugins import execute_script_type

    builtins.append(execute_script_type)
    try:
        from plugins.jobs import builtin_job_plugins
    except ImportError:  # the job plugins package is optional while being built
        pass
    else:
        builtins.extend(builtin_job_plugins())
    return builtins


def build_plugin_manager(builtins: Iterable[object] | None = None, *, load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in default_builtins() if builtins is None else builtins:
        pm.register(plugin)
    if load_entry_points:
        for group in hookspecs.ENTRY_POINT_GROUPS:
            for ep in entry_points(group=group):
                try:
                    plugin = ep.load()
                except Exception as e:
                    raise PluginError(f"cannot load server plugin {ep.name!r} ({ep.value}) from {group}: {e}") from e
                if isinstance(plugin, type):
                    plugin = plugin()
                if pm.is_registered(plugin):
                    continue
                pm.register(plugin, name=f"{group}:{ep.name}")
    return pm


class ActivityTypes:
    """Every activity type declared by the registered plugins, by name."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._types: dict[str, ActivityType] = {}
        for declared in pm.hook.ridgeline_activity_types():
            for t in declared or ():
                if not isinstance(t, ActivityType):
                    raise PluginError(f"a plugin declared {t!r}, which is not a server.hookspecs.ActivityType")
                if t.name in self._types:
                    raise PluginError(f"activity type {t.name!r} is declared by two plugins")
                jsonschema.Draft202012Validator.check_schema(t.parameters_schema)
                self._types[t.name] = t
        self._validators = {
            name: jsonschema.Draft202012Validator(t.parameters_schema) for name, t in self._types.items()
        }

    @classmethod
    def from_plugins(cls, builtins: Iterable[object] | None = None, *, load_entry_points: bool = True) -> "ActivityTypes":
        return cls(build_plugin_manager(builtins, load_entry_points=load_entry_points))

    def __contains__(self, name: str) -> bool:
        return name in self._types

    def get(self, name: str) -> ActivityType | None:
        return self._types.get(name)

    def all(self) -> list[ActivityType]:
        return [self._types[n] for n in sorted(self._types)]

    def validate(self, name: str, parameters: Mapping) -> dict:
        """Validated, normalised parameters; :class:`ParameterError` names the first
        bad field (``parameters.<path>``)."""
        t = self._types[name]
        errors = sorted(self._validators[name].iter_errors(parameters), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            path = ".".join(str(p) for p in e.absolute_path)
            if e.validator == "required":
                missing = next((r for r in e.validator_value if r not in e.instance), "")
                path = ".".join(filter(None, [path, missing]))
            elif e.validator == "additionalProperties" and isinstance(e.instance, dict):
                extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
                path = ".".join(filter(None, [path, extra[0] if extra else ""]))
            raise ParameterError("parameters" + (f".{path}" if path else ""), e.message)
        params = dict(parameters)
        if t.validate is not None:
            params = t.validate(params)
        return params
