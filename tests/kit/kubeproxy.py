"""A fault-injecting, request-counting HTTP proxy in front of a Kubernetes API server.

The tests need the same knobs whatever answers behind it, the emulator or a real
kube-apiserver: count the portal's requests and fail some of them on purpose (HTTP 500, 429
with Retry-After, a held connection that times out, a TCP reset). The portal talks HTTP
(HTTPS with a serving certificate) to this proxy on loopback with its own bearer token; the
proxy forwards each request as is (over TLS, trusting the given CA, when the upstream is
HTTPS) and passes the answer back.

    with kubeproxy.start("https://127.0.0.1:6443", ca_file=ca) as proxy:
        proxy.faults = kubeproxy.Faults(rate=0.2, kinds=("500", "429"), seed=7)
        ...
        assert proxy.requests.count(verb="create") == 4

Watches and other streamed answers are not supported: the portal never watches.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import struct
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import kubeemu
from .kubeemu import Faults, RequestCounter, RequestRecord, _parse_route

__all__ = ["Faults", "Proxy", "RequestCounter", "start"]

HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-authorization", "proxy-connection", "content-length",
                         "host"})


def _status(code: int, reason: str, message: str, **details: Any) -> bytes:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return json.dumps(body).encode()


class _Handler(kubeemu._Handler):
    """The emulator's connection handling, forwarding instead of serving."""

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # here, not in the accepting thread
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self, method: str) -> None:
        proxy = self.server.emulator
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = _parse_route(method, url.path, query)
        record = proxy.requests._begin(RequestRecord(
            method, self.path, route.verb, route.resource, route.namespace, route.name,
            route.pattern))
        body = self._read_body()
        decision = proxy._injector.decide(route.verb, url.path)
        if decision is not None and not decision.after:
            self._inject(decision.kind, decision.delay, record)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            status, answer_headers, data = proxy.forward(method, self.path, headers, body)
        except (http.client.HTTPException, OSError) as exc:
            proxy.requests._finish(record, 502)
            self._send_raw(502, [("Content-Type", "application/json")],
                       _status(502, "ServiceUnavailable", f"kubeproxy: upstream: {exc}"))
            return
        if decision is not None:  # carried out, but the answer is lost
            self._inject(decision.kind, decision.delay, record)
            return
        proxy.requests._finish(record, status)
        self._send_raw(status, answer_headers, data)

    def _send_raw(self, code: int, headers: list[tuple[str, str]], data: bytes, *,
              close: bool = False) -> None:
        self.send_response(code)
        for key, value in headers:
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _inject(self, kind: str, delay: float, record: RequestRecord) -> None:
        proxy = self.server.emulator
        json_type = [("Content-Type", "application/json")]
        if kind == "500":
            proxy.requests._finish(record, 500, "500")
            self._send_raw(500, json_type, _status(500, "InternalError",
                                               "kubeproxy: injected fault (HTTP 500)"))
        elif kind == "429":
            proxy.requests._finish(record, 429, "429")
            # What API Priority and Fairness answers when it sheds load.
            self._send_raw(429, [*json_type, ("Retry-After", "1")],
                       _status(429, "TooManyRequests", "kubeproxy: injected fault (HTTP 429)",
                               retryAfterSeconds=1))
        elif kind == "timeout":
            proxy.requests._finish(record, None, "timeout")
            proxy._stopping.wait(delay)
            try:
                self._send_raw(504, json_type, _status(
                    504, "Timeout", "kubeproxy: injected fault (held, then timed out)",
                    retryAfterSeconds=1), close=True)
                proxy.requests._finish(record, 504)
            except OSError:
                self.close_connection = True
        else:
            proxy.requests._finish(record, None, "reset")
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _Server(kubeemu._Server):
    handler_class = _Handler


class Proxy(kubeemu.Served):
    server_class = _Server
    thread_name = "kubeproxy"

    def __init__(self, upstream: str, *, ca_file: str | None = None,
                 serving: tuple[str, str] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_https = parts.scheme == "https"
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or (443 if self.upstream_https else 80)
        self.ssl_context = None
        if self.upstream_https:
            self.ssl_context = ssl.create_default_context(cafile=ca_file)
        self._local = threading.local()
        self._listen("127.0.0.1", 0)  # the handlers' `.emulator` is this proxy
        self.scheme = "http"
        if serving:  # kubectl sends no bearer token over plain HTTP
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*serving)
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False)
            self.scheme = "https"
        self._serve()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def forward(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request upstream on this handler thread's kept-alive connection."""
        for attempt in range(2):  # a kept-alive connection the upstream closed: reopen once
            conn = getattr(self._local, "conn", None)
            if conn is None:
                if self.upstream_https:
                    conn = http.client.HTTPSConnection(self.upstream_host, self.upstream_port,
                                                       context=self.ssl_context, timeout=120)
                else:
                    conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port,
                                                      timeout=120)
                self._local.conn = conn
            try:
                conn.request(method, path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, response.getheaders(), data
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def start(upstream: str, *, ca_file: str | None = None,
          serving: tuple[str, str] | None = None) -> Proxy:
    """A proxy to `upstream` (trusting `ca_file` there); over TLS itself with `serving`
    (certificate and key files)."""
    return Proxy(upstream, ca_file=ca_file, serving=serving)
