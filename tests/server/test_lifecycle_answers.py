"""No-answer deadlines, provisional cancels, late results and cancel of groups,
through the scheduler on a real database; races on PostgreSQL."""

import datetime as dt
import threading

import pytest

from protocol import codes
from server.db.activities import ActivitiesConnector

from lifecycle_helpers import HOUR, FixedDelays, World, fired, sqlite_world, world  # noqa: F401 (fixtures)


# --- no answer ----------------------------------------------------------------------


def test_in_progress_without_an_answer_fails_with_no_answer(world):
    a = world.client()
    world.deliver(a.id, answer_within=24 * HOUR)
    world.advance(24 * HOUR - dt.timedelta(seconds=1))
    world.tick()
    assert world.get(a.id).state == "in-progress"

    world.advance(dt.timedelta(seconds=1))
    report = world.tick()
    after = world.get(a.id)
    assert report.no_answer == 1
    assert (after.state, after.result_code, after.result_name) == ("failed", codes.NO_ANSWER, "no-answer")
    assert after.answer_deadline is None and after.completed_at == world.now()
    (entry,) = world.scheduler_entries(a.id)
    assert (entry.from_state, entry.to_state) == ("in-progress", "failed") and "no answer" in entry.reason


def test_late_result_after_no_answer_is_an_event_and_changes_nothing(world):
    a = world.client()
    world.deliver(a.id, answer_within=HOUR)
    world.advance(HOUR)
    world.tick()
    what, _ = world.result(a, status=codes.SUCCEEDED, text="finally")
    after = world.get(a.id)
    assert what == "late"
    assert (after.state, after.result_code) == ("failed", codes.NO_ANSWER)
    assert "finally" not in (after.result_text or "")
    last = world.history(a.id)[-1]
    assert (last.event, last.to_state) == ("late-result", None)


def test_an_answer_before_the_deadline_wins(sqlite_world):
    world = sqlite_world
    a = world.client()
    world.deliver(a.id, answer_within=HOUR)
    world.result(a)
    world.advance(2 * HOUR)
    assert world.tick().no_answer == 0
    assert world.get(a.id).state == "succeeded"


def test_server_activities_in_progress_are_not_no_answer(sqlite_world):
    """A running job is watched by its lease, not by an answer deadline."""
    world = sqlite_world
    job = world.server()
    world.move(job.id, "queued", "in-progress", actor="job-handler")
    world.advance(48 * HOUR)
    assert world.tick().no_answer == 0
    assert world.get(job.id).state == "in-progress"


def test_group_child_without_an_answer_fails_the_group(sqlite_world):
    world = sqlite_world
    parent = world.client(world.computers(2))
    kids = world.children(parent.id)
    for k in kids:
        world.deliver(k.id, answer_within=HOUR)
    world.result(kids[0])
    world.advance(HOUR)
    world.tick()
    p = world.get(parent.id)
    assert p.state == "failed" and p.counts == {**p.counts, "succeeded": 1, "failed": 1}


# --- provisional cancels ------------------------------------------------------------------


def test_provisional_cancel_without_an_answer_becomes_final_as_it_is(world):
    a = world.client()
    world.deliver(a.id, answer_within=HOUR)
    c = world.verb(a.id, "cancel")
    assert c.state == "canceled" and c.cancel_provisional and not c.is_final
    world.advance(HOUR - dt.timedelta(seconds=1))
    world.tick()
    assert world.get(a.id).cancel_provisional

    world.advance(dt.timedelta(seconds=1))
    report = world.tick()
    after = world.get(a.id)
    assert report.cancels_final == 1
    assert (after.state, after.cancel_provisional, after.is_final) == ("canceled", False, True)
    assert after.result_code == codes.CANCELED and after.answer_deadline is None
    last = world.history(a.id)[-1]
    assert (last.event, last.actor) == ("cancel-final", "scheduler") and "no answer" in last.reason
    # The state did not change: no transition by the scheduler.
    assert [h for h in world.scheduler_entries(a.id) if h.event == "transition"] == []

    # Exactly once: a result now is late and changes nothing.
    what, _ = world.result(a, status=codes.SUCCEEDED)
    assert what == "late"
    assert (world.get(a.id).state, world.get(a.id).result_code) == ("canceled", codes.CANCELED)
    assert world.tick().cancels_final == 0


