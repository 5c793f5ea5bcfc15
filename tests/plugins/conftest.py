"""Fixtures of the execute-script tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from twisted.internet import reactor as global_reactor

from plugins.scripts import ScriptExecutionPlugin


@pytest.fixture
def tempdir():
    """A script_tempdir every user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="ridgeline-test-"))
    path.chmod(0o711)
    yield path
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    path.rmdir()


@pytest.fixture
def plugin():
    """The plugin on the real reactor, with short kill and drain graces."""
    return ScriptExecutionPlugin(global_reactor, kill_grace=0.5, drain_grace=0.3)
