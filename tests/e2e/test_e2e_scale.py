"""End to end at scale: PostgreSQL + RabbitMQ, two ``ridgeline server`` processes
on one database (both ``--no-job-handler``), one agent on each, and two separate
``ridgeline job-handler`` processes. A group of script activities across both
agents and 200 server activities: every one ends as expected, exactly once.

The server activities are of a tiny job type from a plugin package built for the
test (on the children's ``PYTHONPATH``): each run appends ``<activity id>
<job-handler pid>`` to a file, so "ran once" is counted from what really ran, and
the database history says each was claimed once and ended once.
"""

from __future__ import annotations

import secrets
from collections import Counter

import pytest
import sqlalchemy as sa

from procs import (
    FINAL_STATES,
    Agent,
    JobHandler,
    Processes,
    Server,
    line_count,
    script_request,
    wait_final,
    wait_for_computers,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.amqp]

JOBS = 200
JOB_TYPE = "e2e-append"

PLUGIN = '''
import os

from twisted.internet.task import deferLater

from server.hookspecs import ActivityType, hookimpl

RAN = {ran!r}


async def run(job):
    # A little work, so both job-handlers get their share of the queue.
    await deferLater(job.reactor, 0.05, lambda: None)
    fd = os.open(RAN, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{{job.activity.id}} {{os.getpid()}}\\n".encode())
    finally:
        os.close(fd)
    return f"appended {{job.activity.id}}"


@hookimpl
def ridgeline_activity_types():
    return [ActivityType(name="{name}", kind="server", description="e2e: append one line",
                         parameters_schema={{"type": "object", "additionalProperties": False}}, run=run)]
'''


def test_two_servers_two_job_handlers_on_postgresql_and_rabbitmq(tmp_path, postgres_url, amqp_url,
                                                                  make_distribution, user, procs: Processes):
    # (procs after the services: its finalizer stops the processes before the
    # test database is dropped.)
    ran = tmp_path / "jobs.ran"
    dist = make_distribution("ridgeline-e2e-job", files={"e2e_job_plugin.py": PLUGIN.format(ran=str(ran),
                                                                                          name=JOB_TYPE)},
                             entry_points={"ridgeline.jobs": {"e2e_append": "e2e_job_plugin"}})
    procs.env["PYTHONPATH"] = ":".join(filter(None, [str(dist), procs.env.get("PYTHONPATH")]))
    key = secrets.token_urlsafe(16)

    # The first server migrates the new database; the second finds it current.
    servers = []
    for n in (1, 2):
        servers.append(Server(procs, f"server-{n}", data_dir=tmp_path / f"server-{n}", registration_key=key,
                              database_url=postgres_url, queue=amqp_url, job_handler=False).start())
    handlers = [JobHandler(procs, f"job-handler-{n}", server=servers[0]) for n in (1, 2)]
    agents = [Agent(procs, f"agent-{n}", url=servers[n - 1].message_system_url, registration_key=key,
                    user=user).start() for n in (1, 2)]
    children = [s.child for s in servers] + [h.child for h in handlers] + [a.child for a in agents]

    def alive():
        for child in children:
            child.check_alive()

    apis = [s.api() for s in servers]
    computers = wait_for_computers(apis[0], [a.name for a in agents], alive=alive)
    for h in handlers:  # both consuming before the work arrives, so both get some
        wait_until(lambda: all(text in h.child.log_path.read_text() for text in ("connected to RabbitMQ", "started")),
                   f"{h.child.name} to consume", alive=alive)

    # A group of scripts across both agents (each agent served by its own server).
    files = tmp_path / "files"
    files.mkdir()
    group = apis[0].post("/activities", script_request(
        list(computers.values()), f"#!/bin/sh\necho run >> {files}/group.runs\necho \"on $(hostname)\"\n",
        user=user, marker=procs.marker))
    assert group["children_count"] == 2
    # 200 server activities, asked for half through each server.
    jobs = [apis[i % 2].post("/activities", {"type": JOB_TYPE, "summary": f"e2e job {i}", "parameters": {}})["id"]
            for i in range(JOBS)]
    assert len(set(jobs)) == JOBS

    wait_until(lambda: line_count(ran) >= JOBS, f"{JOBS} jobs to run", timeout=90, alive=alive)
    done = wait_final(apis[1], [group["id"], *jobs], timeout=60, alive=alive)

    # Every activity ended succeeded ...
    assert Counter(done[j]["state"] for j in jobs) == {"succeeded": JOBS}
    assert done[group["id"]]["state"] == "succeeded"
    script_children = apis[1].get("/activities", parent_id=group["id"], limit=10)["results"]
    assert sorted(c["computer_id"] for c in script_children) == sorted(computers.values())
    assert all(c["state"] == "succeeded" and "on " in c["result_text"] for c in script_children)
    assert line_count(files / "group.runs") == 2

    # ... exactly once: one transition into a final state each, each job claimed
    # (queued -> in-progress) once, and run once, by one of the two job-handlers.
    ids = [*jobs, group["id"], *(c["id"] for c in script_children)]
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT activity_id, from_state, to_state FROM activity_history "
                "WHERE event = 'transition' AND activity_id = ANY(:ids)"), {"ids": ids}).all()
    finally:
        engine.dispose()
    finals = Counter(r.activity_id for r in rows if r.to_state in FINAL_STATES)
    assert {i: finals[i] for i in ids if finals[i] != 1} == {}
    claims = Counter(r.activity_id for r in rows if (r.from_state, r.to_state) == ("queued", "in-progress"))
    assert {j: claims[j] for j in jobs if claims[j] != 1} == {}

    lines = [line.split() for line in ran.read_text().splitlines()]
    runs = Counter(int(aid) for aid, _ in lines)
    assert {j: runs[j] for j in jobs if runs[j] != 1} == {} and set(runs) == set(jobs)
    by_pid = Counter(int(pid) for _, pid in lines)
    assert set(by_pid) == {h.child.pid for h in handlers}, by_pid  # both job-handlers did work, nothing else

    # Every process stops cleanly on SIGTERM, and none logged a bug.
    for child in children:
        assert child.stop() == 0, f"{child.name} exited non-zero:\n{child.log_tail()}"
    assert procs.log_problems() == []
