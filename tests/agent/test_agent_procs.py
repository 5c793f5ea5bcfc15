"""Killing what is left of a crashed operation's process group, checking start times."""

from __future__ import annotations

import os
import subprocess
import time

from agent.procs import kill_leftover_group, process_start_time


def spawn_group():
    # A group leader (a shell) with a background child, like a script that forks.
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    time.sleep(0.2)
    return proc


def wait_gone(proc, timeout=5.0):
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_kills_the_recorded_group():
    proc = spawn_group()
    try:
        start = process_start_time(proc.pid)
        assert start is not None
        assert os.getpgid(proc.pid) == proc.pid
        assert kill_leftover_group(proc.pid, start) is True
        assert wait_gone(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def test_a_reused_pgid_is_not_killed():
    proc = spawn_group()
    try:
        start = process_start_time(proc.pid)
        # A different recorded start time: this is someone else's group now.
        assert kill_leftover_group(proc.pid, start - 1000) is False
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_nothing_to_kill_for_a_gone_group():
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    assert kill_leftover_group(proc.pid, 1.0) is False
