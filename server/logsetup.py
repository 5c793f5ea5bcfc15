"""Logging for server-side processes: twisted.logger events, as text, to stderr."""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)


def start_logging(level: str = "info", stream=None) -> None:
    """Send log events at ``level`` and above to ``stream`` (stderr).

    Call once, from a command's ``run`` (the process's composition root).
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer = FilteringLogObserver(textFileLogObserver(stream or sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
