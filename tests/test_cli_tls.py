"""The `gpupaas` command against a portal with a certificate of its own CA (--ca-file,
GPUPAAS_CA_FILE, saved by login; --insecure), and its shell completion."""

import json
import os
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from .conftest import ROOT

BIN = ROOT / ".venv" / "bin"
ME = {"username": "alice", "role": "user", "token": {
    "name": "laptop", "scope": "read", "expires_at": "2027-01-01T00:00:00Z"}}


@pytest.fixture
def portal(tmp_path):
    """A portal answering /api/v1/me over HTTPS, with a certificate of a private CA."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            data = json.dumps(ME).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pem = tmp_path / "portal-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    yield f"https://localhost:{server.server_address[1]}", pem
    server.shutdown()


def gpupaas(tmp_path: Path, *args: str, stdin: str = "", **env: str):
    environ = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
               "XDG_CONFIG_HOME": str(tmp_path / "config"), **env}
    return subprocess.run([str(BIN / "gpupaas"), *args], capture_output=True, text=True,
                          env=environ, input=stdin, timeout=60)


def test_a_portal_of_a_private_ca_is_reached_with_its_ca_file_and_only_then(portal, tmp_path):
    url, pem = portal
    env = {"GPUPAAS_URL": url, "GPUPAAS_TOKEN": "gpa_x"}
    refused = gpupaas(tmp_path, "whoami", **env)
    assert refused.returncode == 8  # unreachable: the certificate is not trusted
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert "Traceback" not in refused.stderr

    for args, extra in (((f"--ca-file={pem}", "whoami"), {}),
                        (("whoami",), {"GPUPAAS_CA_FILE": str(pem)}),
                        (("--insecure", "whoami"), {})):
        done = gpupaas(tmp_path, *args, **env, **extra)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"alice on {url}: user; read-only token laptop")

    missing = gpupaas(tmp_path, "--ca-file", str(tmp_path / "nope.pem"), "whoami", **env)
    assert missing.returncode == 2
    assert missing.stderr.count("Cannot use the CA file") == 1


def test_login_keeps_the_ca_file_for_the_commands_after_it(portal, tmp_path):
    url, pem = portal
    login = gpupaas(tmp_path, "--ca-file", str(pem), "login", "--url", url, "--with-token",
                    stdin="gpa_x\n")
    assert login.returncode == 0, login.stderr
    [config] = (tmp_path / "config").rglob("config.json")
    assert json.loads(config.read_text())["ca_file"] == str(pem)
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert gpupaas(tmp_path, "whoami").returncode == 0


def test_completion_scripts_complete_the_commands(tmp_path):
    for shell in ("bash", "zsh", "fish"):
        script = gpupaas(tmp_path, "completion", shell)
        assert script.returncode == 0 and "_GPUPAAS_COMPLETE" in script.stdout
    bash = subprocess.run(
        ["bash", "-c", 'source <(gpupaas completion bash); COMP_WORDS=(gpupaas notebook st); '
         'COMP_CWORD=2; _gpupaas_completion gpupaas; echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, env={**os.environ, "PATH": f"{BIN}:/usr/bin:/bin"})
    assert bash.stdout.split() == ["stop", "start"], bash.stderr
