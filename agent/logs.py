"""Logging for the agent daemon: ``twisted.logger`` to stderr or ``<log_dir>/agent.log``.

The log file is reopened on SIGHUP so that logrotate can move it away.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


class ReopenableFile:
    """A text file that can be closed and opened again at the same path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = self._open()

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, text: str) -> int:
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        old, self._file = self._file, self._open()
        old.close()


class LogSetup:
    """Where the agent's log goes. ``log_dir`` None means stderr."""

    FILENAME = "agent.log"

    def __init__(self, log_dir: str | None, level: str) -> None:
        self.level = LEVELS[level]
        self.file: ReopenableFile | None = None
        if log_dir is not None:
            path = Path(log_dir)
            path.mkdir(parents=True, exist_ok=True)
            self.file = ReopenableFile(path / self.FILENAME)

    def observer(self):
        out = self.file if self.file is not None else sys.stderr
        predicate = LogLevelFilterPredicate(defaultLogLevel=self.level)
        return FilteringLogObserver(textFileLogObserver(out), [predicate])

    def start(self) -> None:
        # redirectStandardIO=False: stray prints stay on stdout, not in the log.
        globalLogBeginner.beginLoggingTo([self.observer()], redirectStandardIO=False)

    def reopen(self) -> None:
        if self.file is not None:
            self.file.reopen()
