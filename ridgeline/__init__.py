"""Ridgeline: fleet management for Linux machines.

This small package holds only what every process entry point shares: the version
and the ``ridgeline`` command dispatcher. The real code lives in the top-level
packages ``protocol`` (the wire contract), ``server``, ``agent`` and ``plugins``.
"""

__version__ = "0.1.0"
