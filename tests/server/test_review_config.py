"""Breaker review of the server configuration: values that used to pass the
parser and then fail later with a traceback (or on every request)."""

import argparse
import subprocess
import sys

import pytest

from server import config
from server.config import ConfigError


def parse(argv, names=config.SERVER_OPTIONS):
    parser = argparse.ArgumentParser()
    config.add_options(parser, names)
    return parser.parse_args(argv)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[server]\naccount_name = caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8") as e:
        config.load(parse(["--config", str(path)]), environ={})
    assert str(path) in str(e.value)


@pytest.mark.parametrize("url, why", [
    ("nonsense://x", "nonsense"),
    ("mysql://u@h/db", "mysql"),
    ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://"),  # psycopg2 is not a dependency
])
def test_a_database_url_ridgeline_cannot_use_is_a_config_error(url, why):
    with pytest.raises(ConfigError) as e:
        config.load(parse(["--database", url]), environ={})
    assert str(e.value).startswith("database_url") and why in str(e.value)


@pytest.mark.parametrize("url", ["sqlite:////tmp/x.sqlite", "postgresql+psycopg://u@h:5432/db", "postgresql://u@h/db"])
def test_the_supported_database_urls_still_load(url):
    assert config.load(parse(["--database", url]), environ={}).database_url == url


@pytest.mark.parametrize("name, value", [
    ("RIDGELINE_DEFAULT_EXPIRY", "99999999999999w"),
    ("RIDGELINE_NO_ANSWER_DEADLINE", "999999999999d"),
    ("RIDGELINE_LEASE_SECONDS", "99999999999999999999"),
    ("RIDGELINE_JOB_TIME_LIMITS", "activity-report=9999999999999w"),
])
def test_a_duration_no_clock_can_add_is_a_config_error(name, value):
    # Accepted, it made every activity creation (or lease) an OverflowError.
    key = name.removeprefix("RIDGELINE_").lower()
    with pytest.raises(ConfigError, match="at most") as e:
        config.load(parse([]), environ={name: value})
    assert str(e.value).startswith(key)


def test_a_long_but_sane_duration_is_fine():
    assert config.load(parse([]), environ={"RIDGELINE_DEFAULT_EXPIRY": "520w"}).default_expiry == 520 * 7 * 86400


@pytest.mark.parametrize("argv", [
    ["db", "upgrade", "--database", "nonsense://x"],
    ["db", "current", "--database", "mysql://u@h/db"],
    ["api-key", "list", "--database", "nonsense://x"],
])
def test_an_unusable_database_url_on_the_command_line_is_one_line_exit_2(argv, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ridgeline", *argv], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "database_url" in lines[0]
