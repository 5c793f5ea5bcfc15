"""Process-group helpers for the script plugin: signalling and the launcher.

Linux only (like the agent): process facts come from ``/proc``. Start times are
recorded with :func:`agent.procs.process_start_time` (clock ticks since boot,
field 22 of ``/proc/<pid>/stat``), the agent core's own definition. A start
time survives ``exec``, so the launcher's start time is the script's.
"""

from __future__ import annotations

import os
import signal

__all__ = [
    "LAUNCHER",
    "group_alive",
    "signal_group",
]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None.

    The command name (field 2) may hold spaces and parentheses, so the split
    starts after the last ``)``; the returned list starts at field 3 (state).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    end = raw.rfind(b")")
    if end < 0:
        return None
    return raw[end + 1 :].decode("ascii", "replace").split()


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member that is not a zombie.

    Zombies count as gone: they run nothing, and an orphan's zombie may linger
    when PID 1 does not reap (as in some containers).
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Someone else's group: it exists, and we cannot signal it anyway.
        return True
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        # fields[0] is the state (field 3), fields[2] the pgrp (field 5).
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Only members we may not signal (an unprivileged agent and a setuid
        # program): the group exists; nothing more can be done from here.
        pass
    return True


# The pre-exec launcher, run as ``python -I -S -c LAUNCHER`` by the agent (as
# root when it runs scripts for other users). Its own environment is empty and
# isolated mode ignores PYTHON* variables, so nothing from the server's ``env``
# (LD_PRELOAD, PYTHONPATH, ...) can act on it while it still has the agent's
# privileges; the script's environment arrives as JSON on stdin instead.
#
# Order matters:
# 1. setsid first, so the whole script tree is one process group, pgid = pid.
# 2. Read the spec from stdin to EOF. The agent writes it only after it has
#    durably recorded the group; if the agent dies before that, stdin hits EOF
#    with no valid spec and the launcher exits 125 without running anything.
# 3. Reset signal dispositions and mask: Python ignores SIGPIPE and SIGXFSZ,
#    and an ignored signal stays ignored across exec.
# 4. Drop to the user: supplementary groups, then gid, then uid (only when they
#    differ and we are root), umask 022, cwd = home or "/" (tried as the user).
# 5. fd 2 = fd 1 so stdout and stderr share one pipe, in arrival order.
# 6. exec. fd 3 is close-on-exec: EOF on it without data means exec succeeded;
#    otherwise the launcher wrote why it could not start the script.
LAUNCHER = r"""
import json, os, signal
os.setsid()
chunks = []
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    chunks.append(chunk)
try:
    spec = json.loads(b"".join(chunks))
    script = spec["script"]
except Exception:
    os._exit(125)
try:
    os.set_inheritable(3, False)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for sig in signal.valid_signals():
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    uid, gid, groups = spec["uid"], spec["gid"], spec["groups"]
    if os.geteuid() == 0:
        if sorted(set(os.getgroups())) != sorted(set(groups)):
            os.setgroups(groups)
        if (os.getgid(), os.getegid()) != (gid, gid):
            os.setgid(gid)
        if (os.getuid(), os.geteuid()) != (uid, uid):
            os.setuid(uid)
    os.umask(0o022)
    try:
        os.chdir(spec["home"])
    except OSError:
        os.chdir("/")
    os.dup2(1, 2)
    os.execve(script, [script], spec["env"])
except BaseException as e:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    try:
        os.write(3, reason.encode("utf-8", "replace"))
    finally:
        os._exit(127)
"""