def test_provisional_cancel_resolved_by_the_agent_is_not_touched_later(sqlite_world):
    world = sqlite_world
    a = world.client()
    world.deliver(a.id, answer_within=HOUR)
    world.verb(a.id, "cancel")
    assert world.result(a, status=codes.FAILED, code=codes.CANCELED)[0] == "resolved-cancel"
    world.advance(2 * HOUR)
    assert world.tick().cancels_final == 0
    assert [h.event for h in world.history(a.id)].count("cancel-final") == 0


# --- cancel of a group with children in every state ------------------------------------


def test_cancel_of_a_group_with_children_in_every_state(world):
    # Delays 0 (queued at once) for all but one child, which is scheduled.
    world.db.activities = ActivitiesConnector(world.db, rng=FixedDelays([0.0] * 7 + [3600.0]))
    parent = world.client(world.computers(8), deliver_delay_window=7200)
    kids = world.children(parent.id)
    queued, blocked, waiting, running, succeeded, failed, canceled, scheduled = kids
    assert scheduled.state == "scheduled" and queued.state == "queued"
    world.verb(blocked.id, "pause")
    world.verb(waiting.id, "pause")
    world.move(waiting.id, "blocked", "waiting", actor="test", blocked_reason=None)
    world.deliver(running.id)
    for k in (succeeded, failed):
        world.deliver(k.id)
    world.result(succeeded)
    world.result(failed, status=codes.FAILED)
    world.verb(canceled.id, "cancel")
    before = {k.id: world.get(k.id).state for k in kids}
    assert sorted(before.values()) == sorted(
        ["queued", "blocked", "waiting", "in-progress", "succeeded", "failed", "canceled", "scheduled"])
    assert world.get(parent.id).state == "in-progress"

    p = world.verb(parent.id, "cancel")
    after = {k.id: world.get(k.id) for k in kids}
    for k in (queued, blocked, waiting, scheduled):
        assert after[k.id].state == "canceled" and after[k.id].is_final
    assert after[running.id].state == "canceled" and after[running.id].cancel_provisional
    assert after[succeeded.id].state == "succeeded" and after[failed.id].state == "failed"
    assert after[canceled.id].state == "canceled"
    assert p.state == "failed"  # all final (one provisionally), one failed
    assert p.counts["canceled"] == 6 and p.counts["failed"] == 1 and p.counts["succeeded"] == 1

    # The running child's agent never answers: its cancel becomes final.
    world.advance(24 * HOUR)
    report = world.tick()
    assert report.cancels_final == 1 and world.get(running.id).is_final
    assert world.get(parent.id).counts == p.counts


# --- races (PostgreSQL: real concurrent transactions) ------------------------------------


def _race(db, first, second):
    """Run ``first`` in a transaction that holds its row locks while ``second``
    starts in another; then commit ``first`` and let ``second`` finish."""
    started = threading.Event()
    outcome = {}

    def run_second():
        started.set()
        outcome["second"] = db.run_sync(second)

    with db.engine.begin() as conn:
        outcome["first"] = first(conn)
        t = threading.Thread(target=run_second)
        t.start()
        started.wait()
        t.join(0.3)  # the second one is blocked on the first one's row lock
        assert t.is_alive(), "the second transaction should wait for the first's row lock"
    t.join(10)
    assert not t.is_alive()
    return outcome["first"], outcome["second"]


