"""The activity state machine: the transition tables of ``spec/activities.md``.

Pure functions and constants, no I/O. The database layer asks this module
whether a move is allowed before its compare-and-set; the REST API maps a refusal
to HTTP 409. State names are the wire/API spelling and nothing else is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from protocol import codes

QUEUED = "queued"
SCHEDULED = "scheduled"
WAITING = "waiting"
BLOCKED = "blocked"
IN_PROGRESS = "in-progress"
FAILED = "failed"
CANCELED = "canceled"
SUCCEEDED = "succeeded"

STATES: tuple[str, ...] = (QUEUED, SCHEDULED, WAITING, BLOCKED, IN_PROGRESS, FAILED, CANCELED, SUCCEEDED)
INITIAL_STATES = frozenset({QUEUED, SCHEDULED, WAITING, BLOCKED})
FINAL_STATES = frozenset({FAILED, CANCELED, SUCCEEDED})
NON_FINAL_STATES = frozenset(STATES) - FINAL_STATES

CLIENT = "client"
SERVER = "server"
KINDS = (CLIENT, SERVER)

# Why a blocked activity is blocked.
APPROVAL = "approval"  # waits for an administrator's approval
PAUSED = "paused"  # paused by an administrator
HELD = "held"  # approved, but its deliver_after time has not come
BLOCKED_REASONS = (APPROVAL, PAUSED, HELD)

CLIENT_TRANSITIONS: Mapping[str, frozenset[str]] = {
    QUEUED: frozenset({IN_PROGRESS, CANCELED, BLOCKED}),
    SCHEDULED: frozenset({IN_PROGRESS, CANCELED}),
    WAITING: frozenset({QUEUED, IN_PROGRESS, CANCELED}),
    BLOCKED: frozenset({QUEUED, CANCELED, WAITING}),
    IN_PROGRESS: frozenset({FAILED, SUCCEEDED, CANCELED}),
    FAILED: frozenset(),
    SUCCEEDED: frozenset(),
    # A provisional cancel (canceled while in progress) may still become
    # succeeded or failed on the agent's result: see resolve_provisional_cancel.
    CANCELED: frozenset(),
}

SERVER_TRANSITIONS: Mapping[str, frozenset[str]] = {
    QUEUED: frozenset({IN_PROGRESS, CANCELED, BLOCKED}),
    SCHEDULED: frozenset({QUEUED, IN_PROGRESS, CANCELED}),
    WAITING: frozenset({QUEUED, IN_PROGRESS, CANCELED}),
    BLOCKED: frozenset({QUEUED, CANCELED, WAITING}),
    IN_PROGRESS: frozenset({FAILED, SUCCEEDED, CANCELED}),
    FAILED: frozenset(),
    SUCCEEDED: frozenset(),
    CANCELED: frozenset(),
}

TRANSITIONS: Mapping[str, Mapping[str, frozenset[str]]] = {CLIENT: CLIENT_TRANSITIONS, SERVER: SERVER_TRANSITIONS}


class TransitionError(Exception):
    """A move the state table (or the blocked reason) does not allow.

    ``current`` is the state the activity is in, for the API's 409 body.
    """

    def __init__(self, message: str, *, activity_id: int | None = None, current: str | None = None):
        super().__init__(message)
        self.activity_id = activity_id
        self.current = current


def is_allowed(kind: str, from_state: str, to_state: str) -> bool:
    """Whether the table of ``kind`` lists ``from_state`` → ``to_state``."""
    return to_state in TRANSITIONS[kind].get(from_state, frozenset())


def check(kind: str, from_state: str, to_state: str, *, activity_id: int | None = None) -> None:
    """Raise :class:`TransitionError` unless the move is in the table."""
    if kind not in TRANSITIONS:
        raise ValueError(f"unknown activity kind {kind!r}")
    if not is_allowed(kind, from_state, to_state):
        what = f"activity {activity_id}" if activity_id is not None else "an activity"
        raise TransitionError(
            f"{what} is {from_state}; a {kind} activity cannot go from {from_state} to {to_state}",
            activity_id=activity_id,
            current=from_state,
        )


def resolve_provisional_cancel(status: int, result_code: int | None) -> str:
    """The final state of a client activity canceled while in progress, given the
    agent's result: ``canceled`` when the work was stopped because of the cancel,
    otherwise what the agent reported (``succeeded`` or ``failed``)."""
    if result_code == codes.CANCELED:
        return CANCELED
    return SUCCEEDED if status == codes.SUCCEEDED else FAILED


def result_state(status: int) -> str:
    """The final state an ``operation-result`` status means."""
    return SUCCEEDED if status == codes.SUCCEEDED else FAILED


@dataclass(frozen=True)
class Placement:
    """Where an activity goes: a state, and why when that state is ``blocked``."""

    state: str
    blocked_reason: str | None = None


def initial_placement(*, requires_approval: bool, prerequisite_met: bool, time_has_come: bool) -> Placement:
    """The state at creation: the first condition that applies wins.

    needs approval → blocked/approval; unmet prerequisite → waiting; future time →
    scheduled; else queued.
    """
    if requires_approval:
        return Placement(BLOCKED, APPROVAL)
    if not prerequisite_met:
        return Placement(WAITING)
    if not time_has_come:
        return Placement(SCHEDULED)
    return Placement(QUEUED)


def approval_placement(*, prerequisite_met: bool, time_has_come: bool) -> Placement:
    """Where an approved activity goes: unmet prerequisite → waiting; future time →
    blocked/held; else queued."""
    if not prerequisite_met:
        return Placement(WAITING)
    if not time_has_come:
        return Placement(BLOCKED, HELD)
    return Placement(QUEUED)


# Administrator verbs on a blocked/queued activity: which reason each acts on.
VERB_REASONS: Mapping[str, str] = {"approve": APPROVAL, "resume": PAUSED}


def check_verb(verb: str, state: str, blocked_reason: str | None, *, activity_id: int | None = None) -> None:
    """Raise :class:`TransitionError` unless ``verb`` applies to an activity in
    ``state`` (blocked for ``blocked_reason``). ``pause`` acts on ``queued``;
    ``approve`` only on blocked/approval; ``resume`` only on blocked/paused."""
    what = f"activity {activity_id}" if activity_id is not None else "the activity"
    if verb == "pause":
        if state != QUEUED:
            raise TransitionError(f"{what} is {state}; only a queued activity can be paused",
                                  activity_id=activity_id, current=state)
        return
    if verb not in VERB_REASONS:
        raise ValueError(f"unknown verb {verb!r}")
    wanted = VERB_REASONS[verb]
    if state != BLOCKED or blocked_reason != wanted:
        now = f"{state} ({blocked_reason})" if state == BLOCKED else state
        raise TransitionError(f"{what} is {now}; {verb} applies only to an activity blocked for {wanted}",
                              activity_id=activity_id, current=state)


def group_state(counts: Mapping[str, int]) -> str:
    """A group parent's state from the number of its children in each state.

    Before any child has started: the initial state they share, or ``queued`` if
    they differ. ``in-progress`` once any child is in progress or final, until all
    are final. All final: ``failed`` if any failed, else ``canceled`` if any was,
    else ``succeeded``.
    """
    total = sum(counts.get(s, 0) for s in STATES)
    if total == 0:
        return QUEUED
    final = sum(counts.get(s, 0) for s in FINAL_STATES)
    if final == total:
        if counts.get(FAILED, 0):
            return FAILED
        if counts.get(CANCELED, 0):
            return CANCELED
        return SUCCEEDED
    if final or counts.get(IN_PROGRESS, 0):
        return IN_PROGRESS
    present = [s for s in INITIAL_STATES if counts.get(s, 0)]
    return present[0] if len(present) == 1 else QUEUED


def display_progress(state: str, progress: int) -> int:
    """A single activity's displayed progress: its reported figure, 100 once final."""
    return 100 if state in FINAL_STATES else max(0, min(100, progress))


