"""The activities connector on SQLite and PostgreSQL: creation, compare-and-set
transitions with history, group bookkeeping, verbs and agent results."""

import datetime as dt
import random
import threading

import pytest
import sqlalchemy as sa

from protocol import codes
from server import states
from server.db.activities import ActivitiesConnector, LostRace, NewActivity, parent_deltas, target_values
from server.db.computers import ComputersConnector, NewComputer

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def store(server_db):
    return ActivitiesConnector(server_db, rng=random.Random(7)), ComputersConnector(server_db), server_db


def add_computers(computers, fired, n, *, accepted=True):
    return [
        fired(computers.create(NewComputer(title=f"c{i}", hostname=f"h{i}", account_name="standalone",
                                           secure_id=f"s-{i}-{random.random()}".encode(), accepted=accepted), NOW)).id
        for i in range(n)
    ]


def script(computer_ids, **kw):
    return NewActivity(kind="client", type="execute-script", parameters={"code": "true"}, creator="admin",
                       computer_ids=computer_ids, **kw)


def test_single_activity_is_queued_with_creation_history(store, fired):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid]), NOW))
    assert (a.state, a.kind, a.computer_id, a.parent_id, a.is_group) == ("queued", "client", cid, None, False)
    (h,) = fired(acts.history(a.id))
    assert (h.from_state, h.to_state, h.actor, h.reason) == (None, "queued", "admin", "created")


@pytest.mark.parametrize(
    "kw,state,reason",
    [
        ({"requires_approval": True, "deliver_after": NOW + dt.timedelta(hours=1)}, "blocked", "approval"),
        ({"deliver_after": NOW + dt.timedelta(hours=1)}, "scheduled", None),
        ({"deliver_after": NOW - dt.timedelta(hours=1)}, "queued", None),
    ],
)
def test_initial_state_follows_the_first_condition(store, fired, kw, state, reason):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid], **kw), NOW))
    assert (a.state, a.blocked_reason) == (state, reason)


def test_waiting_on_an_unfinished_prerequisite(store, fired):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    first = fired(acts.create(script([cid]), NOW))
    second = fired(acts.create(script([cid], wait_for_id=first.id), NOW))
    assert second.state == "waiting" and second.wait_for_threshold == 100


def test_group_creates_parent_and_children_in_bulk(store, fired):
    acts, comps, _ = store
    cids = add_computers(comps, fired, 5)
    parent = fired(acts.create(script(cids), NOW))
    assert parent.is_group and parent.children_count == 5 and parent.state == "queued"
    assert parent.counts["queued"] == 5
    count, children = fired(acts.list(parent_id=parent.id))
    assert count == 5
    assert sorted(c.computer_id for c in children) == sorted(cids)
    assert all(c.state == "queued" and c.parent_id == parent.id for c in children)


def test_delay_window_gives_each_child_its_own_recorded_offset(store, fired):
    acts, comps, _ = store
    cids = add_computers(comps, fired, 6)
    parent = fired(acts.create(script(cids, deliver_delay_window=600), NOW))
    _, children = fired(acts.list(parent_id=parent.id))
    delays = [c.deliver_delay for c in children]
    assert all(0 <= d < 600 for d in delays) and len(set(delays)) == 6
    for c in children:
        assert c.deliver_after == NOW + dt.timedelta(seconds=c.deliver_delay)
        assert c.state == "scheduled"
    again = fired(acts.get(children[0].id))
    assert again.deliver_delay == children[0].deliver_delay


def test_transition_is_compare_and_set_and_recorded(store, fired):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid]), NOW))
    moved = fired(acts.transition(a.id, "queued", "in-progress", actor="exchange", reason="delivered", now=NOW))
    assert moved.state == "in-progress" and moved.delivered_at == NOW
    with pytest.raises(LostRace) as e:
        fired(acts.transition(a.id, "queued", "in-progress", actor="exchange", reason="again", now=NOW))
    assert e.value.current == "in-progress"
    with pytest.raises(states.TransitionError):
        fired(acts.transition(a.id, "in-progress", "queued", actor="x", reason="y", now=NOW))
    hist = fired(acts.history(a.id))
    assert [(h.from_state, h.to_state) for h in hist] == [(None, "queued"), ("queued", "in-progress")]
    assert fired(acts.get(a.id)).state == "in-progress"


