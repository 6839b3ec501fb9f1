"""The emulator: an HTTP server on loopback in front of a ``Store``, its request record and
TokenRequest tokens, direct store access for tests, the write hooks that play missing
controllers, ``start`` and ``main`` (``python -m tests.kit.kubeemu``)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import json
import os
import re
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import yaml

# The record of requests is the proxy's (RequestCounter): the emulator keeps one of what
# reached it itself. kubeproxy imports .serving, never this module, so either may come first.
from .. import kubeproxy
from . import discovery
from .errors import ApiError, Obj, no_resource, not_allowed, not_found
from .exec import POD_STREAMS
from .exec import serve as serve_pod_stream
from .serving import Handler, Response, Route, Served, decode_body, parse_route
from .store import (
    DISCOVERY_FILE,
    UPSTREAM_KINDS,
    Catalog,
    ResourceInfo,
    Store,
    WriteEvent,
    WriteHook,
    _Schemas,
    flag,
)
from .watch import watch

# An absolute path in an HTML link, which the service proxy rewrites to go through it.
HTML_LINK = re.compile(rb"""(\s(?:href|src|action)=["'])/(?!/)""")

if TYPE_CHECKING:
    from kubernetes.client import Configuration


class _Handler(Handler):
    def _handle(self, method: str) -> None:
        emu: Emulator = self.server.emulator
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = parse_route(method, url.path, query)
        authorization = self.headers.get("Authorization") or ""
        record = emu.requests._begin(kubeproxy.RequestRecord(
            method, self.path, route.verb, route.resource, route.namespace, route.name,
            route.pattern, headers={k.lower(): v for k, v in self.headers.items()},
            user=emu.token_user(authorization)))
        if route.plural == "pods" and route.group == "" and route.subresource in POD_STREAMS:
            serve_pod_stream(self, route, parse_qs(url.query, keep_blank_values=True), record)
            return
        raw = self._read_body()
        if emu.token_refused(authorization):
            response = Response(401, ApiError(401, "Unauthorized", "Unauthorized").status())
        elif route.plural == "services" and not route.group and route.subresource == "proxy":
            response = emu._service_proxy(method, route, url, raw, self.headers)
        else:
            response = emu._dispatch(method, route, query,
                                     self.headers.get("Content-Type") or "", raw)
        emu.requests._finish(record, response.code)
        if response.stream is not None:
            self._send_stream(response.stream)
        else:
            self._send(response.code, response.body, response.content_type,
                       response.headers)


class Emulator(Served):
    """A running emulator: an HTTP server on ``url`` in front of a ``Store``.

    Create it with ``start()``. ``requests`` records every request that reached it (who sent
    it, with which headers; a ``kubeproxy.RequestCounter``). Direct store access (``get``,
    ``objects``, ``create``, ``patch_object``, ``delete_object``) bypasses HTTP and the
    record: use it to arrange state and to simulate drift made behind the portal's back.
    Faults are the kit's proxy's to inject (``tests/kit/kubeproxy.py``).
    """

    handler_class = _Handler

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 discovery: Path = DISCOVERY_FILE, validate: bool = True,
                 auto_ready: bool = True, ready_delay: float = 0.05,
                 namespace_delete_delay: float = 0.05) -> None:
        if validate and not _Schemas.available():
            raise RuntimeError("validate=True needs the kubernetes-validate package")
        self.catalog = Catalog.from_discovery(discovery)
        self.store = Store(self.catalog, validate=validate, auto_ready=auto_ready,
                           ready_delay=ready_delay, namespace_delete_delay=namespace_delete_delay)
        self.kubelet: Any = None  # tests/kit/kubelet.py, where a test lets pods run
        # The service proxy's way to a Service's pods: (namespace, name) -> a test's URL.
        self.service_backends: dict[tuple[str, str], str] = {}
        self.requests = kubeproxy.RequestCounter()
        # TokenRequest: token -> (user, expiry, namespace, account name, account uid)
        self._tokens: dict[str, tuple[str, float, str, str, str]] = {}
        self._tokens_lock = threading.Lock()
        self._listen(host, port)
        self._serve()

    # -- lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _closing(self) -> None:
        self.store.close()

    # -- knobs

    @property
    def auto_ready(self) -> bool:
        """Whether workloads become ready ``ready_delay`` seconds after each write. Turning it
        off leaves them reporting unavailable pods, to test waiting and timeouts."""
        return self.store.auto_ready

    @auto_ready.setter
    def auto_ready(self, value: bool) -> None:
        self.store.auto_ready = value

    def set_ready(self, kind: str, name: str, namespace: str | None = None, *,
                  ready: bool = True) -> Obj:
        """Force a Deployment/StatefulSet/ReplicaSet/DaemonSet ready or not ready now; the
        choice sticks for that object, whatever ``auto_ready`` says."""
        info = self.catalog.resolve(kind)
        return self.store.set_ready(info, self._namespace(info, namespace), name, ready)

    def add_resource(self, group: str, version: str, plural: str, kind: str,
                     namespaced: bool = True, *, subresources: Iterable[str] = ("status",),
                     short_names: Iterable[str] = (), singular: str | None = None
                     ) -> ResourceInfo:
        """Serve a custom resource without posting its CRD (which also works)."""
        return self.catalog.add(ResourceInfo(
            group=group, version=version, plural=plural, kind=kind, namespaced=namespaced,
            singular=singular or kind.lower(), short_names=tuple(short_names),
            subresources=frozenset(subresources), custom=True))

    def add_upstream_kinds(self) -> None:
        """Serve Flux's, Cluster API's and CAAPH's kinds (``UPSTREAM_KINDS``)."""
        for kind in UPSTREAM_KINDS:
            self.add_resource(*kind)

    def add_hook(self, hook: WriteHook) -> None:
        """Call ``hook(store, event)`` after every API create/update/patch, under the store
        lock, to play a controller the emulator lacks (e.g. set an Ingress status)."""
        self.store.hooks.append(hook)

    # -- direct store access

    def _namespace(self, info: ResourceInfo, namespace: str | None) -> str | None:
        return (namespace or "default") if info.namespaced else None

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object or None; ``kind`` as kubectl names it (``Deployment``,
        ``deployments.apps``, ``cm``...); namespaced kinds default to ``default``."""
        info = self.catalog.resolve(kind)
        return self.store.find(info, self._namespace(info, namespace), name)

    def objects(self, kind: str | None = None, namespace: str | None = None, *,
                label_selector: str | None = None) -> list[Obj]:
        """Stored objects, of one kind or all, in one namespace or all."""
        info = self.catalog.resolve(kind) if kind else None
        return self.store.items(info, namespace, label_selector)

    def create(self, manifest: Obj, *, namespace: str | None = None) -> Obj:
        """Create through the same validation as a POST (raises ApiError)."""
        info = self.catalog.by_kind(manifest["apiVersion"], manifest["kind"])
        ns = namespace or (manifest.get("metadata") or {}).get("namespace")
        return self.store.create(info, self._namespace(info, ns), manifest)

    def patch_object(self, kind: str, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        """Merge-patch a stored object, e.g. to simulate someone scaling or relabelling it."""
        info = self.catalog.resolve(kind)
        ns = self._namespace(info, namespace)
        obj, _ = self.store.patch(info, ns, name, "application/merge-patch+json", patch)
        return obj

    def delete_object(self, kind: str, name: str, namespace: str | None = None, *,
                      cascade: bool = True) -> Obj | None:
        """Remove an object at once, ignoring finalizers and Terminating (drift: someone
        deleted it by hand). A namespace takes its contents with it. Watches see DELETED."""
        info = self.catalog.resolve(kind)
        ns = self._namespace(info, namespace)
        with self.store.lock:
            key = self.store._key(info, ns, name)
            if key not in self.store._objects:
                return None
            if key[:2] == ("", "namespaces"):
                for content in [k for k in self.store._objects if k[2] == name]:
                    if content in self.store._objects:
                        self.store._remove(content, orphan=not cascade)
            return self.store._remove(key, orphan=not cascade)

    # -- clients

    def kubeconfig(self, path: str | os.PathLike[str], *, namespace: str = "default",
                   context: str = "kubeemu") -> Path:
        """Write a kubeconfig for this emulator (for kubectl or ``load_kube_config``)."""
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                       "namespace": namespace}}],
            "current-context": context, "preferences": {},
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return out

    def client_configuration(self, **attributes: Any) -> Configuration:
        """A ``kubernetes.client.Configuration`` aimed at this emulator (attributes set on it,
        e.g. ``retries=False``)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        for key, value in attributes.items():
            setattr(cfg, key, value)
        return cfg

    # -- tokens

    def _token_request(self, namespace: str | None, name: str, body: Any) -> Obj:
        """TokenRequest (authentication.k8s.io/v1) for a ServiceAccount, as a real server
        answers it: the account must exist, at least ten minutes, and the token is a JWT whose
        subject is the account (its signature means nothing here)."""
        account = self.store.find(self.catalog.lookup("", "v1", "serviceaccounts"), namespace,
                                  name)
        if account is None:
            raise not_found("", "serviceaccounts", name)
        spec = dict((body or {}).get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise ApiError(422, "Invalid", f'TokenRequest.authentication.k8s.io "{name}" is '
                           f"invalid: spec.expirationSeconds: Invalid value: {seconds}: may "
                           "not specify a duration less than 10 minutes")
        user = f"system:serviceaccount:{namespace}:{name}"
        expires = int(time.time()) + seconds
        audiences = spec.get("audiences") or ["https://kubernetes.default.svc"]

        def part(value: Obj) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        token = ".".join([part({"alg": "RS256", "kid": "kubeemu"}), part({
            "sub": user, "exp": expires, "iat": int(time.time()), "aud": audiences,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
            "jti": uuid.uuid4().hex}), part({"sig": uuid.uuid4().hex})])
        with self._tokens_lock:
            self._tokens[token] = (user, float(expires), namespace or "", name,
                                   account["metadata"].get("uid", ""))
        stamp = datetime.datetime.fromtimestamp(expires, datetime.UTC)
        return {
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": audiences, "expirationSeconds": seconds,
                     "boundObjectRef": None},
            "status": {"token": token,
                       "expirationTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }

    def _token(self, authorization: str) -> tuple[str, float, str, str, str] | None:
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        with self._tokens_lock:
            return self._tokens.get(token)

    def token_user(self, authorization: str) -> str | None:
        """The ServiceAccount a bearer token minted here names, while it has not expired."""
        found = self._token(authorization)
        return found[0] if found and found[1] > time.time() else None

    def token_refused(self, authorization: str) -> bool:
        """A token minted here that a real server would no longer take: expired, or its
        ServiceAccount deleted since (a token is bound to the account's uid)."""
        found = self._token(authorization)
        if found is None:
            return False  # not one of ours: the emulator authenticates nothing else
        _, expires, namespace, name, uid = found
        account = self.store.find(self.catalog.lookup("", "v1", "serviceaccounts"),
                                  namespace, name)
        return expires <= time.time() or account is None or (
            account["metadata"].get("uid", "") != uid)

    def _service_proxy(self, method: str, route: Route, url: SplitResult, raw: bytes,
                       headers: Any) -> Response:
        """`services/{name}[:port]/proxy/{path}`: the request passed on to the Service's pods
        (a test's server, ``service_backends``) with the client's headers but not the
        credential the API server took, and their answer passed back unfollowed; with no
        endpoints, the server's 503. As the real server's proxy does (apimachinery
        util/proxy: UpgradeAwareHandler with WrapTransport, its Transport), an absolute
        path in a Location header or in an HTML link is rewritten to go through the proxy
        again, and CORS headers are dropped."""
        name = unquote(route.name or "").partition(":")[0]
        try:
            self.store.get(self.catalog.lookup("", "v1", "services"), route.namespace, name)
        except ApiError as exc:
            return Response(exc.code, exc.status())
        target = self.service_backends.get((route.namespace or "", name))
        if target is None:
            return Response(503, ApiError(503, "ServiceUnavailable", "no endpoints available "
                                          f'for service "{name}"').status())
        prefix, _, path = url.path.partition(f"/{route.name}/proxy")
        prefix += f"/{route.name}/proxy"
        sent = {k: v for k, v in headers.items() if k.lower() not in (
            "authorization", "host", "content-length", "connection", "transfer-encoding")}
        backend = urlsplit(target)
        connection = http.client.HTTPConnection(backend.hostname, backend.port, timeout=30)
        try:
            connection.request(method, (path or "/") + (f"?{url.query}" if url.query else ""),
                               body=raw or None, headers=sent)
            answer = connection.getresponse()
            body, kind = answer.read(), answer.getheader("Content-Type") or ""
        finally:
            connection.close()
        passed = []
        for key, value in answer.getheaders():
            lower = key.lower()
            if lower == "location" and value.startswith("/") and not value.startswith("//"):
                passed.append((key, prefix + value))
            elif lower not in ("content-type", "content-length", "connection",
                               "transfer-encoding", "date", "server") and not (
                    lower.startswith("access-control-")):
                passed.append((key, value))
        if kind.startswith("text/html"):
            body = HTML_LINK.sub(rb"\1" + prefix.encode() + b"/", body)
        return Response(answer.status, body, kind, headers=tuple(passed))

    # -- HTTP dispatch

    def _dispatch(self, method: str, route: Route, query: Mapping[str, str], content_type: str,
                  raw: bytes) -> Response:
        try:
            if route.discovery:
                try:
                    body = discovery.document(self.catalog, route.pattern)
                except ApiError as exc:
                    if exc.code != 404:
                        raise
                    # an unserved group version is not a resource: no Status body
                    return Response(404, "404 page not found\n", "text/plain; charset=utf-8")
                return Response(200, body, "text/plain" if isinstance(body, str)
                                else "application/json")
            if not route.plural:
                raise no_resource()
            return self._resource(route, query, content_type, decode_body(raw, content_type))
        except ApiError as exc:
            return Response(exc.code, exc.status())
        except Exception as exc:  # a bug in the emulator: answer like the apiserver would
            traceback.print_exc()
            return Response(500, ApiError(500, "InternalError", f"kubeemu: {exc!r}").status())

    def _resource(self, route: Route, query: Mapping[str, str], content_type: str,
                  body: Any) -> Response:
        info = self.catalog.lookup(route.group, route.version, route.plural)
        store, ns, name, sub, verb = (self.store, route.namespace, route.name,
                                      route.subresource, route.verb)
        if info.namespaced and ns is None and verb in ("get", "create", "update", "patch",
                                                       "delete"):
            raise no_resource()
        if not info.namespaced and ns is not None:
            raise no_resource()
        dry_run = query.get("dryRun") == "All" or (
            isinstance(body, dict) and "All" in (body.get("dryRun") or []))
        strict = query.get("fieldValidation") == "Strict"
        manager = query.get("fieldManager")
        options = body if isinstance(body, dict) else {}  # DeleteOptions
        if "propagationPolicy" in query:
            options = {**options, "propagationPolicy": query["propagationPolicy"]}
        if sub is not None:
            if sub not in info.subresources or name is None:
                raise no_resource()
            if sub == "token" and info.plural == "serviceaccounts" and verb == "create":
                return Response(201, self._token_request(ns, name, body))
            if verb not in ("get", "update", "patch"):
                raise not_allowed()
            if sub == "scale":
                if verb == "get":
                    return Response(200, store.scale(info, ns, name))
                return Response(200, store.set_scale(
                    info, ns, name, content_type if verb == "patch" else None, body,
                    dry_run=dry_run))
        elif verb not in info.verbs:
            raise not_allowed()
        if verb == "watch":
            timeout = min(float(query.get("timeoutSeconds") or 1800), 1800)
            events = watch(store, info, ns, name, query, time.monotonic() + timeout)
            return Response(200, None, stream=events)
        if verb == "list":
            return Response(200, store.list(info, ns, query))
        if verb == "create" and route.group == "authorization.k8s.io":
            # No authorization here: every access review is allowed, and nothing is stored.
            return Response(201, {**body, "status": {
                "allowed": True, "reason": "kubeemu authorizes every request"}})
        if verb == "create":
            return Response(201, store.create(info, ns, body, strict=strict, dry_run=dry_run,
                                              manager=manager))
        if verb == "deletecollection":
            return Response(200, store.delete_collection(info, ns, query, options,
                                                         dry_run=dry_run))
        assert name is not None
        if verb == "get":
            return Response(200, store.get(info, ns, name))
        if verb == "update":
            return Response(200, store.update(info, ns, name, body, subresource=sub,
                                              strict=strict, dry_run=dry_run, manager=manager))
        if verb == "patch":
            obj, code = store.patch(info, ns, name, content_type, body, subresource=sub,
                                    strict=strict, dry_run=dry_run, field_manager=manager,
                                    force=flag(query, "force"))
            return Response(code, obj)
        if verb == "delete":
            return Response(200, store.delete(info, ns, name, options, dry_run=dry_run))
        raise not_allowed()


# ---------------------------------------------------------------------------- write hooks


def admit_ingresses(store: Store, event: WriteEvent) -> None:
    """A write hook that plays an ingress controller: every new Ingress is admitted at once
    (``status.loadBalancer.ingress``), as ingress-nginx reports it."""
    if event.info.plural == "ingresses" and event.type == "ADDED":
        store.patch(event.info, event.namespace, event.name, "application/merge-patch+json",
                    {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}},
                    subresource="status")


def serve_endpoints(store: Store, event: WriteEvent) -> None:
    """A write hook that plays the EndpointSlice controller for pods that are ready at once:
    every new Service gets a slice with one ready endpoint, labelled like the Service (the
    real controller copies the Service's labels onto its slices)."""
    if event.info.plural != "services" or event.type != "ADDED" or event.info.group:
        return
    spec = event.object.get("spec") or {}
    if not spec.get("selector"):
        return
    name = event.name
    labels = {**(event.object["metadata"].get("labels") or {}),
              "kubernetes.io/service-name": name,
              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    info = store.catalog.by_kind("discovery.k8s.io/v1", "EndpointSlice")
    if store.find(info, event.namespace, f"{name}-emu") is not None:
        return  # a Service deleted and created again: its slice is still there
    store.create(info, event.namespace, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-emu", "namespace": event.namespace, "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.10"], "conditions": {"ready": True}}],
        "ports": [{"name": p.get("name", ""), "port": p.get("targetPort", p.get("port")),
                   "protocol": "TCP"} for p in spec.get("ports") or []],
    })


# ---------------------------------------------------------------------------- start


def start(port: int = 0, *, host: str = "127.0.0.1", discovery: Path = DISCOVERY_FILE,
          validate: bool = True, auto_ready: bool = True, ready_delay: float = 0.05,
          namespace_delete_delay: float = 0.05) -> Emulator:
    """Start an emulator on a background thread (port 0 picks a free port); it is also a
    context manager that stops it."""
    return Emulator(host=host, port=port, discovery=discovery, validate=validate,
                    auto_ready=auto_ready, ready_delay=ready_delay,
                    namespace_delete_delay=namespace_delete_delay)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.kit.kubeemu``: serve until SIGINT/SIGTERM, for kubectl or a browser."""
    parser = argparse.ArgumentParser(prog="python -m tests.kit.kubeemu",
                                     description="An in-memory Kubernetes API server for tests.")
    parser.add_argument("--port", type=int, default=18002, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the emulator here")
    parser.add_argument("--no-auto-ready", action="store_true", help="workloads never get ready")
    parser.add_argument("--ready-delay", type=float, default=0.05)
    parser.add_argument("--no-validate", action="store_true", help="skip schema validation")
    parser.add_argument("--cluster-api", action="store_true",
                        help="serve cluster.x-k8s.io Clusters")
    parser.add_argument("--resource", action="append", default=[],
                        metavar="GROUP/VERSION/PLURAL/KIND[/cluster]",
                        help="serve a custom resource (repeatable)")
    args = parser.parse_args(argv)
    emu = start(args.port, host=args.host, validate=not args.no_validate,
                auto_ready=not args.no_auto_ready, ready_delay=args.ready_delay)
    if args.cluster_api:
        emu.add_upstream_kinds()
    for spec in args.resource:
        parts = spec.split("/")
        if len(parts) not in (4, 5):
            parser.error(f"--resource {spec!r}: expected GROUP/VERSION/PLURAL/KIND[/cluster]")
        emu.add_resource(*parts[:4], namespaced=len(parts) == 4)
    if args.kubeconfig:
        emu.kubeconfig(args.kubeconfig)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"kubeemu listening on {emu.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    emu.stop()
    return 0
