"""Fixtures of the end-to-end tests: real processes, always stopped."""

from __future__ import annotations

import os
import pwd
import uuid

import pytest

from procs import Processes, skip_unless_linux


@pytest.fixture(scope="module")
def user() -> str:
    """Scripts run as the user running the tests (the agents' ``script_users``)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def new_processes(root) -> Processes:
    skip_unless_linux()
    return Processes(root, marker=f"{root}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def procs(tmp_path):
    """A :class:`Processes` of this test; every process in it is stopped afterwards."""
    p = new_processes(tmp_path)
    yield p
    p.stop_all()
