"""Fixtures for agent tests: a Clock, the fake server behind StubTreq, and a
factory building the agent through its composition root."""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock



@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_700_000_000)  # a realistic epoch, for timestamps
    return c


@pytest.fixture
def server():
    from agent_fakeserver import FakeServer

    return FakeServer()


@pytest.fixture
def stub(server):
    from treq.testing import StubTreq

    return StubTreq(server.resource())


@pytest.fixture
def data_path(tmp_path):
    p = tmp_path / "agent-data"
    p.mkdir()
    return p


@pytest.fixture
def make_agent(clock, stub, data_path):
    """``make_agent(plugins=[(name, obj)], **settings)`` builds an AgentCore (not
    started). Calling it again with the same data_path simulates a restart."""
    from agent.config import make_config
    from agent.plugins import AgentPlugins
    from agent.service import build_agent
    from agent.store import AgentStore

    made = []

    def make(plugins=(), *, http=None, entry_points=False, **settings):
        values = {"url": "http://server.test/message-system", "data_path": str(data_path), "computer_title": "box1"}
        values.update(settings)
        config = make_config(values)
        pm = AgentPlugins.load(clock, config.plugins, builtins={}, entry_points=entry_points)
        for name, obj in plugins:
            pm.register(obj, name)
        agent = build_agent(
            config,
            reactor=clock,
            http=http or stub,
            plugins=pm,
            store=AgentStore.open(data_path),
            random=random.Random(42),
            hostname="box1.example",
        )
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
        agent.store.close()