def test_parent_state_follows_children(store, fired):
    acts, comps, db = store
    cids = add_computers(comps, fired, 3)
    parent = fired(acts.create(script(cids), NOW))
    _, kids = fired(acts.list(parent_id=parent.id))
    a, b, c = sorted(kids, key=lambda k: k.id)
    fired(acts.transition(a.id, "queued", "in-progress", actor="t", reason="r", now=NOW))
    assert fired(acts.get(parent.id)).state == "in-progress"
    for k, end in [(a, "succeeded"), (b, None), (c, None)]:
        if end is None:
            fired(acts.transition(k.id, "queued", "in-progress", actor="t", reason="r", now=NOW))
            end = "succeeded"
        fired(acts.transition(k.id, "in-progress", end, actor="t", reason="r", now=NOW))
    p = fired(acts.get(parent.id))
    assert p.state == "succeeded" and p.counts["succeeded"] == 3 and p.display_progress == 100
    assert p.completed_at == NOW
    assert [h.to_state for h in fired(acts.history(parent.id))] == ["queued", "in-progress", "succeeded"]


def test_group_with_a_failed_child_ends_failed(store, fired):
    acts, comps, _ = store
    cids = add_computers(comps, fired, 2)
    parent = fired(acts.create(script(cids), NOW))
    _, kids = fired(acts.list(parent_id=parent.id))
    fired(acts.apply_verb(kids[0].id, "cancel", actor="admin", now=NOW))
    for k in kids[1:]:
        fired(acts.transition(k.id, "queued", "in-progress", actor="t", reason="r", now=NOW))
        fired(acts.transition(k.id, "in-progress", "failed", actor="t", reason="r", now=NOW))
    assert fired(acts.get(parent.id)).state == "failed"


def test_verbs_on_a_single_activity(store, fired):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid], requires_approval=True), NOW))
    with pytest.raises(states.TransitionError):
        fired(acts.apply_verb(a.id, "resume", actor="admin", now=NOW))
    assert fired(acts.get(a.id)).state == "blocked"
    a = fired(acts.apply_verb(a.id, "approve", actor="admin", now=NOW))
    assert (a.state, a.approved_at) == ("queued", NOW)
    a = fired(acts.apply_verb(a.id, "pause", actor="admin", now=NOW))
    assert (a.state, a.blocked_reason) == ("blocked", "paused")
    with pytest.raises(states.TransitionError):
        fired(acts.apply_verb(a.id, "approve", actor="admin", now=NOW))
    a = fired(acts.apply_verb(a.id, "resume", actor="admin", now=NOW))
    assert (a.state, a.blocked_reason) == ("queued", None)
    a = fired(acts.apply_verb(a.id, "cancel", actor="admin", now=NOW))
    assert (a.state, a.result_code, a.cancel_provisional, a.is_final) == ("canceled", codes.CANCELED, False, True)
    with pytest.raises(states.TransitionError):
        fired(acts.apply_verb(a.id, "cancel", actor="admin", now=NOW))


def test_approval_with_future_time_holds(store, fired):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid], requires_approval=True, deliver_after=NOW + dt.timedelta(hours=1)), NOW))
    a = fired(acts.apply_verb(a.id, "approve", actor="admin", now=NOW))
    assert (a.state, a.blocked_reason, a.approved_at) == ("blocked", "held", NOW)
    assert fired(acts.history(a.id))[-1].event == "approved"


def test_approval_with_unmet_prerequisite_waits(store, fired):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    first = fired(acts.create(script([cid]), NOW))
    a = fired(acts.create(script([cid], requires_approval=True, wait_for_id=first.id), NOW))
    assert fired(acts.apply_verb(a.id, "approve", actor="admin", now=NOW)).state == "waiting"


def test_cancel_group_cancels_every_non_final_child(store, fired):
    acts, comps, _ = store
    cids = add_computers(comps, fired, 3)
    parent = fired(acts.create(script(cids), NOW))
    _, kids = fired(acts.list(parent_id=parent.id))
    kids.sort(key=lambda k: k.id)
    fired(acts.transition(kids[0].id, "queued", "in-progress", actor="t", reason="r", now=NOW))
    fired(acts.transition(kids[0].id, "in-progress", "succeeded", actor="t", reason="r", now=NOW))
    fired(acts.transition(kids[1].id, "queued", "in-progress", actor="t", reason="r", now=NOW))
    p = fired(acts.apply_verb(parent.id, "cancel", actor="admin", now=NOW))
    after = {k.id: fired(acts.get(k.id)) for k in kids}
    assert after[kids[0].id].state == "succeeded"
    assert after[kids[1].id].state == "canceled" and after[kids[1].id].cancel_provisional
    assert after[kids[2].id].state == "canceled" and not after[kids[2].id].cancel_provisional
    assert p.state == "canceled"
    with pytest.raises(states.TransitionError):
        fired(acts.apply_verb(parent.id, "cancel", actor="admin", now=NOW))


def test_cancel_listeners_run_in_the_same_transaction(store, fired):
    acts, comps, _ = store
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid]), NOW))
    seen = []
    acts.cancel_listeners.append(lambda conn, act, now: seen.append((act.id, act.state)))
    fired(acts.apply_verb(a.id, "cancel", actor="admin", now=NOW))
    assert seen == [(a.id, "queued")]


