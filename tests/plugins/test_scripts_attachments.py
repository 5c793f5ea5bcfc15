"""execute-script attachments: fetched from a fake server resource (StubTreq)."""

from __future__ import annotations

import os
import pwd

import pytest
import pytest_twisted
import treq
from OpenSSL import SSL
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from protocol import codes

from scripts_support import AttachmentServer, FakeContext, finish, message, needs_root, run


LIST_CODE = (
    'cd "$LANDSCAPE_ATTACHMENTS" && [ "$RIDGELINE_ATTACHMENTS" = "$PWD" ] || exit 9\n'
    'stat -c "%a %U" .\n'
    'for f in *; do echo "$f: $(stat -c "%a %U" "$f") $(cat "$f")"; done\n'
    'echo "$LANDSCAPE_ATTACHMENTS" > /dev/null\n'
)


@pytest_twisted.ensureDeferred
async def test_attachments_are_fetched_and_removed(plugin, tempdir):
    server = AttachmentServer({7: b"seven", 8: b"eight"})
    ctx = FakeContext(tempdir, http=StubTreq(server))
    attachments = {"a.txt": 7, "b.txt": 8, "inline.txt": "inline content"}
    result = await run(plugin, ctx, message(LIST_CODE, attachments=attachments))
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert result.status == codes.SUCCEEDED, result.result_text
    assert result.result_text.splitlines() == [
        f"700 {me}",
        f"a.txt: 600 {me} seven",
        f"b.txt: 600 {me} eight",
        f"inline.txt: 600 {me} inline content",
    ]
    assert sorted(server.requests) == [b"/attachment/7", b"/attachment/8"]
    assert list(tempdir.iterdir()) == [], "directory, files and script are removed"


@needs_root
@pytest_twisted.ensureDeferred
async def test_attachments_belong_to_the_user(plugin, tempdir):
    server = AttachmentServer({7: b"seven"})
    ctx = FakeContext(tempdir, http=StubTreq(server), script_users=("nobody",))
    result = await run(plugin, ctx,
                       message(LIST_CODE, username="nobody", attachments={"a.txt": 7}))
    assert result.status == codes.SUCCEEDED, result.result_text
    assert result.result_text.splitlines() == ["700 nobody", "a.txt: 600 nobody seven"]
    assert list(tempdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_missing_attachment_fails_with_104(plugin, tempdir):
    ctx = FakeContext(tempdir, http=StubTreq(AttachmentServer({7: b"seven"})))
    result = await run(plugin, ctx,
                       message("echo ran", attachments={"a.txt": 7, "gone.txt": 404}))
    assert (result.status, result.result_code) == (codes.FAILED, codes.ATTACHMENT_DOWNLOAD_FAILED)
    assert result.result_text == (
        "Could not download attachment 'gone.txt' (id 404): the server answered HTTP 404."
    )
    assert ctx.recorded == [], "the script never ran"
    assert list(tempdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_secure_id_is_sent(plugin, tempdir):
    ctx = FakeContext(tempdir, http=StubTreq(AttachmentServer({7: b"x"})), secure_id=b"wrong")
    result = await run(plugin, ctx, message("echo", attachments={"a": 7}))
    assert result.result_code == codes.ATTACHMENT_DOWNLOAD_FAILED
    assert result.result_text.endswith("the server answered HTTP 403.")


@pytest_twisted.ensureDeferred
async def test_connection_error_fails_with_104(plugin, tempdir):
    ctx = FakeContext(tempdir, http=treq)
    # Port 1 on loopback: nothing listens, the connection is refused.
    ctx.attachment_url = lambda attachment_id: f"http://127.0.0.1:1/attachment/{attachment_id}"
    result = await run(plugin, ctx, message("echo", attachments={"a": 5}))
    assert (result.status, result.result_code) == (codes.FAILED, codes.ATTACHMENT_DOWNLOAD_FAILED)
    assert result.result_text.startswith("Could not download attachment 'a' (id 5): ")
    assert "refused" in result.result_text
    for raw in ("Failure", "Traceback", "[<", ".."):
        assert raw not in result.result_text
    assert list(tempdir.iterdir()) == []


class _FailingHTTP:
    """An HTTP client whose every request fails with ``error``, as treq's would."""

    def __init__(self, error):
        self.error = error
        self.urls = []

    def get(self, url, **kw):
        self.urls.append(url)
        return defer.fail(self.error)


@pytest_twisted.ensureDeferred
async def test_refused_connection_inside_twisteds_wrapper_is_one_plain_sentence(plugin, tempdir):
    # What twisted.web's Agent raises: a list of Failures, whose repr is "[<twisted...Failure ...>]".
    error = ResponseNeverReceived([Failure(ConnectionRefusedError("Connection refused"))])
    http = _FailingHTTP(error)
    result = await run(plugin, FakeContext(tempdir, http=http), message("echo ran", attachments={"a": 5}))
    assert (result.status, result.result_code) == (codes.FAILED, codes.ATTACHMENT_DOWNLOAD_FAILED)
    assert result.result_text == ("Could not download attachment 'a' (id 5): ConnectionRefusedError: "
                                  "Connection was refused by other side: Connection refused.")
    assert http.urls == ["https://server.invalid/attachment/5"]
    assert list(tempdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_tls_failure_says_what_to_do_not_what_openssl_printed(plugin, tempdir):
    ssl_error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    http = _FailingHTTP(ResponseNeverReceived([Failure(ssl_error)]))
    result = await run(plugin, FakeContext(tempdir, http=http), message("echo ran", attachments={"a": 5}))
    assert result.result_code == codes.ATTACHMENT_DOWNLOAD_FAILED
    assert result.result_text == (
        "Could not download attachment 'a' (id 5): the server's TLS certificate could not be verified "
        "(certificate verify failed); set ssl_public_key to the file of the CA that signed it.")
    assert list(tempdir.iterdir()) == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".", "", "x/../../y"])
@pytest_twisted.ensureDeferred
async def test_unsafe_attachment_names_are_refused(plugin, tempdir, name):
    server = AttachmentServer({7: b"seven"})
    ctx = FakeContext(tempdir, http=StubTreq(server))
    result = await run(plugin, ctx, message("echo", attachments={name: 7}))
    assert (result.status, result.result_code) == (codes.FAILED, None)
    assert result.result_text == f"The attachment name {name!r} is not a plain file name."
    assert server.requests == [] and list(tempdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_cancel_during_download(plugin, tempdir):
    server = AttachmentServer({})
    ctx = FakeContext(tempdir, http=StubTreq(server), operation_id=5)
    d = plugin.ridgeline_agent_handle(message("echo ran", attachments={"slow": 999}), ctx)
    assert len(server.hanging) == 1
    assert plugin.ridgeline_agent_cancel(5) is True
    result = await finish(d)
    assert (result.status, result.result_code) == (codes.FAILED, codes.CANCELED)
    assert result.result_text == "Canceled before the script started."
    assert ctx.recorded == [] and list(tempdir.iterdir()) == []
    assert plugin.ridgeline_agent_cancel(5) is None
