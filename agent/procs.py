"""Finding and killing what is left of an operation's process group after a crash.

A process group id can be reused once the group is empty, so the agent records
the group leader's start time with the pgid and kills only when it still matches.
Start times are read from ``/proc/<pid>/stat`` (field 22: clock ticks since boot).
Plugins should record exactly :func:`process_start_time`; for robustness the
comparison also accepts the same instant in seconds since boot or since the epoch.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

PROC = Path("/proc")
_HZ = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    rest = text[text.rindex(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def process_start_time(pid: int, proc: Path = PROC) -> float | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid, proc)
    if fields is None:
        return None
    return float(fields[19])  # field 22


def process_group(pid: int, proc: Path = PROC) -> int | None:
    fields = _stat_fields(pid, proc)
    return None if fields is None else int(fields[2])  # field 5


def _boot_time(proc: Path = PROC) -> float | None:
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def same_start(recorded: float, ticks: float, proc: Path = PROC) -> bool:
    """Whether a recorded start time denotes the start at ``ticks`` (see module doc)."""
    if abs(recorded - ticks) < 0.5:
        return True
    seconds = ticks / _HZ
    if abs(recorded - seconds) < 1.0:
        return True
    boot = _boot_time(proc)
    return boot is not None and abs(recorded - (boot + seconds)) < 2.0


def group_members(pgid: int, proc: Path = PROC) -> list[int]:
    members = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and process_group(int(entry.name), proc) == pgid:
            members.append(int(entry.name))
    return members


def kill_leftover_group(pgid: int, start_time: float | None, proc: Path = PROC) -> bool:
    """SIGKILL what is left of process group ``pgid``, if it is still the group
    that was recorded. Returns True if a signal was sent.

    - Leader alive: kill the group only if its start time matches.
    - Leader gone but members left: the kernel never hands out a pid that is in use
      as a pgid, so the members still belong to the recorded group; kill them if
      they started no earlier than the recorded leader.
    """
    if pgid <= 1 or pgid == os.getpgrp():
        return False
    leader_start = process_start_time(pgid, proc)
    if leader_start is not None:
        if start_time is None or not same_start(start_time, leader_start, proc):
            return False
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True
    members = group_members(pgid, proc)
    if not members:
        return False
    if start_time is not None:
        ok = [m for m in members if (t := process_start_time(m, proc)) is not None and t + 0.5 >= _as_ticks(start_time, proc)]
        if not ok:
            return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _as_ticks(recorded: float, proc: Path = PROC) -> float:
    """Best guess at ``recorded`` in ticks since boot (see :func:`same_start`)."""
    boot = _boot_time(proc)
    if boot is not None and recorded > boot:
        return (recorded - boot) * _HZ
    return recorded