def in_progress(acts, comps, fired):
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid]), NOW))
    fired(acts.transition(a.id, "queued", "in-progress", actor="exchange", reason="delivered", now=NOW))
    return cid, a


def apply_result(db, acts, **kw):
    return db.run_sync(acts.apply_result_thd, now=NOW, actor="agent", **kw)


def test_result_moves_in_progress_to_final(store, fired):
    acts, comps, db = store
    cid, a = in_progress(acts, comps, fired)
    what, after = apply_result(db, acts, computer_id=cid, operation_id=a.id, status=codes.FAILED,
                               result_code=codes.SCRIPT_FAILED, result_text="boom")
    assert what == "applied"
    a = fired(acts.get(a.id))
    assert (a.state, a.result_code, a.result_name, a.result_text) == ("failed", 103, "script-failed", "boom")


def test_result_of_a_stranger_changes_nothing(store, fired):
    acts, comps, db = store
    cid, a = in_progress(acts, comps, fired)
    (other,) = add_computers(comps, fired, 1)
    what, _ = apply_result(db, acts, computer_id=other, operation_id=a.id, status=codes.SUCCEEDED,
                           result_code=None, result_text="x")
    assert what == "not-yours"
    assert fired(acts.get(a.id)).state == "in-progress"
    assert apply_result(db, acts, computer_id=cid, operation_id=999999, status=6, result_code=None,
                        result_text="")[0] == "not-yours"


def test_late_result_is_an_event_only(store, fired):
    acts, comps, db = store
    cid, a = in_progress(acts, comps, fired)
    apply_result(db, acts, computer_id=cid, operation_id=a.id, status=codes.SUCCEEDED, result_code=None, result_text="ok")
    what, _ = apply_result(db, acts, computer_id=cid, operation_id=a.id, status=codes.FAILED, result_code=None,
                           result_text="again")
    assert what == "late"
    a2 = fired(acts.get(a.id))
    assert (a2.state, a2.result_text) == ("succeeded", "ok")
    assert fired(acts.history(a.id))[-1].event == "late-result"


@pytest.mark.parametrize(
    "status,code,final",
    [(codes.FAILED, codes.CANCELED, "canceled"), (codes.SUCCEEDED, None, "succeeded"), (codes.FAILED, 103, "failed")],
)
def test_provisional_cancel_resolved_by_the_agents_result(store, fired, status, code, final):
    acts, comps, db = store
    cid, a = in_progress(acts, comps, fired)
    c = fired(acts.apply_verb(a.id, "cancel", actor="admin", now=NOW))
    assert c.state == "canceled" and c.cancel_provisional and not c.is_final
    what, _ = apply_result(db, acts, computer_id=cid, operation_id=a.id, status=status, result_code=code,
                           result_text="out")
    assert what == "resolved-cancel"
    after = fired(acts.get(a.id))
    assert (after.state, after.cancel_provisional, after.result_code) == (final, False, code)
    # Exactly once: another result is late.
    assert apply_result(db, acts, computer_id=cid, operation_id=a.id, status=6, result_code=None,
                        result_text="")[0] == "late"


def test_ids_are_never_reused(store, fired):
    acts, comps, db = store
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid]), NOW))
    from server.db.tables import activities, activity_history

    db.run_sync(lambda conn: (conn.execute(activity_history.delete()), conn.execute(activities.delete())))
    b = fired(acts.create(script([cid]), NOW))
    assert b.id > a.id


