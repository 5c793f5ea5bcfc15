"""Server half: the client activity type ``uptime-report``.

The server lists it in ``GET /api/v1/activity-types``, validates requests with
``PARAMETERS_SCHEMA`` and, when a computer's agent exchanges, calls
:func:`to_message` to build the message it hands over. The server only sends the
message to agents whose plugins declared the type (``client-accepted-types``).
"""

from __future__ import annotations

from server.hookspecs import ActivityType, Delivery, ParameterError, hookimpl

from ridgeline_example_handler import MESSAGE_TYPE

PARAMETERS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "paths": {
            "type": "array",
            "items": {"type": "string", "pattern": "^/[^\\x00]*$", "maxLength": 4096},
            "minItems": 1,
            "maxItems": 20,
            "default": ["/"],
            "description": "Absolute paths whose file system usage is reported (default: /).",
        },
    },
}


def validate(params: dict) -> dict:
    """Checks the schema cannot express: no path twice. Returns the parameters
    with the default filled in, so the stored activity shows what was asked."""
    paths = params.get("paths", ["/"])
    if len(set(paths)) != len(paths):
        raise ParameterError("parameters.paths", "a path is listed twice")
    return {**params, "paths": paths}


def to_message(delivery: Delivery) -> dict:
    """The agent's message for one delivered activity; its id is the operation id."""
    return {
        "type": MESSAGE_TYPE,
        "operation-id": delivery.activity.id,
        "paths": list(delivery.activity.parameters["paths"]),
    }


UPTIME_REPORT = ActivityType(
    name=MESSAGE_TYPE,
    kind="client",
    description="Report the computer's uptime, load averages and disk usage.",
    parameters_schema=PARAMETERS_SCHEMA,
    validate=validate,
    to_message=to_message,
    # Reading /proc takes no time: an agent that has not answered within 10
    # minutes of delivery is not going to.
    answer_deadline=600,
)


@hookimpl
def ridgeline_activity_types():
    return [UPTIME_REPORT]
