"""Time rules of the life cycle, driven by a Clock on a real database: scheduled
server activities, held (approved, future time) activities, delay windows,
expiry."""

import datetime as dt

import pytest

from protocol import codes
from server.db.activities import ActivitiesConnector

from lifecycle_helpers import HOUR, FixedDelays, World, sqlite_world, world  # noqa: F401 (fixtures)


# --- scheduled server activities ----------------------------------------------------


def test_scheduled_server_activity_is_queued_and_published_when_its_time_comes(world):
    a = world.server(deliver_after=world.now() + HOUR)
    assert a.state == "scheduled"
    world.advance(HOUR - dt.timedelta(seconds=1))
    report = world.tick()
    assert world.get(a.id).state == "scheduled" and report.scheduled_queued == 0
    assert world.queue.published == []

    world.advance(dt.timedelta(seconds=1))
    report = world.tick()
    after = world.get(a.id)
    assert after.state == "queued" and report.scheduled_queued == 1 and report.published
    assert world.queue.published == [[a.id]]
    (entry,) = world.scheduler_entries(a.id)
    assert (entry.from_state, entry.to_state) == ("scheduled", "queued")
    assert "has come" in entry.reason
    # Nothing more to do: the next tick moves nothing and publishes nothing.
    assert world.tick().moved == 0 and len(world.queue.published) == 1


def test_scheduled_client_activity_is_left_to_the_exchange(sqlite_world):
    world = sqlite_world
    a = world.client(deliver_after=world.now() + HOUR)
    world.advance(2 * HOUR)
    report = world.tick()
    assert world.get(a.id).state == "scheduled"
    assert report.moved == 0 and world.queue.published == []
    # The exchange delivers it at the computer's next call.
    assert world.deliver(a.id, from_state="scheduled").state == "in-progress"


def test_scheduler_works_without_a_queue(sqlite_server_db):
    world = World(sqlite_server_db, queue=False)
    a = world.server(deliver_after=world.now() + HOUR)
    world.advance(HOUR)
    report = world.tick()
    assert world.get(a.id).state == "queued"
    assert report.published is False and report.errors == []


# --- approval and held -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["client", "server"])
def test_approval_with_future_time_holds_then_queues_at_its_time(world, kind):
    make = world.client if kind == "client" else world.server
    a = make(requires_approval=True, deliver_after=world.now() + 2 * HOUR)
    assert (a.state, a.blocked_reason) == ("blocked", "approval")
    # Not approved: its time coming changes nothing.
    world.advance(HOUR)
    world.tick()
    assert world.get(a.id).blocked_reason == "approval"

    a = world.verb(a.id, "approve")
    assert (a.state, a.blocked_reason) == ("blocked", "held")
    world.advance(HOUR - dt.timedelta(seconds=1))
    world.tick()
    assert world.get(a.id).state == "blocked"

    world.advance(dt.timedelta(seconds=1))
    report = world.tick()
    after = world.get(a.id)
    assert (after.state, after.blocked_reason, report.held_released) == ("queued", None, 1)
    (entry,) = world.scheduler_entries(a.id)
    assert (entry.from_state, entry.to_state) == ("blocked", "queued") and "approved" in entry.reason
    assert world.queue.published == ([[a.id]] if kind == "server" else [])


def test_approval_after_the_time_queues_at_once(sqlite_world):
    world = sqlite_world
    a = world.client(requires_approval=True, deliver_after=world.now() + HOUR)
    world.advance(2 * HOUR)
    assert world.verb(a.id, "approve").state == "queued"


def test_blocked_for_approval_or_pause_is_never_released_by_time(sqlite_world):
    world = sqlite_world
    approval = world.client(requires_approval=True, deliver_after=world.now() + HOUR)
    paused = world.client(deliver_after=None)
    world.verb(paused.id, "pause")
    world.advance(3 * HOUR)
    assert world.tick().held_released == 0
    assert world.get(approval.id).blocked_reason == "approval"
    assert world.get(paused.id).blocked_reason == "paused"


# --- delay window ----------------------------------------------------------------------


