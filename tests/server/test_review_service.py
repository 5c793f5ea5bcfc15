"""Breaker review of ``ridgeline server`` start-up: a bad listen endpoint or an
unwritable port file is a configuration error reported before anything is
touched, never a traceback or a server silently running without its port file."""

import subprocess
import sys

import pytest


def run_server(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "ridgeline", "server", "--data-dir", str(tmp_path / "data"), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.e2e
@pytest.mark.parametrize("listen", ["bogus:1", "tcp:notaport", "ssl:0:privateKey=/nonexistent/key.pem"])
def test_a_bad_listen_endpoint_is_a_configuration_error_and_touches_nothing(tmp_path, listen):
    done = run_server(tmp_path, "--listen", listen)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "configuration error" in lines[0] and "listen" in lines[0], done.stderr
    assert not (tmp_path / "data").exists()  # no database created or migrated


@pytest.mark.e2e
def test_a_port_file_in_a_missing_directory_is_a_configuration_error(tmp_path):
    done = run_server(tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
                      "--port-file", str(tmp_path / "no" / "such" / "port"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "port_file" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.e2e
def test_a_port_file_that_cannot_be_written_stops_the_server(tmp_path):
    # The directory exists at start but cannot take the file: the failure is
    # only known once listening. The server must stop (exit 1), not run on.
    blocked = tmp_path / "port"
    (blocked.with_name("port.tmp")).mkdir()  # the temporary file cannot be created
    done = run_server(tmp_path, "--listen", "tcp:0:interface=127.0.0.1", "--port-file", str(blocked))
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr and "port" in done.stderr
    assert "Traceback" not in done.stderr and "Unhandled error" not in done.stderr
