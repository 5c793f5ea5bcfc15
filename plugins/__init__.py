"""Ridgeline's built-in plugins: agent message handlers and server job plugins.

They use the same hook specifications as third-party plugins
(``agent.hookspecs``, ``server.hookspecs``) and are registered explicitly.
"""