def test_delay_window_releases_each_held_child_at_its_own_time(sqlite_world):
    world = sqlite_world
    world.db.activities = ActivitiesConnector(world.db, rng=FixedDelays([0.0, 600.0, 1800.0]))
    cids = world.computers(3)
    start = world.now() + HOUR
    parent = world.client(cids, requires_approval=True, deliver_after=start, deliver_delay_window=3600)
    kids = world.children(parent.id)
    assert [k.deliver_delay for k in kids] == [0.0, 600.0, 1800.0]
    assert [k.deliver_after for k in kids] == [start, start + dt.timedelta(seconds=600),
                                               start + dt.timedelta(seconds=1800)]
    world.verb(parent.id, "approve")
    assert [world.get(k.id).blocked_reason for k in kids] == ["held"] * 3

    world.advance(HOUR)
    world.tick()
    assert [world.get(k.id).state for k in kids] == ["queued", "blocked", "blocked"]
    assert world.get(parent.id).state == "queued"  # children differ: queued
    world.advance(dt.timedelta(seconds=600))
    world.tick()
    assert [world.get(k.id).state for k in kids] == ["queued", "queued", "blocked"]
    world.advance(dt.timedelta(seconds=1200))
    world.tick()
    assert [world.get(k.id).state for k in kids] == ["queued"] * 3
    # Stable: the recorded offsets did not change on the way.
    assert [world.get(k.id).deliver_delay for k in kids] == [0.0, 600.0, 1800.0]


# --- expiry ------------------------------------------------------------------------------


def _expiring(world, state: str, deliver_before):
    if state == "queued":
        return world.client(deliver_before=deliver_before)
    if state == "scheduled":
        return world.client(deliver_after=deliver_before + HOUR, deliver_before=deliver_before)
    if state == "waiting":
        first = world.client()
        return world.client(wait_for_id=first.id, deliver_before=deliver_before)
    if state == "blocked":
        return world.client(requires_approval=True, deliver_before=deliver_before)
    raise AssertionError(state)


@pytest.mark.parametrize("state", ["queued", "scheduled", "waiting", "blocked"])
def test_undelivered_activity_expires_canceled_with_code_expired(world, state):
    before = world.now() + HOUR
    a = _expiring(world, state, before)
    assert a.state == state
    world.advance(HOUR - dt.timedelta(seconds=1))
    world.tick()
    assert world.get(a.id).state == state

    world.advance(dt.timedelta(seconds=1))
    report = world.tick()
    after = world.get(a.id)
    assert report.expired == 1
    assert (after.state, after.result_code, after.result_name) == ("canceled", codes.EXPIRED, "expired")
    assert after.is_final and not after.cancel_provisional
    assert "not delivered before" in after.result_text and before.isoformat() in after.result_text
    (entry,) = world.scheduler_entries(a.id)
    assert (entry.from_state, entry.to_state) == (state, "canceled") and entry.reason.startswith("expired")


def test_expiry_wins_over_a_due_time_in_the_same_tick(sqlite_world):
    """A scheduled server activity whose time and expiry both passed while the
    scheduler was not running was never delivered: it expires, it is not queued."""
    world = sqlite_world
    a = world.server(deliver_after=world.now() + HOUR, deliver_before=world.now() + 2 * HOUR)
    world.advance(3 * HOUR)
    world.tick()
    after = world.get(a.id)
    assert (after.state, after.result_code) == ("canceled", codes.EXPIRED)
    assert world.queue.published == []


def test_delivered_activity_does_not_expire(sqlite_world):
    world = sqlite_world
    a = world.client(deliver_before=world.now() + HOUR)
    world.deliver(a.id)
    world.advance(2 * HOUR)
    assert world.tick().expired == 0
    assert world.get(a.id).state == "in-progress"


def test_expiry_of_group_children_ends_the_group(world):
    cids = world.computers(3)
    parent = world.client(cids, deliver_before=world.now() + HOUR)
    kids = world.children(parent.id)
    world.deliver(kids[0].id)
    world.result(kids[0])
    world.advance(HOUR)
    report = world.tick()
    assert report.expired == 2
    assert [world.get(k.id).state for k in kids] == ["succeeded", "canceled", "canceled"]
    p = world.get(parent.id)
    assert p.state == "canceled" and p.counts["canceled"] == 2 and p.counts["succeeded"] == 1
    # The parent itself is never moved by the scheduler, only by its children.
    assert world.scheduler_entries(parent.id) == []
    assert [h.actor for h in world.history(parent.id) if h.to_state == "canceled"] == ["group"]
