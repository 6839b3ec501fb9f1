"""What the emulator and the kit's proxy (``tests/kit/kubeproxy.py``) share: the routes of
the Kubernetes API (which verb and resource a request is), the connection handling, and the
``Served`` lifecycle."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

import yaml

from .errors import Obj, bad_request, qualified, unsupported_media
from .store import flag


@dataclass(frozen=True)
class Route:
    verb: str
    pattern: str
    discovery: bool = False
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def resource(self) -> str:
        if self.discovery or not self.plural:
            return ""
        base = qualified(self.group, self.plural)
        return f"{base}/{self.subresource}" if self.subresource else base


_DISCOVERY_ROOTS = frozenset({"version", "healthz", "livez", "readyz", "openapi"})


def parse_route(method: str, path: str, query: Mapping[str, str]) -> Route:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] in _DISCOVERY_ROOTS:
        return Route("discovery", path or "/", discovery=True)
    if parts[0] == "api" and len(parts) >= 2:
        group, version, rest, prefix = "", parts[1], parts[2:], f"/api/{parts[1]}"
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
        prefix = f"/apis/{group}/{version}"
    elif parts[0] in ("api", "apis"):
        return Route("discovery", path, discovery=True)
    else:
        return Route(method.lower(), path)
    if not rest:
        return Route("discovery", prefix, discovery=True)
    watch = flag(query, "watch")
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
        prefix += "/watch"
    namespace = None
    is_ns_subresource = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest and rest[0] == "namespaces" and len(rest) >= 3 and not is_ns_subresource:
        namespace, rest = rest[1], rest[2:]
        prefix += "/namespaces/{namespace}"
    if not rest:
        return Route(method.lower(), path)
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    pattern = f"{prefix}/{plural}" + ("/{name}" if name else "") + (f"/{sub}" if sub else "")
    verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create",
            "PUT": "update", "PATCH": "patch", "DELETE": "delete" if name else "deletecollection",
            }.get(method, method.lower())
    return Route(verb, pattern, False, group, version, plural, namespace, name, sub)


@dataclass
class Response:
    code: int
    body: Any
    content_type: str = "application/json"
    stream: Generator[Obj, None, None] | None = None
    headers: tuple[tuple[str, str], ...] = ()  # more of them (the service proxy's)


def decode_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "protobuf" in content_type or "cbor" in content_type:
        raise unsupported_media()
    try:
        return yaml.safe_load(raw) if "yaml" in content_type else json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise bad_request(f"the request body could not be decoded: {exc}") from exc


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() must not wait for watches and idle keep-alives
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Any,
                 handler: type[BaseHTTPRequestHandler]) -> None:
        self.emulator = emulator  # what the handlers serve: the emulator, or the kit's proxy
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        """Stop serving kept-alive connections too: a stopped emulator must look dead."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    """Connection handling; a subclass answers in ``_handle(method)``."""

    protocol_version = "HTTP/1.1"
    server_version = "kubeemu/1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms stalls
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("KUBEEMU_LOG"):
            super().log_message(format, *args)

    def _handle(self, method: str) -> None:
        raise NotImplementedError

    def _by_method(self) -> None:
        self._handle(self.command)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _by_method

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, body: Any, content_type: str = "application/json",
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else json.dumps(body).encode())
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_stream(self, events: Generator[Obj, None, None]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            self.close_connection = True


class Served:
    """The lifecycle the emulator and the kit's proxy (``kubeproxy``) share: an HTTP server
    on loopback answered by a thread with ``handler_class``, and a stop that leaves nothing
    serving (kept-alive connections and requests held open included: they wait on
    ``_stopping``). A subclass binds with ``_listen``, adjusts the socket if it must, then
    ``_serve``s."""

    handler_class: ClassVar[type[Handler]]
    thread_name: ClassVar[str] = "kubeemu-http"

    def _listen(self, host: str, port: int) -> None:
        self._stopping = threading.Event()
        self._server = Server((host, port), self, self.handler_class)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits up to one poll interval
            name=self.thread_name, daemon=True)

    def _serve(self) -> None:
        self._thread.start()

    def _closing(self) -> None:
        """What to end before the server stops (the emulator's store)."""

    def stop(self) -> None:
        """Stop serving; idempotent. Held requests and open watches end at once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._closing()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=2)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
