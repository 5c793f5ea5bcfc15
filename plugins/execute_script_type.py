"""Built-in server-side activity type ``execute-script`` (a client type).

The agent half is ``plugins.scripts``. Parameters (JSON Schema below):

- ``code`` (text, required): the script. Its size is limited by the server's
  ``script_max_size`` setting (the schema's ``x-ridgeline-max-size`` annotation
  names that setting; ``server.activityservice`` enforces it for every type).
- ``interpreter`` (optional): e.g. ``/bin/bash``. Without it the interpreter comes
  from the code's ``#!`` line; with neither the request is refused. An explicit
  interpreter wins over the ``#!`` line.
- ``username`` (required): the user the script runs as.
- ``time_limit`` (seconds, optional): the agent kills the script after it.
- ``env`` (optional): mapping of variable names to strings, merged over the
  variables the server sends (``LANDSCAPE_*``, which a request may not set).
- ``attachments`` (optional): mapping of file name to attachment id (uploaded with
  ``POST /api/v1/attachments``); the server checks they exist and links them.

The agent message carries the code without its ``#!`` line (the agent writes
its own from ``interpreter``), as Landscape's server does.
"""

from __future__ import annotations

from protocol import messages
from server.hookspecs import ActivityType, Delivery, ParameterError, hookimpl

NAME = "execute-script"

PARAMETERS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["code", "username"],
    "properties": {
        "code": {
            "type": "string",
            "description": "The script. A first line '#!INTERPRETER' gives the interpreter when "
                           "'interpreter' is absent.",
            "x-ridgeline-max-size": "script_max_size",
        },
        "interpreter": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1024,
            "pattern": "^/[^\\n\\r\\x00]*$",
            "description": "Absolute path of the interpreter, optionally with arguments; wins over '#!'.",
        },
        "username": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": "^[^\\s:/\\x00]+$",
            "description": "The user the script runs as.",
        },
        "time_limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": 30 * 86400,
            "description": "Seconds before the agent stops the script (no limit when absent).",
        },
        "env": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,254}$", "not": {"pattern": "^LANDSCAPE_"}},
            "additionalProperties": {"type": "string", "pattern": "^[^\\x00]*$"},
            "description": "Environment variables for the script (LANDSCAPE_* are the server's).",
        },
        "attachments": {
            "type": "object",
            "propertyNames": {
                "minLength": 1,
                "maxLength": 255,
                "pattern": "^[^/\\x00]+$",
                "not": {"enum": [".", ".."]},
            },
            "additionalProperties": {"type": "integer", "minimum": 1},
            "description": "File name -> attachment id; the files are placed next to the script.",
        },
    },
}


def split_shebang(code: str) -> tuple[str | None, str]:
    """``(interpreter from a '#!' first line or None, code without that line)``."""
    if not code.startswith("#!"):
        return None, code
    first, _, rest = code.partition("\n")
    interpreter = first[2:].strip().rstrip("\r")
    return (interpreter or None), rest


def validate(params: dict) -> dict:
    """Settle the interpreter: explicit wins, else the ``#!`` line, else refused."""
    shebang, _ = split_shebang(params["code"])
    interpreter = params.get("interpreter") or shebang
    if not interpreter:
        raise ParameterError(
            "parameters.interpreter",
            "no interpreter: give 'interpreter' or start the code with a '#!' line (e.g. #!/bin/sh)",
        )
    if not interpreter.startswith("/"):
        raise ParameterError("parameters.interpreter",
                             f"the interpreter {interpreter!r} must be an absolute path (e.g. /bin/sh)")
    return {**params, "interpreter": interpreter}


def to_message(delivery: Delivery) -> dict:
    """The agent's ``execute-script`` message for one delivered activity."""
    params = delivery.activity.parameters
    _, code = split_shebang(params["code"])
    interpreter = params.get("interpreter") or split_shebang(params["code"])[0]
    # The server's LANDSCAPE_* variables cannot be overridden (the schema refuses
    # them in a request), so the merge order only matters for stored old data.
    env = {**params.get("env", {}), **dict(delivery.env)}
    return messages.execute_script(
        operation_id=delivery.activity.id,
        interpreter=interpreter,
        code=code,
        username=params["username"],
        time_limit=params.get("time_limit"),
        attachments={name: int(aid) for name, aid in (params.get("attachments") or {}).items()},
        env=env,
    )


EXECUTE_SCRIPT = ActivityType(
    name=NAME,
    kind="client",
    description="Run a script on each computer as a given user and report its output.",
    parameters_schema=PARAMETERS_SCHEMA,
    validate=validate,
    to_message=to_message,
    attachments_parameter="attachments",
)


@hookimpl
def ridgeline_activity_types():
    return [EXECUTE_SCRIPT]
