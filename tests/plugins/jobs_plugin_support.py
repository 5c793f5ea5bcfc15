"""The job plugin tests reuse the job-handler test world of tests/server."""

import sys
from pathlib import Path

_server_tests = str(Path(__file__).resolve().parents[1] / "server")
if _server_tests not in sys.path:
    sys.path.append(_server_tests)

from jobs_support import NOW, TestJobs, World, make_world  # noqa: E402,F401
