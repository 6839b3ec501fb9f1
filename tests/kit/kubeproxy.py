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

Faults and request counting live here only; the emulator keeps a ``RequestCounter`` of its
own of what reached it (who, with which headers), for the tests that talk to it directly.
Watches and other streamed answers are not supported: the portal never watches.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

from .kubeemu.serving import Handler, Served, parse_route

__all__ = ["FAULT_KINDS", "MUTATING_VERBS", "Faults", "Proxy", "RequestCounter",
           "RequestRecord", "start"]

FaultKind = Literal["500", "429", "timeout", "reset"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
MUTATING_VERBS: frozenset[str] = frozenset(
    {"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Faults:
    """Which requests the proxy fails, and how.

    Each request that passes the filters (``verbs``: Kubernetes verbs such as
    ``MUTATING_VERBS``; ``paths``: URL path prefixes) draws one number from a generator seeded
    with ``seed``; below ``rate`` it fails with a kind drawn from ``kinds``. The same seed and
    request sequence give the same faults. Kinds:

    - ``"500"``: an HTTP 500 with an ``InternalError`` Status body;
    - ``"429"``: an HTTP 429 ``TooManyRequests`` with ``Retry-After: 1`` (API Priority and
      Fairness shedding load);
    - ``"timeout"``: the connection is held ``delay`` seconds (set it above the client's read
      timeout), then answered 504 ``Timeout`` and closed;
    - ``"reset"``: the socket is closed with SO_LINGER 0, so the client sees a TCP reset.

    With ``after=True`` the request is carried out first and only its answer is lost, as when
    a write reaches etcd but the response never arrives. ``limit`` caps the number of faults.
    """

    rate: float = 0.0
    kinds: tuple[FaultKind, ...] = ("500",)
    seed: int | None = None
    delay: float = 2.0
    verbs: frozenset[str] | None = None
    paths: tuple[str, ...] | None = None
    after: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be within 0.0-1.0, not {self.rate}")
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be among {FAULT_KINDS}, got {kinds}")
        object.__setattr__(self, "kinds", kinds)
        if self.verbs is not None:
            object.__setattr__(self, "verbs", frozenset(self.verbs))
        if isinstance(self.paths, str):
            object.__setattr__(self, "paths", (self.paths,))
        if self.delay < 0:
            raise ValueError("fault delay must not be negative")


@dataclass(frozen=True)
class _Decision:
    kind: FaultKind
    after: bool
    delay: float


class _FaultInjector:
    """Draws the faults for one ``Faults`` setting; replaced whole when the setting changes."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self._injected = 0

    def decide(self, verb: str, path: str) -> _Decision | None:
        f = self.faults
        if f.rate <= 0.0:
            return None
        if f.verbs is not None and verb not in f.verbs:
            return None
        if f.paths is not None and not any(path.startswith(p) for p in f.paths):
            return None
        with self._lock:
            if f.limit is not None and self._injected >= f.limit:
                return None
            if self._rng.random() >= f.rate:
                return None
            self._injected += 1
            return _Decision(self._rng.choice(f.kinds), f.after, f.delay)


@dataclass
class RequestRecord:
    """One HTTP request as the proxy (or the emulator) saw it. ``status`` is None while a
    watch or a held ``timeout`` fault is pending, and stays None when the connection was
    reset."""

    method: str
    path: str
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    pattern: str
    status: int | None = None
    fault: FaultKind | None = None
    headers: dict[str, str] = field(default_factory=dict)  # as received, names lowercased
    # Who the request's bearer token names, when it is a ServiceAccount token the emulator
    # minted (TokenRequest); None for any other credential (the emulator authenticates none).
    user: str | None = None

    @property
    def failed(self) -> bool:
        return self.fault is not None or (self.status is not None and self.status >= 400)


class RequestCounter:
    """Counts every HTTP request received, faulted or not; thread-safe; ``reset()`` between
    phases of a test. Keys: ``verb`` is the Kubernetes verb (``get``, ``list``, ``watch``,
    ``create``, ``update``, ``patch``, ``delete``, ``deletecollection``, or ``discovery``),
    ``resource`` is ``plural[.group][/subresource]`` (empty for discovery)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def _begin(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self._records.append(record)
        return record

    def _finish(
        self, record: RequestRecord, status: int | None, fault: FaultKind | None = None
    ) -> None:
        with self._lock:
            record.status = status
            if fault is not None:
                record.fault = fault

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return [replace(r) for r in self._records]

    @property
    def total(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def failed(self) -> int:
        """Requests answered with an error status or hit by a fault."""
        return sum(r.failed for r in self.records())

    @property
    def faulted(self) -> int:
        return sum(r.fault is not None for r in self.records())

    @property
    def succeeded(self) -> int:
        return sum(not r.failed for r in self.records())

    def count(
        self,
        *,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        method: str | None = None,
        faulted: bool | None = None,
        failed: bool | None = None,
    ) -> int:
        return sum(
            (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (namespace is None or r.namespace == namespace)
            and (method is None or r.method == method.upper())
            and (faulted is None or (r.fault is not None) == faulted)
            and (failed is None or r.failed == failed)
            for r in self.records()
        )

    def by_verb(self) -> dict[str, int]:
        return dict(Counter(r.verb for r in self.records()))

    def by_resource(self) -> dict[str, int]:
        return dict(Counter(r.resource for r in self.records()))

    def by_verb_resource(self) -> dict[tuple[str, str], int]:
        return dict(Counter((r.verb, r.resource) for r in self.records()))

    def by_pattern(self) -> dict[tuple[str, str], int]:
        """Counts per (HTTP method, path pattern such as ``/api/v1/namespaces/{namespace}``)."""
        return dict(Counter((r.method, r.pattern) for r in self.records()))

    def by_fault(self) -> dict[str, int]:
        return dict(Counter(r.fault for r in self.records() if r.fault is not None))


HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-authorization", "proxy-connection", "content-length",
                         "host"})


def _status(code: int, reason: str, message: str, **details: Any) -> bytes:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return json.dumps(body).encode()


class _Handler(Handler):
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
        route = parse_route(method, url.path, query)
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


class Proxy(Served):
    handler_class = _Handler
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
        self.requests = RequestCounter()
        self._injector = _FaultInjector(Faults())
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

    @property
    def faults(self) -> Faults:
        return self._injector.faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        self._injector = _FaultInjector(value or Faults())

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