@pytest.mark.postgres
def test_cancel_racing_a_result_is_resolved_exactly_once(make_server_db, postgres_url):
    world = World(make_server_db(postgres_url))
    a = world.client()
    world.deliver(a.id)
    acts = world.acts

    def cancel(conn):
        return acts.apply_verb_thd(conn, a.id, "cancel", actor="admin", now=world.now())

    def result(conn):
        return acts.apply_result_thd(conn, computer_id=a.computer_id, operation_id=a.id, status=codes.SUCCEEDED,
                                     result_code=None, result_text="done", now=world.now(), actor="agent")

    canceled, (what, _) = _race(world.db, cancel, result)
    assert canceled.state == "canceled" and canceled.cancel_provisional
    # The result read in-progress, lost its compare-and-set to the cancel, and was
    # applied to the provisional cancel instead: the work had finished.
    assert what == "resolved-cancel"
    after = world.get(a.id)
    assert (after.state, after.cancel_provisional, after.result_text) == ("succeeded", False, "done")
    moves = [(h.from_state, h.to_state) for h in world.history(a.id) if h.event == "transition"]
    assert moves == [(None, "queued"), ("queued", "in-progress"), ("in-progress", "canceled"),
                     ("canceled", "succeeded")]
    world.advance(48 * HOUR)
    assert world.tick().moved == 0


@pytest.mark.postgres
def test_no_answer_racing_a_result(make_server_db, postgres_url):
    world = World(make_server_db(postgres_url))
    a = world.client()
    world.deliver(a.id, answer_within=HOUR)
    world.advance(HOUR)
    sched = world.scheduler

    def no_answer(conn):
        _, (move,) = sched.select_no_answer_thd(conn, world.now(), 10)
        return sched.apply_thd(conn, move, world.now())

    def result(conn):
        return world.acts.apply_result_thd(conn, computer_id=a.computer_id, operation_id=a.id,
                                           status=codes.SUCCEEDED, result_code=None, result_text="done",
                                           now=world.now(), actor="agent")

    done, (what, _) = _race(world.db, no_answer, result)
    assert done is True
    assert what == "late"
    after = world.get(a.id)
    assert (after.state, after.result_code) == ("failed", codes.NO_ANSWER)
    assert world.history(a.id)[-1].event == "late-result"


@pytest.mark.postgres
def test_provisional_cancel_finalised_racing_a_result(make_server_db, postgres_url):
    world = World(make_server_db(postgres_url))
    a = world.client()
    world.deliver(a.id, answer_within=HOUR)
    world.verb(a.id, "cancel")
    world.advance(HOUR)
    sched = world.scheduler

    def finalise(conn):
        _, (move,) = sched.select_provisional_cancels_thd(conn, world.now(), 10)
        return sched.apply_thd(conn, move, world.now())

    def result(conn):
        return world.acts.apply_result_thd(conn, computer_id=a.computer_id, operation_id=a.id,
                                           status=codes.FAILED, result_code=codes.CANCELED, result_text="stopped",
                                           now=world.now(), actor="agent")

    done, (what, _) = _race(world.db, finalise, result)
    assert done is True
    assert what == "late"
    events = [h.event for h in world.history(a.id)]
    assert events.count("cancel-final") == 1 and "cancel-confirmed" not in events
    assert world.get(a.id).is_final


@pytest.mark.postgres
def test_two_schedulers_move_each_due_activity_once(make_server_db, postgres_url):
    """Two server processes on one database tick at the same moment: every due
    activity moves once, by one of them."""
    w1 = World(make_server_db(postgres_url))
    from server.db.base import Database, create_engine, inline_runner

    db2 = Database(create_engine(postgres_url), inline_runner)
    try:
        w2 = World(db2)
        jobs = [w1.server(deliver_after=w1.now() + HOUR) for _ in range(60)]
        w1.advance(HOUR)
        w2.advance(HOUR)
        barrier = threading.Barrier(2)
        reports = []

        def tick(w):
            barrier.wait()
            reports.append(w.tick())

        threads = [threading.Thread(target=tick, args=(w,)) for w in (w1, w2)]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        assert sum(r.scheduled_queued for r in reports) == 60
        assert all(r.errors == [] for r in reports)
        for j in jobs:
            assert [(h.from_state, h.to_state) for h in w1.scheduler_entries(j.id)] == [("scheduled", "queued")]
    finally:
        db2.close()
