"""Serve an ASGI application with uvicorn (the production server's worker) on a free
loopback port, on a background thread: `with serve(app) as url: ...`; with `tls=(cert, key)`
over HTTPS (kubectl sends bearer tokens over HTTPS only). `self_signed()` makes such a pair."""

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from asgiref.sync import SyncToAsync
from django.db import connections


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost from a throwaway CA (trustme), and its key
    (PEM files in `folder`). The certificate file holds the chain, CA last, so it serves as
    the server's certificate and as the CA that clients (and kubeconfigs) trust."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems)
                          + ca.cert_pem.bytes())
    key_path.write_bytes(issued.private_key_pem.bytes())
    return cert_path, key_path


class BoundedReads(ssl.SSLSocket):
    """websockets' sync client reads in a thread with no timeout. After a refused handshake
    that thread can block in a TLS read that never completes (the socket turned readable for
    a TLS 1.3 session ticket, then nothing more came) while the caller waits for it: seen
    once in a loaded CI run, where it hung the suite. Reads here wait at most 60 s (no test
    keeps a connection silent that long), so such a hang ends in an error instead."""

    def settimeout(self, value: float | None) -> None:
        super().settimeout(60 if value is None else value)


def client_tls(cafile: str | Path) -> ssl.SSLContext:
    """A client TLS context trusting `cafile`, for the tests' WebSocket clients."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.sslsocket_class = BoundedReads
    return context


@contextmanager
def serve(app: Any, *, tls: tuple[Path, Path] | None = None,
          timeout: float = 20) -> Iterator[str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning",
        access_log=False, ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        # A refused WebSocket whose client keeps its socket open keeps its consumer waiting
        # for the disconnect: stopping waits this long for such tasks, then cancels them.
        timeout_graceful_shutdown=2,
        # As the portal's own servers (gpupaas/gunicorn.py): no forwarder is trusted to
        # rewrite the client's address, loopback included; the portal reads it itself.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="asgi-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the ASGI server did not start")
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        # Database work outside a page (the proxy's, Channels') ran on asgiref's one sync
        # thread: close what it opened there, or the test database cannot be flushed or
        # dropped. Pages close theirs at the end of each request.
        SyncToAsync.single_thread_executor.submit(connections.close_all).result()
