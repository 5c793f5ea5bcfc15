"""Breaker review of the admin CLI: a time beyond the calendar is a usage error
(one line, exit 2), not a traceback."""

import datetime as dt
import subprocess
import sys

import pytest

from ridgeline.admin import parsing

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text", ["+99999999999d", "-99999999999d", "+999999999999999999999s", "0001-01-01T00:00:00+01:00"])
def test_a_time_beyond_the_calendar_is_a_value_problem(text):
    with pytest.raises(parsing.ValueProblem, match="out of range"):
        parsing.parse_when(text, NOW)


@pytest.mark.parametrize("argv", [["activities", "list", "--since=-999999999999d"],
                                  ["activities", "run-script", "--computer", "1", "--user", "root", "--code",
                                   "#!/bin/sh", "--deliver-after", "+99999999999d"]])
def test_the_command_line_reports_it_in_one_line(argv):
    done = subprocess.run([sys.executable, "-m", "ridgeline", *argv, "--url", "http://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "out of range" in done.stderr.strip().splitlines()[-1]
