"""The admin CLI over https: ``--ca-file`` / ``RIDGELINE_CA_FILE`` trusts a
private CA; without it (or with another CA) the certificate is refused with one
line saying how to trust it; an unusable CA file is a usage error."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ridgeline.admin.client import ApiClient, BadCaFile, Unreachable

from admin_cli_support import run_cli
from tlscerts import make_ca, make_server_tls


class _Computers(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"count": 1, "next": None, "results": [
            {"id": 7, "title": "over-tls", "hostname": "h", "status": "accepted", "tags": [],
             "last_seen": None, "registered_at": "2030-01-01T00:00:00Z"}]}).encode()
        self.send_response(200 if self.path.startswith("/api/v1/computers") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def https(tmp_path):
    """An https server on loopback with a certificate of a throwaway CA."""
    tls = make_server_tls(tmp_path / "tls")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Computers)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", tls
    httpd.shutdown()
    httpd.server_close()


def test_client_trusts_the_ca_file_and_only_it(https, tmp_path):
    url, tls = https
    assert ApiClient(url, "k", timeout=10, ca_file=str(tls.ca)).get("/computers")["results"][0]["id"] == 7
    other, _key, _cert = make_ca(tmp_path / "other", "other")
    for ca in (str(other), None):
        with pytest.raises(Unreachable) as e:
            ApiClient(url, "k", timeout=10, ca_file=ca).get("/computers")
        assert "TLS certificate is not trusted" in str(e.value) and "--ca-file" in str(e.value)


def test_cli_flag_and_environment(https, monkeypatch, capsys):
    url, tls = https
    code, out, err = run_cli(["computers", "list", "--url", url, "--ca-file", str(tls.ca)], monkeypatch, capsys)
    assert (code, err) == (0, "") and "over-tls" in out
    code, out, err = run_cli(["computers", "list", "--json"], monkeypatch, capsys,
                             env={"RIDGELINE_URL": url, "RIDGELINE_CA_FILE": str(tls.ca)})
    assert code == 0 and json.loads(out)["results"][0]["title"] == "over-tls"


def test_untrusted_certificate_is_one_line(https, monkeypatch, capsys):
    url, _tls = https
    code, out, err = run_cli(["computers", "list", "--url", url], monkeypatch, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"ridgeline: error: cannot reach the server at {url}: its TLS certificate is not trusted")
    assert "give --ca-file FILE or set RIDGELINE_CA_FILE" in err


def test_unusable_ca_file_is_a_usage_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "empty.pem").write_text("")
    cases = {str(tmp_path / "missing.pem"): "no such file",
             str(tmp_path / "junk.pem"): "not a PEM file of CA certificates",
             str(tmp_path / "empty.pem"): "not a PEM file of CA certificates",
             str(tmp_path): "cannot read it: Is a directory"}
    for path, message in cases.items():
        with pytest.raises(BadCaFile):
            ApiClient("https://127.0.0.1:1", None, ca_file=path)
        code, out, err = run_cli(["computers", "list", "--url", "https://127.0.0.1:1", "--ca-file", path],
                                 monkeypatch, capsys)
        assert (code, out) == (2, ""), err
        assert err == f"ridgeline: error: --ca-file {path}: {message}\n"
