"""``kill -9`` of a real agent process at the moments that matter, against a real
server (SQLite) over loopback: no result is lost, no work is repeated.

The agent exchanges only every 3 s here (pings every second), so the time
between "the script finished" and "the result reached the server" is wide enough
to kill the agent inside it. What the agent had durably recorded when it died
(its own SQLite store, read after the kill) says which end is the right one:

- the operation still ``running`` in the store → after the restart the agent
  stops what is left of it and reports ``failed``/``interrupted``;
- the operation ``done`` → its result was in the durable outbox (or already
  sent), and the server gets it: ``succeeded``, once.

Either way the script ran exactly once and nothing of it is left running.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from procs import (
    Agent,
    Cluster,
    assert_ended_once,
    get_activity,
    line_count,
    pid_running,
    running_cluster,
    wait_final,
    wait_until,
)

pytestmark = pytest.mark.e2e


class Crashy(Cluster):
    """The cluster of one agent, ``crashy``, that the tests kill."""

    @property
    def agent(self) -> Agent:
        return self.agents["crashy"]

    def start_script(self, code: str) -> int:
        return self.script("crashy", code)["id"]

    def operation_state(self, operation_id: int) -> str | None:
        """The operation's state in the agent's own store (read-only; the agent
        may be running: SQLite in WAL mode lets a reader in)."""
        path = self.agent.store_path
        if not path.exists():
            return None
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT state FROM operations WHERE operation_id = ?", (operation_id,)).fetchone()
        except sqlite3.OperationalError:  # the store being created
            return None
        finally:
            conn.close()
        return row[0] if row else None


@pytest.fixture(scope="module")
def crashy(tmp_path_factory, user):
    # Exchanges only every 3 s: room to kill the agent between script and result.
    with running_cluster(tmp_path_factory.mktemp("e2e-crash"), user, ("crashy",), Crashy,
                         exchange_interval=3, urgent_exchange_interval=3, ping_interval=1) as c:
        yield c


def _restart_and_wait(c: Crashy, activity_id: int, runs: Path) -> dict:
    """Start the agent again; with it, another script on the same agent, which
    runs to its end: by then several exchanges have passed since the restart,
    and the crashed operation must still have run at most once."""
    later = c.start_script("#!/bin/sh\necho later\n")
    c.agent.start()
    done = wait_final(c.api, [activity_id, later], alive=c.alive)
    assert_ended_once(done[later], "succeeded")
    assert line_count(runs) <= 1
    return done[activity_id]


def test_killed_right_after_receiving_an_operation(crashy):
    c = crashy
    runs, pid_file = c.files / "received.runs", c.files / "received.pid"
    act = c.start_script(f"#!/bin/sh\necho run >> {runs}\necho $$ > {pid_file}\nsleep 60\n")
    # The moment the agent has recorded the operation (before, or just as, the script starts).
    wait_until(lambda: c.operation_state(act) is not None, "the agent to record the operation",
               alive=c.alive, interval=0.01)
    c.agent.kill9()
    assert c.operation_state(act) == "running"

    a = _restart_and_wait(c, act, runs)
    assert_ended_once(a, "failed", "interrupted")
    assert c.operation_state(act) == "interrupted"
    # It ran at most once (the kill may have come before the script began), and
    # whatever began is no longer running.
    assert line_count(runs) <= 1
    if pid_file.exists():
        assert not pid_running(int(pid_file.read_text()))
    wait_until(lambda: not c.procs.leftovers(), "no script processes left", timeout=15)


def test_killed_while_the_script_runs(crashy):
    c = crashy
    runs, pid_file = c.files / "running.runs", c.files / "running.pid"
    act = c.start_script(f"#!/bin/sh\necho run >> {runs}\necho $$ > {pid_file}.tmp\nmv {pid_file}.tmp {pid_file}\n"
                   "sleep 60\n")
    wait_until(pid_file.exists, "the script to start", alive=c.alive, interval=0.05)
    pid = int(pid_file.read_text())
    c.agent.kill9()
    assert pid_running(pid) and c.operation_state(act) == "running"

    a = _restart_and_wait(c, act, runs)
    assert_ended_once(a, "failed", "interrupted")
    assert not pid_running(pid), "the interrupted script is still running"
    assert line_count(runs) == 1


def test_killed_once_the_result_is_in_the_outbox(crashy):
    c = crashy
    runs, marker = c.files / "outbox.runs", c.files / "outbox.done"
    act = c.start_script(f"#!/bin/sh\necho run >> {runs}\necho done > {marker}\necho finished\n")
    # The agent marks the operation done and queues its result in one
    # transaction; the next exchange is up to 3 s away.
    wait_until(lambda: c.operation_state(act) == "done", "the agent to record the result",
               alive=c.alive, interval=0.01)
    c.agent.kill9()
    delivered_before_kill = get_activity(c.api, act)["state"] == "succeeded"

    a = _restart_and_wait(c, act, runs)
    assert_ended_once(a, "succeeded")
    assert "finished" in a["result_text"]
    assert line_count(runs) == 1
    # Not an assertion on timing, a record of which path this run took.
    print(f"result delivered {'before' if delivered_before_kill else 'after'} the kill")


def test_killed_right_after_the_script_finished(crashy):
    c = crashy
    runs, marker = c.files / "finished.runs", c.files / "finished.done"
    act = c.start_script(f"#!/bin/sh\necho run >> {runs}\necho done > {marker}\necho finished\n")
    wait_until(marker.exists, "the script to write its marker", alive=c.alive, interval=0.005)
    c.agent.kill9()
    recorded = c.operation_state(act)
    assert recorded in ("running", "done")
    print(f"killed with the operation {recorded}")

    a = _restart_and_wait(c, act, runs)
    if recorded == "done":  # the result was durable: delivered, once
        assert_ended_once(a, "succeeded")
        assert "finished" in a["result_text"]
    else:  # the agent had not seen the exit yet: interrupted, not run again
        assert_ended_once(a, "failed", "interrupted")
    assert line_count(runs) == 1
    wait_until(lambda: not c.procs.leftovers(), "no script processes left", timeout=15)


def test_no_errors_logged(crashy):
    # kill -9 and restarts are warnings at most: no traceback, nothing critical.
    assert crashy.procs.log_problems() == []
