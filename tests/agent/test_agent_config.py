"""Agent configuration: INI file, flags, validation, and the CLI around them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.config import ConfigError, load_config, make_config


def write(tmp_path, text):
    p = tmp_path / "agent.conf"
    p.write_text(text)
    return p


def test_defaults_follow_the_spec(tmp_path):
    path = write(tmp_path, "[agent]\nurl = https://r.example/message-system\n")
    c = load_config(path)
    assert c.ping_url == "https://r.example/ping"
    assert c.account_name == "standalone"
    assert (c.exchange_interval, c.urgent_exchange_interval, c.ping_interval) == (900, 60, 30)
    assert c.script_users == ()  # nobody may run scripts until configured
    assert c.script_output_limit == 512
    assert c.plugins is None
    import socket

    assert c.computer_title == socket.gethostname()


def test_values_are_parsed(tmp_path):
    path = write(
        tmp_path,
        "[agent]\nurl = http://h:8080/x/message-system\nping_url = http://p/ping\nscript_users = root, nobody\n"
        "exchange_interval = 1\nurgent_exchange_interval = 1\nping_interval = 1\ntags = web, prod-1\n"
        "plugins = execute-script\nlog_level = WARNING\n",
    )
    c = load_config(path)
    assert c.ping_url == "http://p/ping"
    assert c.script_users == ("root", "nobody")
    assert c.exchange_interval == 1
    assert c.tags == "web, prod-1"
    assert c.plugins == ("execute-script",)
    assert c.log_level == "warn"
    assert load_config(None, {"url": "http://h/message-system", "script_users": "all"}).script_users == "ALL"


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, "[agent]\nurl = http://a/message-system\nping_interval = 30\n")
    c = load_config(path, {"ping_interval": "5", "url": None})
    assert c.ping_interval == 5
    assert c.url == "http://a/message-system"


@pytest.mark.parametrize(
    "line, key",
    [
        ("colour = blue", "colour"),
        ("ping_interval = 0", "ping_interval"),
        ("exchange_interval = soon", "exchange_interval"),
        ("url = ftp://x/y", "url"),
        ("script_output_limit = -1", "script_output_limit"),
        ("log_level = loud", "log_level"),
        ("tags = bad tag!", "tags"),
        ("ssl_public_key = /no/such/ca.pem", "ssl_public_key"),
        ("script_users = root;rm", "script_users"),
    ],
)
def test_bad_values_name_the_key(tmp_path, line, key):
    base = "url = http://a/message-system\n" if not line.startswith("url") else ""
    path = write(tmp_path, f"[agent]\n{base}{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert key in str(info.value)


def test_missing_url_and_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="url"):
        make_config({})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.conf")
    with pytest.raises(ConfigError, match=r"\[agent\]"):
        load_config(write(tmp_path, "[client]\nurl = http://a/b\n"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ridgeline", "agent", *args], capture_output=True, text=True)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    path = write(tmp_path, "[agent]\nurl = http://a/message-system\nping_interval = 0\n")
    done = run_cli("--config", str(path))
    assert done.returncode == 2
    assert "ping_interval" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_configure_writes_a_loadable_file(tmp_path):
    path = tmp_path / "etc" / "agent.conf"
    done = run_cli("configure", "--config", str(path), "--url", "https://r.example/message-system",
                   "--script-users", "nobody", "--data-path", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    c = load_config(path)
    assert c.url == "https://r.example/message-system"
    assert c.script_users == ("nobody",)
    assert (path.stat().st_mode & 0o777) == 0o640
    # Updating keeps what was there; a bad value changes nothing.
    done = run_cli("configure", "--config", str(path), "--ping-interval", "0")
    assert done.returncode == 2 and "ping_interval" in done.stderr and "Traceback" not in done.stderr
    assert load_config(path).ping_interval == 30
    done = run_cli("configure", "--config", str(path), "--ping-interval", "10")
    assert done.returncode == 0
    c = load_config(path)
    assert (c.ping_interval, c.script_users) == (10, ("nobody",))
