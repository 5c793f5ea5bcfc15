"""Waiting (``wait_for``) through the scheduler on a real database: thresholds,
groups, chains, time, hopeless prerequisites, expiry."""

import datetime as dt

import pytest

from protocol import codes
from server.db.activities import decide_waiting

from lifecycle_helpers import HOUR, sqlite_world, world  # noqa: F401 (fixtures)


def test_waiting_goes_queued_once_the_prerequisite_succeeded(world):
    first = world.client()
    second = world.client(wait_for_id=first.id)
    assert second.state == "waiting"
    world.deliver(first.id)
    world.tick()
    assert world.get(second.id).state == "waiting"  # in progress at 0%: not yet

    world.result(first)
    report = world.tick()
    assert report.waits_met == 1
    assert world.get(second.id).state == "queued"
    (entry,) = world.scheduler_entries(second.id)
    assert (entry.from_state, entry.to_state) == ("waiting", "queued") and f"activity {first.id}" in entry.reason


def test_waiting_server_activity_is_published_when_it_goes_on(sqlite_world):
    world = sqlite_world
    first = world.client()
    job = world.server(wait_for_id=first.id)
    world.deliver(first.id)
    world.result(first)
    world.tick()
    assert world.get(job.id).state == "queued"
    assert world.queue.published == [[job.id]]


def test_progress_of_a_single_prerequisite_counts_while_in_progress(sqlite_world):
    world = sqlite_world
    first = world.client()
    second = world.client(wait_for_id=first.id, wait_for_threshold=50)
    world.deliver(first.id)
    world.set_progress(first.id, 49)
    world.tick()
    assert world.get(second.id).state == "waiting"
    world.set_progress(first.id, 50)
    world.tick()
    assert world.get(second.id).state == "queued"


def test_wait_for_with_future_time_never_delivers_early(world):
    first = world.client()
    second = world.client(wait_for_id=first.id, deliver_after=world.now() + 2 * HOUR)
    assert second.state == "waiting"
    world.deliver(first.id)
    world.result(first)
    world.advance(HOUR)
    world.tick()
    assert world.get(second.id).state == "waiting"  # met, but its time has not come
    world.advance(HOUR - dt.timedelta(seconds=1))
    world.tick()
    assert world.get(second.id).state == "waiting"
    world.advance(dt.timedelta(seconds=1))
    world.tick()
    assert world.get(second.id).state == "queued"


def test_time_come_but_prerequisite_unmet_keeps_waiting(sqlite_world):
    world = sqlite_world
    first = world.client()
    second = world.client(wait_for_id=first.id, deliver_after=world.now() + HOUR)
    world.advance(2 * HOUR)
    world.tick()
    assert world.get(second.id).state == "waiting"


@pytest.mark.parametrize("ending", ["failed", "canceled"])
def test_hopeless_single_prerequisite_cancels_the_waiting_activity_naming_it(world, ending):
    first = world.client()
    second = world.client(wait_for_id=first.id)
    if ending == "failed":
        world.deliver(first.id)
        world.result(first, status=codes.FAILED, code=codes.SCRIPT_FAILED)
    else:
        world.verb(first.id, "cancel")
    report = world.tick()
    after = world.get(second.id)
    assert report.hopeless == 1
    assert after.state == "canceled" and after.is_final
    # No result code: this is neither an administrator's cancel nor an expiry.
    assert after.result_code is None
    assert f"activity {first.id}" in after.result_text and ending in after.result_text
    (entry,) = world.scheduler_entries(second.id)
    assert (entry.from_state, entry.to_state) == ("waiting", "canceled") and f"activity {first.id}" in entry.reason


def test_provisionally_canceled_prerequisite_is_not_hopeless_until_resolved(sqlite_world):
    world = sqlite_world
    first = world.client()
    second = world.client(wait_for_id=first.id)
    world.deliver(first.id)
    world.verb(first.id, "cancel")
    assert world.get(first.id).cancel_provisional
    world.tick()
    assert world.get(second.id).state == "waiting"
    # The agent had finished the work before the cancel reached it.
    assert world.result(first)[0] == "resolved-cancel"
    world.tick()
    assert world.get(second.id).state == "queued"


def test_waiting_on_a_group_with_threshold_50(world):
    """Met when half the children succeeded, even though the others failed."""
    cids = world.computers(4)
    group = world.client(cids)
    kids = world.children(group.id)
    waiter = world.client(wait_for_id=group.id, wait_for_threshold=50)
    assert waiter.state == "waiting"
    for k in kids:
        world.deliver(k.id)
    world.result(kids[0])
    world.result(kids[1], status=codes.FAILED)
    world.tick()
    assert world.get(waiter.id).state == "waiting"  # 25% succeeded; 75% still possible
    world.result(kids[2], status=codes.FAILED)
    world.tick()
    assert world.get(waiter.id).state == "waiting"  # 25% succeeded; 50% still possible
    world.result(kids[3])
    report = world.tick()
    assert report.waits_met == 1 and world.get(waiter.id).state == "queued"
    assert world.get(group.id).state == "failed"  # the group failed; 50% of it succeeded


