"""Every (from, to) pair of both tables: the allowed ones pass, all others are refused."""

import itertools

import pytest

from protocol import codes
from server import states as s

CLIENT_ALLOWED = {
    ("queued", "in-progress"), ("queued", "canceled"), ("queued", "blocked"),
    ("scheduled", "in-progress"), ("scheduled", "canceled"),
    ("waiting", "queued"), ("waiting", "in-progress"), ("waiting", "canceled"),
    ("blocked", "queued"), ("blocked", "canceled"), ("blocked", "waiting"),
    ("in-progress", "failed"), ("in-progress", "succeeded"), ("in-progress", "canceled"),
}
SERVER_ALLOWED = CLIENT_ALLOWED | {("scheduled", "queued")}

ALL_PAIRS = list(itertools.product(s.STATES, repeat=2))


@pytest.mark.parametrize("kind,allowed", [("client", CLIENT_ALLOWED), ("server", SERVER_ALLOWED)])
@pytest.mark.parametrize("pair", ALL_PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_every_pair(kind, allowed, pair):
    from_state, to_state = pair
    if pair in allowed:
        assert s.is_allowed(kind, from_state, to_state)
        s.check(kind, from_state, to_state)
    else:
        assert not s.is_allowed(kind, from_state, to_state)
        with pytest.raises(s.TransitionError) as e:
            s.check(kind, from_state, to_state, activity_id=7)
        assert e.value.current == from_state
        assert "7" in str(e.value)


def test_state_names_are_the_contracts():
    assert s.STATES == ("queued", "scheduled", "waiting", "blocked", "in-progress", "failed", "canceled", "succeeded")
    assert s.FINAL_STATES == {"failed", "canceled", "succeeded"}


def test_unknown_kind():
    with pytest.raises(ValueError):
        s.check("other", "queued", "canceled")


@pytest.mark.parametrize(
    "status,code,expected",
    [
        (codes.FAILED, codes.CANCELED, "canceled"),
        (codes.SUCCEEDED, None, "succeeded"),
        (codes.FAILED, codes.SCRIPT_FAILED, "failed"),
        (codes.FAILED, None, "failed"),
    ],
)
def test_provisional_cancel_resolution(status, code, expected):
    assert s.resolve_provisional_cancel(status, code) == expected


@pytest.mark.parametrize(
    "approval,met,time,expected",
    [
        (True, False, False, s.Placement("blocked", "approval")),
        (False, False, False, s.Placement("waiting")),
        (False, True, False, s.Placement("scheduled")),
        (False, True, True, s.Placement("queued")),
        (False, False, True, s.Placement("waiting")),
    ],
)
def test_initial_placement(approval, met, time, expected):
    assert s.initial_placement(requires_approval=approval, prerequisite_met=met, time_has_come=time) == expected


@pytest.mark.parametrize(
    "met,time,expected",
    [
        (False, False, s.Placement("waiting")),
        (False, True, s.Placement("waiting")),
        (True, False, s.Placement("blocked", "held")),
        (True, True, s.Placement("queued")),
    ],
)
def test_approval_placement(met, time, expected):
    assert s.approval_placement(prerequisite_met=met, time_has_come=time) == expected


def test_verbs_act_only_on_their_reason():
    s.check_verb("approve", "blocked", "approval")
    s.check_verb("resume", "blocked", "paused")
    s.check_verb("pause", "queued", None)
    for verb, state, reason in [
        ("approve", "blocked", "paused"), ("approve", "blocked", "held"), ("approve", "queued", None),
        ("resume", "blocked", "approval"), ("resume", "queued", None), ("pause", "blocked", "paused"),
        ("pause", "in-progress", None),
    ]:
        with pytest.raises(s.TransitionError) as e:
            s.check_verb(verb, state, reason)
        assert e.value.current == state


@pytest.mark.parametrize(
    "counts,expected",
    [
        ({"queued": 3}, "queued"),
        ({"scheduled": 2}, "scheduled"),
        ({"blocked": 2}, "blocked"),
        ({"scheduled": 1, "waiting": 1}, "queued"),
        ({"queued": 1, "in-progress": 1}, "in-progress"),
        ({"queued": 1, "succeeded": 1}, "in-progress"),
        ({"succeeded": 2}, "succeeded"),
        ({"succeeded": 1, "canceled": 1}, "canceled"),
        ({"succeeded": 1, "canceled": 1, "failed": 1}, "failed"),
    ],
)
def test_group_state(counts, expected):
    assert s.group_state(counts) == expected


def test_progress_and_waiting_figures():
    assert s.display_progress("in-progress", 40) == 40
    assert s.display_progress("failed", 40) == 100
    assert s.group_progress({"succeeded": 1, "failed": 1, "queued": 2}) == 50
    assert s.waiting_figure(is_group=False, state="succeeded", progress=0, counts={}) == 100
    assert s.waiting_figure(is_group=False, state="in-progress", progress=30, counts={}) == 30
    assert s.waiting_figure(is_group=False, state="failed", progress=90, counts={}) == 0
    assert s.waiting_figure(is_group=True, state="in-progress", progress=0, counts={"succeeded": 1, "failed": 3}) == 25
    assert s.waiting_is_hopeless(is_group=True, state="in-progress", counts={"failed": 3, "queued": 1}, threshold=50)
    assert not s.waiting_is_hopeless(is_group=True, state="in-progress", counts={"failed": 2, "queued": 2}, threshold=50)
    assert s.waiting_is_hopeless(is_group=False, state="canceled", counts={}, threshold=100)
    assert not s.waiting_is_hopeless(is_group=False, state="in-progress", counts={}, threshold=100)
