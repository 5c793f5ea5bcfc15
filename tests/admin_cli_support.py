"""Running the ``ridgeline`` command in-process for the admin CLI tests."""

from __future__ import annotations

from ridgeline.cli import main

#: Environment variables the CLI reads; cleared so the caller's shell never leaks in.
CLI_ENV = ("RIDGELINE_URL", "RIDGELINE_API_KEY", "RIDGELINE_API_KEY_FILE", "RIDGELINE_CA_FILE")


def run_cli(argv, monkeypatch, capsys, env=None):
    """(exit code, stdout, stderr) of ``ridgeline ARGV`` with only ``env`` set."""
    for k in CLI_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
