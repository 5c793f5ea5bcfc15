"""One command runs everything: a real ``ridgeline server`` (db queue, its
in-process job-handler) runs a server activity created through the REST API and
serves its output; and the RabbitMQ layout, a server with ``--no-job-handler``
publishing to a separate ``ridgeline job-handler`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from test_service import start_server, stop

pytestmark = pytest.mark.e2e


def api(port, key, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        data = r.read()
        return r.status, r.headers.get("content-type"), data


def create_key(tmp_path, *extra):
    done = subprocess.run([sys.executable, "-m", "ridgeline", "api-key", "create", "--name", "admin",
                           "--data-dir", str(tmp_path / "data"), *extra], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def run_report(port, key):
    code, _, body = api(port, key, "POST", "/activities", {"type": "activity-report", "parameters": {}})
    assert code == 201, body
    aid = json.loads(body)["id"]
    deadline = time.monotonic() + 30
    while True:
        _, _, body = api(port, key, "GET", f"/activities/{aid}")
        activity = json.loads(body)
        if activity["state"] in ("succeeded", "failed", "canceled"):
            break
        assert time.monotonic() < deadline, activity
        time.sleep(0.1)
    assert activity["state"] == "succeeded", activity
    code, ctype, csv_data = api(port, key, "GET", f"/activities/{aid}/output/activities.csv")
    assert code == 200 and ctype.startswith("text/csv")
    assert csv_data.splitlines()[0].startswith(b"id,kind,type,state")
    return aid


def test_server_runs_server_activities_in_process(tmp_path):
    proc, port = start_server(tmp_path)
    try:
        key = create_key(tmp_path)
        run_report(port, key)
    finally:
        code, err = stop(proc)
    assert code == 0 and "Traceback" not in err
    assert "job-handler" in err and "started" in err


def test_server_publishes_to_rabbitmq_and_a_job_handler_process_runs_it(tmp_path, postgres_url, amqp_url):
    common = ["--database", postgres_url, "--queue", amqp_url]
    proc, port = start_server(tmp_path, "--no-job-handler", *common)
    handler = subprocess.Popen([sys.executable, "-m", "ridgeline", "job-handler", *common],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ})
    try:
        key = create_key(tmp_path, "--database", postgres_url)
        run_report(port, key)
    finally:
        code, err = stop(proc)
        hcode, herr = stop(handler)
    assert code == 0 and "Traceback" not in err
    assert hcode == 0 and "Traceback" not in herr, herr