@pytest.mark.postgres
def test_two_connections_cannot_both_move_one_activity(make_server_db, postgres_url, fired):
    """Two concurrent transactions race for queued → in-progress: exactly one wins."""
    db = make_server_db(postgres_url)
    acts, comps = ActivitiesConnector(db), ComputersConnector(db)
    (cid,) = add_computers(comps, fired, 1)
    a = fired(acts.create(script([cid]), NOW))
    barrier = threading.Barrier(2)
    outcomes = []

    def racer(name):
        try:
            with db.engine.begin() as conn:
                barrier.wait()
                acts.transition_thd(conn, a.id, "queued", "in-progress", actor=name, reason="race", now=NOW)
                barrier_sleep = threading.Event()
                barrier_sleep.wait(0.2)  # hold the row lock while the other tries
            outcomes.append("won")
        except LostRace:
            outcomes.append("lost")

    threads = [threading.Thread(target=racer, args=(f"p{i}",)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["lost", "won"]
    assert len([h for h in fired(acts.history(a.id)) if h.to_state == "in-progress"]) == 1


@pytest.mark.postgres
def test_parent_counters_stay_right_under_concurrent_children(make_server_db, postgres_url, fired):
    db = make_server_db(postgres_url)
    acts, comps = ActivitiesConnector(db), ComputersConnector(db)
    cids = add_computers(comps, fired, 10)
    parent = fired(acts.create(script(cids), NOW))
    _, kids = fired(acts.list(parent_id=parent.id, limit=100))
    for k in kids:
        fired(acts.transition(k.id, "queued", "in-progress", actor="t", reason="r", now=NOW))
    barrier = threading.Barrier(len(kids))

    def finish(k):
        with db.engine.begin() as conn:
            barrier.wait()
            acts.transition_thd(conn, k.id, "in-progress", "succeeded", actor="t", reason="r", now=NOW)

    threads = [threading.Thread(target=finish, args=(k,)) for k in kids]
    [t.start() for t in threads]
    [t.join() for t in threads]
    p = fired(acts.get(parent.id))
    assert p.counts["succeeded"] == 10 and p.counts["in-progress"] == 0 and p.state == "succeeded"


def test_target_values_say_what_a_move_sets_for_each_kind():
    final = target_values("succeeded", "server", NOW)
    assert final == {"state": "succeeded", "modified_at": NOW, "blocked_reason": None, "completed_at": NOW,
                     "lease_expires_at": None, "answer_deadline": None}
    assert target_values("in-progress", "client", NOW)["delivered_at"] == NOW
    assert "delivered_at" not in target_values("in-progress", "server", NOW)
    assert "published_at" in target_values("queued", "server", NOW)
    assert "published_at" not in target_values("queued", "client", NOW)
    assert target_values("blocked", "client", NOW, "paused")["blocked_reason"] == "paused"
    assert target_values("queued", "client", NOW, "paused")["blocked_reason"] is None


def test_parent_deltas_count_only_children_that_changed_state():
    assert parent_deltas([(7, "queued"), (7, "queued"), (8, "queued"), (None, "queued"), (9, "canceled")],
                         "canceled") == {7: {"queued": -2, "canceled": 2}, 8: {"queued": -1, "canceled": 1}}


def test_transition_many_applies_each_kinds_target_values(store, fired):
    acts, comps, db = store
    cids = add_computers(comps, fired, 2)
    group = fired(acts.create(script(cids), NOW))
    server = fired(acts.create(NewActivity(kind="server", type="noop", parameters={}, creator="admin"), NOW))
    _, kids = fired(acts.list(parent_id=group.id))
    later = NOW + dt.timedelta(minutes=1)
    deadline = later + dt.timedelta(hours=1)

    def move(conn):
        rows = [acts.get_thd(conn, k.id) for k in kids] + [acts.get_thd(conn, server.id)]
        acts.transition_many_thd(conn, [(a, {"answer_deadline": deadline}) for a in rows], "in-progress",
                                 actor="t", reason="r", now=later)

    fired(db.run(move))
    for k in kids:
        got = fired(acts.get(k.id))
        assert (got.state, got.delivered_at, got.answer_deadline) == ("in-progress", later, deadline)
    got = fired(acts.get(server.id))
    # A server activity is not "delivered" to an agent: only its claim sets that.
    assert (got.state, got.delivered_at, got.answer_deadline) == ("in-progress", None, deadline)
    p = fired(acts.get(group.id))
    assert p.state == "in-progress" and p.counts["in-progress"] == 2 and p.counts["queued"] == 0
    assert [h.to_state for h in fired(acts.history(server.id))] == ["queued", "in-progress"]


def test_transition_bulk_skips_what_moved_and_what_has_a_parent(store, fired):
    acts, comps, db = store
    cids = add_computers(comps, fired, 5)
    group = fired(acts.create(script(cids[:2]), NOW))
    _, kids = fired(acts.list(parent_id=group.id))
    ones = [fired(acts.create(script([c]), NOW)) for c in cids[2:]]
    fired(acts.transition(ones[0].id, "queued", "canceled", actor="t", reason="r", now=NOW))
    later = NOW + dt.timedelta(minutes=1)
    moved = fired(db.run(lambda conn: acts.transition_bulk_thd(
        conn, [o.id for o in ones] + [k.id for k in kids], "queued", "in-progress", kind="client", actor="t",
        reason="r", now=later, values={"progress": 5})))
    assert [a.id for a in moved] == [ones[1].id, ones[2].id]
    assert all((a.state, a.delivered_at, a.progress) == ("in-progress", later, 5) for a in moved)
    assert fired(acts.get(ones[0].id)).state == "canceled"
    assert all(fired(acts.get(k.id)).state == "queued" for k in kids)
    assert fired(acts.get(group.id)).counts["queued"] == 2
    assert [h.to_state for h in fired(acts.history(ones[1].id))] == ["queued", "in-progress"]
