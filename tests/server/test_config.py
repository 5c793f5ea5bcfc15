"""Server configuration: precedence, parsing, errors, secrets."""

import argparse
import subprocess
import sys

import pytest

from server import config
from server.config import ConfigError, MiB, ServerConfig


def parse(argv, names=config.SERVER_OPTIONS):
    parser = argparse.ArgumentParser()
    config.add_options(parser, names)
    return parser.parse_args(argv)


def write(tmp_path, text, name="ridgeline.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults():
    cfg = config.load(parse([]), environ={})
    assert cfg == ServerConfig()
    assert cfg.listen == "tcp:8080:interface=127.0.0.1"
    assert cfg.max_body_size == 30 * MiB and cfg.attachment_max_size == 10 * MiB
    assert cfg.script_max_size == 1 * MiB
    assert cfg.default_expiry == 7 * 86400 and cfg.no_answer_deadline == 86400
    assert cfg.queue_url == "db" and cfg.job_handler is True and cfg.migrate is True
    assert cfg.lease_seconds == 30 and cfg.retry_count == 0
    assert cfg.exchange_interval is None and cfg.ping_interval is None
    assert cfg.account_name == "standalone" and cfg.registration_key is None
    assert cfg.refuse_pending is False
    assert str(cfg.data_dir) == "ridgeline-data"


def test_default_database_is_sqlite_in_data_dir(tmp_path):
    cfg = config.load(parse(["--data-dir", str(tmp_path / "d")]), environ={})
    assert cfg.effective_database_url == f"sqlite:///{tmp_path / 'd' / 'ridgeline.sqlite'}"
    assert cfg.is_sqlite and cfg.database_threads == 1
    pg = config.load(parse(["--database", "postgresql+psycopg://u@h/db"]), environ={})
    assert pg.database_threads == 8 and not pg.is_sqlite


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    path = write(tmp_path, "[server]\nlisten = tcp:1111\naccount_name = file\nretry_count = 3\n")
    env = {"RIDGELINE_LISTEN": "tcp:2222", "RIDGELINE_ACCOUNT_NAME": "env"}
    cfg = config.load(parse(["--config", path, "--listen", "tcp:3333"]), environ=env)
    assert cfg.listen == "tcp:3333"  # flag beats env and file
    assert cfg.account_name == "env"  # env beats file
    assert cfg.retry_count == 3  # file beats default
    assert cfg.script_max_size == 1 * MiB  # default


def test_config_file_from_environment(tmp_path):
    path = write(tmp_path, "[server]\nqueue_url = amqp://guest:guest@localhost/\n")
    cfg = config.load(parse([]), environ={"RIDGELINE_CONFIG": path})
    assert cfg.queue_url == "amqp://guest:guest@localhost/"


def test_boolean_flags_and_values(tmp_path):
    path = write(tmp_path, "[server]\njob_handler = no\nrefuse_pending = yes\nmigrate = off\n")
    cfg = config.load(parse(["--config", path]), environ={})
    assert (cfg.job_handler, cfg.refuse_pending, cfg.migrate) == (False, True, False)
    cfg = config.load(parse(["--config", path, "--job-handler", "--no-refuse-pending"]), environ={})
    assert (cfg.job_handler, cfg.refuse_pending) == (True, False)
    cfg = config.load(parse(["--no-job-handler"]), environ={"RIDGELINE_JOB_HANDLER": "true"})
    assert cfg.job_handler is False


def test_sizes_and_durations():
    cfg = config.load(
        parse(["--max-body-size", "2MiB", "--attachment-max-size", "512K", "--script-max-size", "1000",
               "--default-expiry", "1d", "--no-answer-deadline", "1h30m", "--ping-interval", "30",
               "--exchange-interval", "15m"]),
        environ={},
    )
    assert cfg.max_body_size == 2 * 1024 * 1024
    assert cfg.attachment_max_size == 512 * 1024
    assert cfg.script_max_size == 1000
    assert cfg.default_expiry == 86400 and cfg.no_answer_deadline == 5400
    assert cfg.ping_interval == 30 and cfg.exchange_interval == 900


@pytest.mark.parametrize(
    "argv, env, key",
    [
        (["--max-body-size", "lots"], {}, "max_body_size"),
        (["--retry-count", "-1"], {}, "retry_count"),
        (["--retry-count", "two"], {}, "retry_count"),
        (["--default-expiry", "7x"], {}, "default_expiry"),
        ([], {"RIDGELINE_QUEUE_URL": "redis://x"}, "queue_url"),
        ([], {"RIDGELINE_JOB_HANDLER": "maybe"}, "job_handler"),
        ([], {"RIDGELINE_LOG_LEVEL": "loud"}, "log_level"),
        ([], {"RIDGELINE_DB_THREADS": "0"}, "db_threads"),
        (["--database", "not a url"], {}, "database_url"),
    ],
)
def test_bad_values_name_the_key(argv, env, key):
    with pytest.raises(ConfigError) as e:
        config.load(parse(argv), environ=env)
    assert str(e.value).startswith(key)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = write(tmp_path, "[server]\nlisten = tcp:1\nlisen = tcp:2\n")
    with pytest.raises(ConfigError, match="unknown option 'lisen'"):
        config.load(parse(["--config", path]), environ={})
    path = write(tmp_path, "[srever]\nlisten = tcp:1\n", "b.conf")
    with pytest.raises(ConfigError, match=r"unknown section \[srever\]"):
        config.load(parse(["--config", path]), environ={})


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(parse(["--config", str(tmp_path / "nope.conf")]), environ={})
    path = write(tmp_path, "listen = x\n")
    with pytest.raises(ConfigError, match="not a valid INI file"):
        config.load(parse(["--config", path]), environ={})


def test_unrelated_environment_variables_are_ignored():
    cfg = config.load(parse([]), environ={"RIDGELINE_TEST_POSTGRES_URL": "x", "RIDGELINE_AGENT_THING": "y"})
    assert cfg == ServerConfig()


def test_secrets_have_no_flags():
    parser = argparse.ArgumentParser()
    config.add_options(parser, config.SERVER_OPTIONS)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert "--registration-key" not in flags and "--database-password" not in flags
    assert "--registration-key-file" in flags and "--database-password-file" in flags
    with pytest.raises(ValueError):
        config.add_options(argparse.ArgumentParser(), ["registration_key"])


def test_secrets_from_env_file_and_secret_files(tmp_path):
    cfg = config.load(parse([]), environ={"RIDGELINE_REGISTRATION_KEY": "s3cret"})
    assert cfg.registration_key == "s3cret"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    pw_file = tmp_path / "pw"
    pw_file.write_text("p@ss word\n")
    path = write(tmp_path, f"[server]\nregistration_key_file = {key_file}\n"
                           "database_url = postgresql+psycopg://ridge@db.example/ridgeline\n")
    cfg = config.load(parse(["--config", path, "--database-password-file", str(pw_file)]), environ={})
    assert cfg.registration_key == "from-file"
    assert cfg.database_password == "p@ss word"
    assert cfg.effective_database_url == "postgresql+psycopg://ridge:p%40ss word@db.example/ridgeline"
    # Never shown: not in messages, not in the repr.
    assert "p@ss" not in cfg.database_url_display and "***" in cfg.database_url_display
    assert "p@ss" not in repr(cfg) and "from-file" not in repr(cfg)


def test_secret_and_its_file_together_is_an_error(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("a\n")
    with pytest.raises(ConfigError, match="either registration_key or registration_key_file"):
        config.load(parse(["--registration-key-file", str(key_file)]),
                    environ={"RIDGELINE_REGISTRATION_KEY": "b"})
    with pytest.raises(ConfigError, match="database_password_file: cannot read"):
        config.load(parse(["--database-password-file", str(tmp_path / "none")]), environ={})


def test_bad_secret_value_is_not_echoed(tmp_path):
    # A secret never appears in an error message, even when the error is about it.
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as e:
        config.load(parse(["--registration-key-file", str(tmp_path / "empty")]), environ={})
    assert "is empty" in str(e.value)


def test_job_handler_subset_reads_the_same_file(tmp_path):
    path = write(tmp_path, "[server]\nlisten = tcp:1\nlease_seconds = 2m\nqueue_url = db\n")
    cfg = config.load(parse(["--config", path], config.JOB_HANDLER_OPTIONS), environ={})
    assert cfg.lease_seconds == 120 and cfg.listen == "tcp:1"


def test_ensure_data_dir_is_private(tmp_path):
    cfg = config.load(parse(["--data-dir", str(tmp_path / "a" / "b")]), environ={})
    config.ensure_data_dir(cfg)
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("argv, key", [
    (["server", "--retry-count", "x"], "retry_count"),
    (["db", "upgrade", "--log-level", "chatty"], "log_level"),
    (["api-key", "list", "--config", "/nonexistent/ridgeline.conf"], "cannot read config file"),
])
def test_command_line_error_is_one_line_exit_2(argv, key, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ridgeline", *argv, "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "configuration error" in lines[0] and key in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()  # nothing changed


def test_every_option_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    for opt in config.OPTIONS:
        assert f"| `{opt.name}` | `{opt.env}` |" in doc, opt.name