def test_waiting_on_a_group_with_threshold_50_becomes_hopeless(world):
    """Hopeless once too few children can still succeed, before the group ends."""
    cids = world.computers(4)
    group = world.client(cids)
    kids = world.children(group.id)
    waiter = world.client(wait_for_id=group.id, wait_for_threshold=50)
    for k in kids:
        world.deliver(k.id)
    world.result(kids[0], status=codes.FAILED)
    world.result(kids[1], status=codes.FAILED)
    world.tick()
    assert world.get(waiter.id).state == "waiting"  # 2 of 4 may still succeed: 50%
    world.result(kids[2], status=codes.FAILED)
    report = world.tick()
    after = world.get(waiter.id)
    assert report.hopeless == 1 and after.state == "canceled"
    assert f"group activity {group.id}" in after.result_text and "50%" in after.result_text
    assert world.get(group.id).state == "in-progress"  # one child still runs


def test_a_waiting_group_follows_its_prerequisite(sqlite_world):
    """A group whose children wait: each child goes on; the parent follows."""
    world = sqlite_world
    first = world.client()
    cids = world.computers(3)
    group = world.client(cids, wait_for_id=first.id)
    assert group.state == "waiting"
    world.deliver(first.id)
    world.result(first)
    report = world.tick()
    assert report.waits_met == 3
    assert [k.state for k in world.children(group.id)] == ["queued"] * 3
    assert world.get(group.id).state == "queued" and world.scheduler_entries(group.id) == []


def test_chain_runs_in_order(world):
    a = world.client()
    b = world.client(wait_for_id=a.id)
    c = world.client(wait_for_id=b.id)
    world.deliver(a.id)
    world.result(a)
    world.tick()
    assert (world.get(b.id).state, world.get(c.id).state) == ("queued", "waiting")
    world.deliver(b.id)
    world.tick()
    assert world.get(c.id).state == "waiting"
    world.result(b)
    world.tick()
    assert world.get(c.id).state == "queued"


def test_chain_failure_cancels_down_the_chain(world):
    a = world.client()
    b = world.client(wait_for_id=a.id)
    c = world.client(wait_for_id=b.id)
    world.deliver(a.id)
    world.result(a, status=codes.FAILED)
    world.tick()
    world.tick()
    assert world.get(b.id).state == "canceled" and f"activity {a.id}" in world.get(b.id).result_text
    assert world.get(c.id).state == "canceled" and f"activity {b.id}" in world.get(c.id).result_text


def test_expiry_of_a_waiting_activity(world):
    first = world.client()
    second = world.client(wait_for_id=first.id, deliver_before=world.now() + HOUR)
    world.advance(HOUR)
    world.tick()
    after = world.get(second.id)
    assert (after.state, after.result_code) == ("canceled", codes.EXPIRED)
    # The prerequisite succeeding later changes nothing.
    world.deliver(first.id)
    world.result(first)
    world.tick()
    assert world.get(second.id).state == "canceled"


def test_approval_with_unmet_prerequisite_and_future_time(sqlite_world):
    """blocked/approval → (approve) waiting → (met, time not come) waiting → queued."""
    world = sqlite_world
    first = world.client()
    a = world.client(requires_approval=True, wait_for_id=first.id, deliver_after=world.now() + HOUR)
    assert world.verb(a.id, "approve").state == "waiting"
    world.deliver(first.id)
    world.result(first)
    world.tick()
    assert world.get(a.id).state == "waiting"
    world.advance(HOUR)
    world.tick()
    assert world.get(a.id).state == "queued"


@pytest.mark.parametrize(
    "counts,threshold,action",
    [
        ({"succeeded": 2, "failed": 2}, 50, "go"),
        ({"succeeded": 1, "failed": 2, "in-progress": 1}, 50, "wait"),
        ({"succeeded": 1, "failed": 3}, 50, "hopeless"),
        ({"succeeded": 1, "canceled": 1, "queued": 1}, 34, "wait"),
        ({"succeeded": 1, "canceled": 1, "queued": 1}, 33, "go"),
        ({"failed": 1, "queued": 2}, 67, "hopeless"),
        ({"failed": 1, "queued": 2}, 66, "wait"),
        ({"succeeded": 3}, 100, "go"),
        ({"succeeded": 2, "failed": 1}, 100, "hopeless"),
        ({"queued": 3}, 0, "go"),
    ],
)
def test_sql_preselection_agrees_with_the_state_machine(sqlite_world, counts, threshold, action):
    """The query finds exactly the waiting activities the pure rule decides on."""
    world = sqlite_world
    n = sum(counts.values())
    group = world.client(world.computers(n))
    kids = iter(world.children(group.id))
    for state, k in ((s, next(kids)) for s, m in counts.items() for _ in range(m)):
        if state == "queued":
            continue
        if state == "canceled":
            world.verb(k.id, "cancel")
            continue
        world.deliver(k.id)
        if state in ("succeeded", "failed"):
            world.result(k, status=codes.SUCCEEDED if state == "succeeded" else codes.FAILED)
    waiter = world.client(world.computers(1), wait_for_id=group.id, wait_for_threshold=threshold)
    if waiter.state != "waiting":  # threshold already met at creation
        assert action == "go"
        return
    found = world.db.run_sync(world.acts.waiting_decided_thd, world.now(), 10)
    pre = world.get(group.id)
    assert decide_waiting(world.get(waiter.id), pre, world.now()).action == action
    assert [(w.id, d.action) for w, d in found] == ([] if action == "wait" else [(waiter.id, action)])
