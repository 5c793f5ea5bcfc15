"""End to end on the embedded default: one ``ridgeline server`` (SQLite, ``db``
queue, in-process job-handler) and two ``ridgeline agent`` processes, each with
its own data directory and config, over loopback. No mocks: activities are asked
for through the REST API, and the agents run real scripts as the current user.

The cluster is shared by the tests of this module (starting it costs seconds);
each test leaves it running and healthy for the next.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from procs import (
    Cluster,
    assert_ended_once,
    line_count,
    pid_running,
    running_cluster,
    wait_until,
)

pytestmark = pytest.mark.e2e

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, user):
    with running_cluster(tmp_path_factory.mktemp("e2e-sqlite"), user, ("agent-1", "agent-2")) as c:
        yield c


def _parse(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _utc(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _running_script(files: Path, name: str, seconds: int = 60) -> str:
    """A script that counts its runs, records its pid and its background child's, and waits."""
    return (f"#!/bin/sh\necho run >> {files}/{name}.runs\necho $$ > {files}/{name}.pid.tmp\n"
            f"mv {files}/{name}.pid.tmp {files}/{name}.pid\n"
            f"sleep {seconds} &\necho $! > {files}/{name}.child\nwait\n")


def _pids(files: Path, name: str) -> list[int]:
    return [int((files / f"{name}.{ext}").read_text()) for ext in ("pid", "child")
            if (files / f"{name}.{ext}").exists()]


def _wait_started(cluster: Cluster, name: str) -> None:
    wait_until(lambda: (cluster.files / f"{name}.pid").exists() and (cluster.files / f"{name}.child").exists(),
               f"script {name!r} to start", alive=cluster.alive)


def test_every_kind_of_script_activity_ends_as_it_should(cluster):
    files = cluster.files
    now = dt.datetime.now(UTC)
    first = cluster.script("agent-1", f"#!/bin/sh\nsleep 2\necho \"hello from $(hostname)\"\n"
                                      f"echo run >> {files}/plain.runs\n")
    scheduled = cluster.script("agent-2", "#!/bin/sh\necho scheduled\n",
                               deliver_after=_utc(now + dt.timedelta(seconds=6)))
    # Not delivered before its time.
    assert cluster.state(scheduled["id"])["state"] == "scheduled"
    approval = cluster.script("agent-1", "#!/bin/sh\necho approved\n", requires_approval=True)
    waiting = cluster.script("agent-2", "#!/bin/sh\necho after the first\n",
                             wait_for={"activity_id": first["id"], "threshold": 100})
    limited = cluster.script("agent-1", "#!/bin/sh\necho sleeping\nsleep 30\n", time_limit=2)
    cancel = cluster.script("agent-2", _running_script(files, "cancel"))
    ids = [a["id"] for a in (first, scheduled, approval, waiting, limited, cancel)]

    # Until someone approves it, the approval one waits.
    a = cluster.state(approval["id"])
    assert (a["state"], a["blocked_reason"]) == ("blocked", "approval")

    cluster.api.post(f"/activities/{approval['id']}/approve", {"reason": "e2e"})
    _wait_started(cluster, "cancel")
    assert cluster.state(cancel["id"])["state"] == "in-progress"
    cluster.api.post(f"/activities/{cancel['id']}/cancel", {"reason": "e2e"})

    done = cluster.final(*ids)
    assert_ended_once(done[first["id"]], "succeeded")
    assert "hello from" in done[first["id"]]["result_text"]
    assert line_count(files / "plain.runs") == 1

    s = done[scheduled["id"]]
    assert_ended_once(s, "succeeded")
    assert "scheduled" in s["result_text"]
    assert _parse(s["delivered_at"]) >= _parse(s["deliver_after"])

    ap = done[approval["id"]]
    assert_ended_once(ap, "succeeded")
    assert ap["approved_at"] and "approved" in ap["result_text"]

    w = done[waiting["id"]]
    assert_ended_once(w, "succeeded")
    assert _parse(w["delivered_at"]) >= _parse(done[first["id"]]["completed_at"])

    assert_ended_once(done[limited["id"]], "failed", "time-limit")
    assert "sleeping" in done[limited["id"]]["result_text"]

    assert_ended_once(done[cancel["id"]], "canceled")
    assert line_count(files / "cancel.runs") == 1
    # The canceled script and its background child are gone.
    wait_until(lambda: not any(pid_running(p) for p in _pids(files, "cancel")), "the canceled script to be gone",
               timeout=15)


