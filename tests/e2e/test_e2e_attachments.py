"""Attachments end to end, over plain http: a file attached with
``ridgeline activities run-script --attach`` (and one uploaded through the REST
API and named in ``parameters.attachments``) reaches the script in
``$LANDSCAPE_ATTACHMENTS`` on the agent it was meant for; the directory is gone
afterwards; and no other computer can fetch it from ``/attachment/ID``, checked
with direct requests carrying each agent's own secure id (read from its store).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from procs import assert_ended_once, ridgeline, running_cluster, script_request, wait_until

pytestmark = pytest.mark.e2e

#: Prints where the attachments are, their modes, and the file's content.
SCRIPT = """#!/bin/sh
echo "dir=$LANDSCAPE_ATTACHMENTS"
[ "$RIDGELINE_ATTACHMENTS" = "$LANDSCAPE_ATTACHMENTS" ] || echo "RIDGELINE_ATTACHMENTS differs"
stat -c "modes=%a" "$LANDSCAPE_ATTACHMENTS"
stat -c "modes=%a" "$LANDSCAPE_ATTACHMENTS/{name}"
echo "--- content"
cat "$LANDSCAPE_ATTACHMENTS/{name}"
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, user):
    with running_cluster(tmp_path_factory.mktemp("e2e-attachments"), user, ["att-1", "att-2"]) as c:
        yield c


def secure_id(agent) -> bytes:
    """The secure id the agent stored at registration (its X-Computer-ID)."""
    con = sqlite3.connect(f"file:{agent.store_path}?mode=ro", uri=True)
    try:
        (value,) = con.execute("SELECT secure_id FROM state").fetchone()
    finally:
        con.close()
    assert value, f"{agent.name} has no secure id"
    return bytes(value)


def fetch(cluster, attachment_id: int, computer_id: bytes | None) -> tuple[int, bytes]:
    """``GET /attachment/ID`` as an agent does it; (status, body)."""
    headers = {"User-Agent": "ridgeline-agent"}
    if computer_id is not None:
        headers["X-Computer-ID"] = computer_id.decode("ascii")
    request = urllib.request.Request(f"{cluster.server.url}/attachment/{attachment_id}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def check_result(activity: dict, name: str, content: bytes, scripts_dir: Path) -> None:
    assert_ended_once(activity, "succeeded")
    text = activity["result_text"]
    head, _, body = text.partition("--- content\n")
    lines = head.splitlines()
    assert lines[0].startswith("dir=") and "differs" not in head, text
    attachment_dir = Path(lines[0].removeprefix("dir="))
    # A 0700 directory of 0600 files, under the agent's script_tempdir.
    assert lines[1:3] == ["modes=700", "modes=600"], text
    assert attachment_dir.parent == scripts_dir
    assert body.encode() == content
    # Removed once the script ended, with the script file itself.
    wait_until(lambda: not attachment_dir.exists() and not any(scripts_dir.iterdir()),
               f"{attachment_dir} and the script to be removed", timeout=15)


def test_attached_file_reaches_the_script_and_only_its_computer(cluster, user):
    files = cluster.files
    content = f"attachment content \u2713 {secrets.token_hex(8)}\nsecond line\n".encode()
    (files / "data.txt").write_bytes(content)
    key_file = cluster.procs.root / "api.key"
    key_file.write_text(cluster.api.api_key + "\n")
    computer_1 = cluster.computers["att-1"]

    created = cluster.procs.run(ridgeline(
        "activities", "run-script", "--computer", str(computer_1), "--code", SCRIPT.format(name="data.txt"),
        "--user", user, "--attach", str(files / "data.txt"), "--summary", "attachment", "--json",
        "--url", cluster.server.url, "--api-key-file", str(key_file)))
    assert created.returncode == 0, created.stderr
    activity_id = json.loads(created.stdout)["id"]
    done = cluster.final(activity_id)[activity_id]
    check_result(done, "data.txt", content, cluster.agents["att-1"].dir / "scripts")

    (attachment_id,) = done["parameters"]["attachments"].values()
    assert done["parameters"]["attachments"] == {"data.txt": attachment_id}
    own, other = secure_id(cluster.agents["att-1"]), secure_id(cluster.agents["att-2"])
    assert own != other
    # The computer whose activity used it may fetch it (so the refusals below are
    # about who asks, not a broken route) ...
    assert fetch(cluster, attachment_id, own) == (200, content)
    # ... another registered computer may not, nor a made-up or missing id.
    assert fetch(cluster, attachment_id, other)[0] in (403, 404)
    assert fetch(cluster, attachment_id, b"not-a-computer-" + secrets.token_hex(8).encode())[0] in (403, 404)
    assert fetch(cluster, attachment_id, None)[0] in (403, 404)
    assert fetch(cluster, attachment_id + 1000, own)[0] == 404


def test_uploaded_attachment_in_parameters(cluster):
    # The REST way: upload, then name the id in parameters.attachments.
    content = bytes(range(256)) * 4 + b"\n"  # binary, as is
    uploaded = cluster.api.request("POST", "/attachments", query={"name": "blob.bin"}, data=content,
                                   content_type="application/octet-stream")
    attachment_id = uploaded["id"]
    body = script_request([cluster.computers["att-2"]], SCRIPT.format(name="blob.bin").replace(
        'cat "$LANDSCAPE_ATTACHMENTS/{name}"'.format(name="blob.bin"),
        'od -An -tx1 -v "$LANDSCAPE_ATTACHMENTS/blob.bin" | tr -d " \\n"; echo'),
        user=cluster.user, marker=cluster.procs.marker)
    body["parameters"]["attachments"] = {"blob.bin": attachment_id}
    # Not delivered yet to anyone: nobody may fetch it before the activity exists.
    assert fetch(cluster, attachment_id, secure_id(cluster.agents["att-2"]))[0] in (403, 404)
    activity = cluster.api.post("/activities", body)
    done = cluster.final(activity["id"])[activity["id"]]
    check_result(done, "blob.bin", (content.hex() + "\n").encode(), cluster.agents["att-2"].dir / "scripts")

    assert fetch(cluster, attachment_id, secure_id(cluster.agents["att-2"])) == (200, content)
    assert fetch(cluster, attachment_id, secure_id(cluster.agents["att-1"]))[0] in (403, 404)


def test_nothing_left_running_and_no_errors_logged(cluster):
    wait_until(lambda: not cluster.procs.leftovers(), "no script processes left", timeout=15)
    assert cluster.procs.log_problems() == []
