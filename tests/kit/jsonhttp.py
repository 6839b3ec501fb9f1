"""A loopback HTTP server that answers each GET with JSON from a function: the kit's fake
Prometheus, and the tests' stand-ins for servers the portal asks (a notebook's Jupyter)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[str], tuple[int, Any]]  # the request's path (with its query) -> status, body


def send_json(handler: BaseHTTPRequestHandler, code: int, body: Any) -> None:
    """Answer the handler's request with `body` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def serve_json(answer: Answer) -> tuple[ThreadingHTTPServer, str]:
    """Start the server on a free port; (the server, its URL). `server.shutdown()` ends it."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            send_json(self, *answer(self.path))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