def test_group_across_both_agents(cluster):
    files = cluster.files
    parent = cluster.script(["agent-1", "agent-2"],
                            f"#!/bin/sh\necho \"group member $RIDGELINE_E2E\"\necho $$ >> {files}/group.runs\n")
    assert parent["is_group"] and parent["children_count"] == 2
    children = cluster.api.get("/activities", parent_id=parent["id"], limit=10)["results"]
    assert sorted(c["computer_id"] for c in children) == sorted(cluster.computers.values())

    done = cluster.final(parent["id"], *(c["id"] for c in children))
    assert_ended_once(done[parent["id"]], "succeeded")
    for c in children:
        assert_ended_once(done[c["id"]], "succeeded")
        # The marker reaches the scripts (so the leftover checks can see them).
        assert f"group member {cluster.procs.marker}" in done[c["id"]]["result_text"]
    assert line_count(files / "group.runs") == 2


def test_agent_killed_mid_script_reports_interrupted_and_runs_nothing_twice(cluster):
    files = cluster.files
    agent = cluster.agents["agent-1"]
    act = cluster.script("agent-1", _running_script(files, "killed"))
    _wait_started(cluster, "killed")
    pids = _pids(files, "killed")
    assert all(pid_running(p) for p in pids)
    assert cluster.state(act["id"])["state"] == "in-progress"

    agent.kill9()
    # The crash left the script running: only the restarted agent can end it.
    assert all(pid_running(p) for p in pids)
    assert set(pids) <= set(cluster.procs.leftovers())
    agent.start()

    done = cluster.final(act["id"])
    assert_ended_once(done[act["id"]], "failed", "interrupted")
    assert not any(pid_running(p) for p in pids), "the interrupted script is still running"
    assert line_count(files / "killed.runs") == 1

    # The restarted agent works, and several exchanges later the interrupted
    # script has still not run again.
    after = cluster.script("agent-1", "#!/bin/sh\necho after the restart\n")
    assert_ended_once(cluster.final(after["id"])[after["id"]], "succeeded")
    assert line_count(files / "killed.runs") == 1


def test_server_restarted_between_delivery_and_result(cluster):
    files = cluster.files
    act = cluster.script("agent-2", f"#!/bin/sh\necho run >> {files}/restart.runs\nsleep 3\necho finished\n"
                                    f"touch {files}/restart.done\n")
    wait_until(lambda: line_count(files / "restart.runs") == 1, "the script to start", alive=cluster.alive)
    assert cluster.state(act["id"])["state"] == "in-progress"

    # SIGTERM while the script runs; the script ends while no server listens,
    # so its result can only come from the agent's durable outbox.
    server = cluster.server
    assert server.stop() == 0, server.child.log_tail()
    agent = cluster.agents["agent-2"]
    wait_until((files / "restart.done").exists, "the script to finish", alive=agent.child.check_alive)
    server.start(server.port)  # the same data and port

    done = cluster.final(act["id"])
    assert_ended_once(done[act["id"]], "succeeded")
    assert "finished" in done[act["id"]]["result_text"]
    assert line_count(files / "restart.runs") == 1


def test_nothing_left_running_and_no_errors_logged(cluster):
    # Every script of this module has ended; none lingers in the background.
    wait_until(lambda: not cluster.procs.leftovers(), "no script processes left", timeout=15)
    # And no process logged a traceback or a critical event.
    assert cluster.procs.log_problems() == []