def group_progress(counts: Mapping[str, int]) -> int:
    """A group's displayed progress: the percentage of its children that are final."""
    total = sum(counts.get(s, 0) for s in STATES)
    if not total:
        return 0
    return (100 * sum(counts.get(s, 0) for s in FINAL_STATES)) // total


def waiting_figure(*, is_group: bool, state: str, progress: int, counts: Mapping[str, int]) -> int:
    """How far a prerequisite is, for ``wait_for``: only succeeded work counts.

    A single activity counts 100 once succeeded and its reported progress while in
    progress; a group counts the percentage of its children that succeeded.
    """
    if is_group:
        total = sum(counts.get(s, 0) for s in STATES)
        return (100 * counts.get(SUCCEEDED, 0)) // total if total else 0
    if state == SUCCEEDED:
        return 100
    if state == IN_PROGRESS:
        return max(0, min(100, progress))
    return 0


def waiting_is_hopeless(*, is_group: bool, state: str, counts: Mapping[str, int], threshold: int) -> bool:
    """Whether the prerequisite can no longer reach ``threshold``: it ended (or,
    for a group, too many children ended) without enough succeeded work."""
    if is_group:
        total = sum(counts.get(s, 0) for s in STATES)
        if not total:
            return True
        lost = counts.get(FAILED, 0) + counts.get(CANCELED, 0)
        best = (100 * (total - lost)) // total
        return best < threshold
    return state in FINAL_STATES and (state != SUCCEEDED and threshold > 0)
