"""Helpers shared by the agent tests (imported by name, unlike conftest)."""

from __future__ import annotations

from twisted.internet.task import Clock


def settle(clock: Clock, stub=None, seconds: float = 0.0, step: float = 0.5) -> None:
    """Advance the clock by ``seconds`` in small steps, flushing StubTreq."""
    if stub is not None:
        stub.flush()
    clock.advance(0)
    if stub is not None:
        stub.flush()
    elapsed = 0.0
    while elapsed < seconds:
        clock.advance(step)
        elapsed += step
        if stub is not None:
            stub.flush()
