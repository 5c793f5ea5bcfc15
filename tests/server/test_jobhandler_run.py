"""The job-handler on a real database (SQLite and PostgreSQL) with a Clock: claim,
run, outcomes, time limits, progress, outputs, cancel, leases, stop."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa
from twisted.internet import defer

from protocol import codes
from server.config import ServerConfig
from server.db.tables import activities, job_queue
from server.jobhandler.jobcontext import JobCanceled

from jobs_support import make_world


@pytest.fixture
def world(server_db):
    return make_world(server_db)


def history(w, aid):
    return [(h.from_state, h.to_state, h.actor) for h in w.db.run_sync(w.db.activities.history_thd, aid)]


def test_success_failure_and_failed_result(world):
    ok = world.create(parameters={"do": "ok", "text": "all good"})
    bad = world.create(parameters={"do": "fail", "text": "no such thing"})
    res = world.create(parameters={"do": "result-failed"})
    world.start_handler()
    assert world.publish() == 3
    world.pump()
    a, b, c = world.get(ok.id), world.get(bad.id), world.get(res.id)
    assert (a.state, a.result_text, a.progress, a.result_code) == ("succeeded", "all good", 100, None)
    assert (b.state, b.result_text) == ("failed", "ValueError: no such thing")
    assert "Traceback" not in b.result_text
    assert (c.state, c.result_text, c.result_code) == ("failed", "it did not work", 7)
    assert history(world, ok.id) == [(None, "queued", "admin"), ("queued", "in-progress", "handler-1"),
                                     ("in-progress", "succeeded", "handler-1")]
    assert a.claimed_by == "handler-1" and a.completed_at == world.now
    # Every message was acknowledged.
    assert world.db.run_sync(lambda c: c.execute(sa.select(sa.func.count()).select_from(job_queue)).scalar()) == 0


def test_claim_records_holder_and_lease(world):
    a = world.create(parameters={"do": "wait"})
    world.start_handler()
    world.publish()
    got = world.get(a.id)
    assert got.state == "in-progress" and got.claimed_by == "handler-1"
    assert got.lease_expires_at == world.now + dt.timedelta(seconds=30)
    # Renewed every 10 s while it runs.
    world.pump(10)
    assert world.get(a.id).lease_expires_at == world.now + dt.timedelta(seconds=30)
    world.jobs.release(a.id, "fine")
    world.pump()
    assert world.get(a.id).state == "succeeded"


def test_message_for_activity_no_longer_queued_is_dropped(world):
    a = world.create(parameters={"do": "ok"})
    world.publish()  # published while queued
    world.db.run_sync(world.db.activities.apply_verb_thd, a.id, "cancel", actor="admin", now=world.now)
    before = history(world, a.id)
    world.start_handler()
    world.pump(1)
    got = world.get(a.id)
    assert got.state == "canceled" and world.jobs.started == []
    assert history(world, a.id) == before
    assert world.handler.stats["dropped"] == 1
    assert world.db.run_sync(lambda c: c.execute(sa.select(sa.func.count()).select_from(job_queue)).scalar()) == 0


def test_duplicate_messages_run_the_job_once(world):
    a = world.create(parameters={"do": "ok"})
    world.context.queue.queue.publish([a.id, a.id])
    world.context.queue.queue.publish([a.id])
    world.start_handler()
    world.pump(1)
    assert world.jobs.started == [a.id]
    assert world.get(a.id).state == "succeeded"


def test_time_limit_fails_with_code_102(world):
    a = world.create("quick-limit", {"do": "stubborn"})
    world.start_handler()
    world.publish()
    world.pump(4.9)
    assert world.get(a.id).state == "in-progress"
    world.pump(0.2)
    got = world.get(a.id)
    assert (got.state, got.result_code, got.result_name) == ("failed", codes.TIME_LIMIT, "time-limit")
    assert "5s" in got.result_text
    assert world.handler.active_jobs == {}


def test_configured_time_limit_overrides_the_type(server_db):
    w = make_world(server_db, config=ServerConfig(job_time_limits=(("quick-limit", 60),), job_time_limit=7))
    a = w.create("quick-limit", {"do": "wait"})
    b = w.create("test-job", {"do": "wait"})
    w.start_handler()
    w.publish()
    w.pump(7.5)
    assert w.get(b.id).result_code == codes.TIME_LIMIT  # the default applies to a type without its own
    assert w.get(a.id).state == "in-progress"
    w.pump(53)
    assert w.get(a.id).result_code == codes.TIME_LIMIT


def test_progress_is_stored(world):
    a = world.create(parameters={"do": "progress"})
    world.start_handler()
    world.publish()
    assert world.get(a.id).progress == 40
    world.jobs.release(a.id)
    world.pump()
    assert world.get(a.id).progress == 100


def test_output_is_stored_within_the_limit(server_db):
    w = make_world(server_db, config=ServerConfig(job_output_max_size=100))
    small = w.create(parameters={"do": "output", "size": 100, "name": "a.txt"})
    big = w.create(parameters={"do": "output", "size": 101, "name": "b.txt"})
    w.start_handler()
    w.publish()
    assert w.get(small.id).state == "succeeded"
    out = w.db.run_sync(w.db.joboutputs.get_thd, small.id, "a.txt")
    assert out.data == b"x" * 100 and out.info.content_type == "text/plain"
    got = w.get(big.id)
    assert got.state == "failed" and got.result_text.startswith("OutputTooLarge:")
    assert w.db.run_sync(w.db.joboutputs.list_thd, big.id) == []


def test_unknown_type_fails_with_no_handler(world):
    a = world.create("test-job", {"do": "ok"})
    world.db.run_sync(lambda c: c.execute(activities.update().where(activities.c.id == a.id).values(type="gone")))
    world.start_handler()
    world.publish()
    got = world.get(a.id)
    assert (got.state, got.result_code) == ("failed", codes.NO_HANDLER) and "gone" in got.result_text


def test_cancel_in_process_reaches_the_job_at_once(world):
    a = world.create(parameters={"do": "wait-cancel"})
    world.start_handler()
    world.publish()
    assert world.get(a.id).state == "in-progress"
    world.db.run_sync(world.db.activities.apply_verb_thd, a.id, "cancel", actor="admin", now=world.now)
    world.pump()  # no renewal interval passed: the cancel listener told the handler
    assert world.jobs.contexts[a.id].canceled
    assert a.id in world.jobs.finished and world.handler.active_jobs == {}
    got = world.get(a.id)
    assert got.state == "canceled" and got.result_code == codes.CANCELED
    assert world.handler.stats["canceled"] == 1


def test_cancel_from_another_process_is_noticed_at_lease_renewal(world):
    a = world.create(parameters={"do": "wait-cancel"})
    world.start_handler()
    world.publish()
    # Another process cancels: this handler's listener does not run.
    world.db.activities.cancel_listeners.clear()
    world.db.run_sync(world.db.activities.apply_verb_thd, a.id, "cancel", actor="admin", now=world.now)
    world.pump(9)
    assert not world.jobs.contexts[a.id].canceled
    world.pump(1)
    assert world.jobs.contexts[a.id].canceled and world.handler.active_jobs == {}
    assert world.get(a.id).state == "canceled"


def test_a_job_ignoring_the_cancel_is_abandoned_after_the_grace(world):
    a = world.create(parameters={"do": "stubborn"})
    world.start_handler(grace=5)
    world.publish()
    world.db.run_sync(world.db.activities.apply_verb_thd, a.id, "cancel", actor="admin", now=world.now)
    world.pump()
    assert a.id in world.handler.active_jobs
    world.pump(5)
    assert world.handler.active_jobs == {} and world.handler.stats["abandoned"] == 1
    # Its late writes are refused; the activity stays canceled.
    ctx = world.jobs.contexts[a.id]
    refused = []
    defer.Deferred.fromCoroutine(ctx.report_progress(50)).addErrback(lambda f: refused.append(f.type))
    assert refused == [JobCanceled]
    assert world.get(a.id).progress == 0
    assert world.get(a.id).state == "canceled"


def test_concurrency_limits_running_jobs(server_db):
    w = make_world(server_db, config=ServerConfig(job_concurrency=2))
    ids = [w.create(parameters={"do": "wait"}).id for _ in range(5)]
    w.start_handler()
    w.publish()
    w.pump(1)
    assert sorted(w.jobs.started) == ids[:2]
    assert [w.get(i).state for i in ids] == ["in-progress"] * 2 + ["queued"] * 3
    w.jobs.release(ids[0])
    w.pump(1)
    assert len(w.jobs.started) == 3


def test_stop_lets_running_jobs_finish_within_the_grace(world):
    a = world.create(parameters={"do": "wait"})
    b = world.create(parameters={"do": "stubborn"})
    world.start_handler(grace=10)
    world.publish()
    stopped = world.stop_handler()
    c = world.create(parameters={"do": "ok"})
    world.publish()
    world.jobs.release(a.id, "finished during shutdown")
    world.pump(1)
    assert world.get(a.id).state == "succeeded"
    assert stopped == []
    world.pump(10)
    assert stopped == [None]
    # The stubborn one is left to the lease rule; nothing new was claimed.
    assert world.get(b.id).state == "in-progress"
    assert world.get(c.id).state == "queued" and c.id not in world.jobs.started
    # Its lease is no longer renewed: the sweep (here the server's) ends it.
    world.pump(31)
    n = world.context.queue.sweep_expired_leases(world.now)
    world.pump()
    assert n.result == 1
    got = world.get(b.id)
    assert (got.state, got.result_code, got.result_name) == ("failed", codes.INTERRUPTED, "interrupted")


def test_jobs_can_read_and_fan_out(server_db):
    from server.db.computers import NewComputer

    w = make_world(server_db)
    db = w.db
    cid = db.run_sync(db.computers.create_thd, NewComputer(secure_id=b"s1", title="web1", hostname="web1", account_name="standalone",
                                                          accepted=True), w.now).id
    seen = {}

    async def fan_out(job):
        count, comps = await job.list_computers()
        n, acts = await job.list_activities(type="fan-out")
        seen["computers"] = (count, [c.title for c in comps])
        seen["activities"] = n
        seen["self"] = (await job.get_activity(job.activity.id)).state
        seen["thread"] = await job.run_in_thread(lambda x: x * 2, 21)
        made = await job.create_activity({"type": "execute-script", "computer_ids": [cid],
                                          "parameters": {"code": "#!/bin/sh\necho hi", "username": "root"}})
        return f"created {made.id}"

    from server.hookspecs import ActivityType, hookimpl

    class FanOut:
        @hookimpl
        def ridgeline_activity_types(self):
            return [ActivityType(name="fan-out", kind="server", parameters_schema={"type": "object"}, run=fan_out)]

    from plugins import execute_script_type

    w = make_world(server_db, extra_plugins=(FanOut(), execute_script_type))
    a = w.create("fan-out")
    w.start_handler()
    w.publish()
    got = w.get(a.id)
    assert got.state == "succeeded", got.result_text
    assert seen == {"computers": (1, ["web1"]), "activities": 1, "self": "in-progress", "thread": 42}
    child = w.get(int(got.result_text.split()[1]))
    assert (child.kind, child.type, child.computer_id, child.origin_id, child.creator) == (
        "client", "execute-script", cid, a.id, f"job:{a.id}")
