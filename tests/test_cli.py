"""The ``ridgeline`` dispatcher."""

import subprocess
import sys

from ridgeline import __version__
from ridgeline.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"ridgeline {__version__}"


def test_help_lists_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    from ridgeline.cli import SUBCOMMANDS, _available

    present = [s.name for s in SUBCOMMANDS if _available(s)]
    assert present, "no subcommand is implemented"
    for name in present:
        assert name in out


def test_unknown_subcommand_is_an_error(capsys):
    try:
        code = main(["no-such-command"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_runs():
    done = subprocess.run(
        [sys.executable, "-m", "ridgeline", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in done.stdout


def test_agent_subcommand_does_not_import_the_server():
    """The dispatcher imports a side's code only when its subcommand runs."""
    code = (
        "import sys\n"
        "from ridgeline.cli import build_parser\n"
        "build_parser()\n"
        "assert not any(m == 'server' or m.startswith('server.') for m in sys.modules), sys.modules\n"
        "assert 'sqlalchemy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
