"""Ridgeline example plugin: ``uptime-report``.

Two halves in one package:

- ``ridgeline_example_handler.agent`` (entry point ``ridgeline.agent``): the agent
  handler that answers an ``uptime-report`` message with this machine's uptime,
  load averages and the disk usage of the paths asked for;
- ``ridgeline_example_handler.server`` (entry point ``ridgeline.server``): the
  client activity type ``uptime-report`` that validates a request's parameters
  and turns an activity into the agent's message.
"""

MESSAGE_TYPE = "uptime-report"
