"""Catalogue services in the browser, each on an origin of its own:
`s<id>-<suffix>.<APPS_DOMAIN>` (by default `…localhost`, which browsers resolve to this
machine), served by this process beside the pages (gpupaas/asgi.py routes on the host).

Why not a path under the portal's origin: a service shows what its users put in it
(TensorBoard text summaries, MLflow artifacts) and runs code they can change, so on the
portal's origin it could read the portal's pages as whoever opens it. On its own origin it
sees no portal cookie, and no other service's.

How one signs in there: the portal's Open link (`notebooks` views, behind the session and
the access check) leaves a one-time ticket in the cache and sends the browser to
`<origin>/_gpupaas/auth?ticket=…`; that answer sets a cookie naming an app session of this
service, this user and their portal session. Every request is then decided afresh, at most
APPS_DECISION_CACHE_S old: the portal session still there, the service running, the user
still the instance's owner or collaborator. Logging out of the portal, or losing access,
ends it. A local service is reached through its relay's Unix socket
(clusters/backends/local/services.py): nothing else on the machine reaches it. One on
Kubernetes is reached through the API server's service proxy, with the instance's own
credential (`services.instance_upstream`): the request's path goes after the proxy's
(`/api/v1/namespaces/<ns>/services/<name>:<port>/proxy`), unless it already starts with it,
since the API server rewrites the links of the HTML it passes back to point there
(apimachinery's util/proxy Transport)."""

import asyncio
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.core.cache import cache
from django.http import HttpRequest
from django.utils import timezone
from django.utils.module_loading import import_string
from websockets.asyncio.client import connect as websocket_connect
from websockets.asyncio.client import unix_connect

from clusters.backends import BackendError, get_backend
from clusters.backends.kubernetes.upstream import Upstream
from clusters.models import Cluster
from gpupaas import logs
from instances.selectors import instance_for_user
from notebooks.models import Notebook, Service, ServiceKey
from notebooks.services import service_spec
from workspaces.tokens import check_token, touch_due

from .proxy import (
    HOP_BY_HOP,
    TooLarge,
    read_body,
    relay_websocket,
    scope_client_ip,
)
from .services import instance_upstream

log = logging.getLogger("gpupaas.apps")
LABEL = re.compile(r"([sn]\d{1,18})-([a-z0-9]{10})")
COOKIE = "gpupaas_app"
AUTH_PATH = "/_gpupaas/auth"
TICKET_TTL_S = 60
MAX_BODY = 256 * 1024 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def safe_next(path: str) -> str:
    """A path on this same origin, else "/" (never `//host` or `/\\host`, which browsers
    follow to another site)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _cookie_for_this_host(header: bytes) -> bool:
    """A Set-Cookie from the service that stays on its own host: one naming a Domain would
    reach the portal and other services under the same parent domain (cookie tossing)."""
    name, *attributes = header.decode("latin-1").split(";")
    if name.partition("=")[0].strip() == COOKIE:
        return False  # nor may it replace its user's app session with another
    return not any(a.strip().lower().startswith("domain") for a in attributes)


def from_elsewhere(headers: dict[str, str]) -> bool:
    """A browser request that another origin started (its Origin header names another
    host). Services of one `APPS_DOMAIN` are the same site, so SameSite cookies do not stop
    one service's page from posting to, or opening a WebSocket to, another with its user's
    cookie: the proxy refuses those itself (programs with a key send no cookie to use). The
    scheme is left out: behind a TLS proxy this server sees plain HTTP."""
    origin = headers.get("origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


def _secure(scope: dict[str, Any], headers: dict[str, str]) -> bool:
    """Whether the browser came over HTTPS (here, or to the TLS proxy in front)."""
    return scope.get("scheme") in ("https", "wss") or (
        settings.SECURE_PROXY_SSL_HEADER is not None
        and headers.get("x-forwarded-proto", "").lower() == "https")


def _escapes(path: str) -> bool:
    """A path with dot segments (raw or percent-encoded) or backslashes: on Kubernetes the
    request's path goes after the service proxy's, and `..` would climb out of it into the
    instance's API, with the instance's credential. Browsers never send such paths."""
    forms = {path, unquote(path), unquote(unquote(path))}
    return not path.startswith("/") or any(
        "\\" in form or any(part in (".", "..") for part in form.split("/")) for form in forms)


def host_label(host: str) -> tuple[str, str] | None:
    """(`s<id>` or `n<id>`, suffix) when `host` (without its port) is the origin of a
    service or of a local notebook."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    domain = "." + settings.APPS_DOMAIN.strip(".").lower()
    if not name.lower().endswith(domain):
        return None
    found = LABEL.fullmatch(name[: -len(domain)].lower())
    return (found[1], found[2]) if found else None


def origin_for(target: Service | Notebook, request: HttpRequest) -> str:
    """The origin of a service (or a local notebook), on the scheme and port the user
    reached the portal with."""
    port = request.get_port()
    default = "443" if request.is_secure() else "80"
    suffix = "" if port == default else f":{port}"
    return f"{request.scheme}://{target.host_label}.{settings.APPS_DOMAIN.strip('.')}{suffix}"


def open_url(*, target: Service | Notebook, request: HttpRequest, next_path: str = "/") -> str:
    """Where the portal's Open link sends the browser: the origin, with a ticket that signs
    in there once, within TICKET_TTL_S, as this user and portal session."""
    ticket = secrets.token_urlsafe(32)
    cache.set(f"apps:ticket:{ticket}", {"target": target.host_label.split("-", 1)[0],
                                        "user": request.user.pk,
                                        "session": request.session.session_key},
              TICKET_TTL_S)
    next_path = safe_next(next_path)
    return (f"{origin_for(target, request)}{AUTH_PATH}?ticket={ticket}"
            f"&next={quote(next_path, safe='/')}")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    user_id: int | None = None
    socket: str = ""  # a local service's relay
    # A service on Kubernetes: the API server (its connection pool's key) and the service
    # proxy's path there.
    upstream: Upstream | None = None
    upstream_key: str = ""
    prefix: str = ""
    # A local notebook: Jupyter compares Origin with its own Host, which the portal's origin
    # is not; the proxy has made that check itself.
    drop_origin: bool = False
    why: int = 404  # the status of a refusal


def _session_store(key: str) -> SessionBase:
    return import_string(f"{settings.SESSION_ENGINE}.SessionStore")(session_key=key)


def _session_user(label: str, app_session: dict[str, Any] | None) -> int | None:
    """The user of an app session for this origin whose portal session still lives."""
    if not app_session or app_session.get("target") != label:
        return None
    portal = _session_store(app_session["session"] or "")
    if str(portal.get(SESSION_KEY, "")) != str(app_session["user"]):
        return None  # signed out of the portal (or another user now)
    return app_session["user"]


def _may_use(user_id: int, instance_id: int) -> AbstractBaseUser | None:
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None or instance_for_user(user=user, pk=instance_id) is None:
        return None
    return user


def decide(label: str, suffix: str, app_session: dict[str, Any] | None = None,
           key: str = "") -> Decision:
    """Whether this app session, or this key, may reach this origin's service (`s<id>`) or
    local notebook (`n<id>`) now: the portal session lives (a key: it is live and of this
    service; a notebook's own token), it runs, and the user may use its instance (the
    pages' one access check)."""
    if label.startswith("n"):
        return _decide_notebook(label, suffix, app_session, key)
    service_id = int(label[1:])
    if key:
        row, refusal = check_token(ServiceKey, key)
        if row is None or refusal or row.service_id != service_id:
            return Decision(False, why=401)
        user_id = row.user_id
        if touch_due(row, 5):  # at most one write every few seconds per key
            ServiceKey.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
    else:
        user_id = _session_user(label, app_session)
        if user_id is None:
            return Decision(False, why=401)
    service = (Service.objects.filter(pk=service_id, host_suffix=suffix)
               .select_related("instance__cluster", "instance__workspace__owner",
                               "instance__profile", "profile").first())
    if service is None:
        return Decision(False)
    user = _may_use(user_id, service.instance_id)
    if user is None:
        return Decision(False)
    if service.status != Service.Status.RUNNING:
        return Decision(False, user.pk, why=503)
    backend = get_backend(service.instance.cluster)
    if service.instance.cluster.backend == Cluster.Backend.LOCAL:
        socket = backend.service_socket(instance_key=service.instance.key, key=service.key)
        return Decision(True, user.pk, socket=str(socket))
    try:
        key, upstream = instance_upstream(service.instance)
        prefix = backend.service_proxy_path(service_spec(service))
    except (BackendError, ValueError) as exc:  # ValueError: a credential that will not decrypt
        log.warning("service %s cannot be reached: %s", service.key,
                    getattr(exc, "detail", repr(exc)))
        return Decision(False, user.pk, why=503)
    return Decision(True, user.pk, upstream=upstream, upstream_key=key, prefix=prefix)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _decide_notebook(label: str, suffix: str, app_session: dict[str, Any] | None,
                     token: str) -> Decision:
    """A local notebook: a browser signed in from the portal's Open (its user's access is
    decided as for services), or a program with the notebook's own token (which is renewed
    when someone loses access to the instance). Jupyter gets the token from the portal, so
    a browser never needs it."""
    notebook = (Notebook.objects.filter(pk=int(label[1:]), host_suffix=suffix)
                .select_related("instance__cluster").first())
    if notebook is None or notebook.instance.cluster.backend != Cluster.Backend.LOCAL:
        return Decision(False)
    user_id = None
    if token:
        if not hmac.compare_digest(token.encode(), notebook.token.encode()):
            return Decision(False, why=401)
    elif app_session and app_session.get("target") == label and "token_sha" in app_session:
        # A browser that came with the notebook's URL and token: good while that token is.
        if not hmac.compare_digest(app_session["token_sha"], _sha(notebook.token)):
            return Decision(False, why=401)
    else:
        user_id = _session_user(label, app_session)
        if user_id is None:
            return Decision(False, why=401)
        if _may_use(user_id, notebook.instance_id) is None:
            return Decision(False)
    if notebook.status != Notebook.Status.RUNNING or not notebook.url:
        return Decision(False, user_id, why=503)
    base = notebook.url.removesuffix("/lab")  # where its server listens now
    return Decision(True, user_id, upstream=Upstream(
        base_url=base, ssl_context=False, headers={"Authorization": f"token {notebook.token}"}),
        upstream_key=label, drop_origin=True)


class AppsProxy:
    def __init__(self) -> None:
        self.clients: dict[str, httpx.AsyncClient] = {}
        # (app session, service) → (decided at, decision): a revocation shows within
        # APPS_DECISION_CACHE_S.
        self.decisions: dict[tuple[str, str, str], tuple[float, Decision]] = {}

    def client_for(self, decision: Decision) -> httpx.AsyncClient:
        """One connection pool per service socket, cluster credential or notebook. A local
        notebook's pool is replaced when its server moved to another port (the old one is
        gone with it), so restarts do not pile up pools."""
        key = decision.socket or decision.upstream_key
        client = self.clients.get(key)
        if client is not None and decision.upstream is not None and str(
                client.base_url).rstrip("/") not in ("", decision.upstream.base_url):
            asyncio.ensure_future(client.aclose())
            client = None
        if client is None:
            timeout = httpx.Timeout(connect=10, read=None, write=60, pool=10)
            if decision.upstream is not None and decision.drop_origin:  # a local notebook
                client = httpx.AsyncClient(base_url=decision.upstream.base_url, timeout=timeout)
            elif decision.upstream is not None:
                client = httpx.AsyncClient(verify=decision.upstream.ssl_context or False,
                                           timeout=timeout)
            else:
                client = httpx.AsyncClient(
                    transport=httpx.AsyncHTTPTransport(uds=decision.socket), timeout=timeout)
            self.clients[key] = client
        return client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        label, suffix = host_label(headers.get("host", "")) or ("s0", "")
        with logs.bound(request_id=logs.new_request_id(None), user_id=None, instance_id=None):
            if scope["path"] == AUTH_PATH and scope["type"] == "http":
                await self.sign_in(scope, send, label, headers)
                return
            cookie = _cookie(headers.get("cookie", ""), COOKIE)
            key = _credential(scope, headers, notebook=label.startswith("n"))
            if scope["type"] == "websocket":
                await self.websocket(scope, receive, send, label, suffix, headers, key)
                return
            decision = await self.decision(cookie, label, suffix, key=key)
            if decision.allowed and not key and scope["method"] not in SAFE_METHODS and (
                    from_elsewhere(headers)):
                decision = Decision(False, decision.user_id, why=403)
            if decision.allowed and _escapes(_raw_path(scope)):
                decision = Decision(False, decision.user_id, why=400)
            if not decision.allowed:
                status = decision.why
                await self.refuse(send, status, program=bool(key) or not cookie and (
                    "json" in headers.get("accept", "") or "authorization" in headers))
            else:
                set_cookie = None
                if (key and not cookie and label.startswith("n")
                        and "authorization" not in headers and scope["method"] == "GET"
                        and "text/html" in headers.get("accept", "")):
                    # The notebook's URL with its token, opened in a browser: signed in here
                    # for the requests its page makes next, as Jupyter itself would be.
                    set_cookie = await self.new_session(
                        {"target": label, "token_sha": _sha(key)}, scope, headers)
                status = await self.forward(scope, receive, send, decision, headers,
                                            set_cookie=set_cookie)
            if random.random() < settings.APPS_REQUEST_LOG_RATE:
                log.info("%s %s%s for user %s: %s", scope["method"], label,
                         scope["path"], decision.user_id, status,
                         extra={"origin": label, "allowed": decision.allowed,
                                "status": status, "by_key": bool(key),
                                "client_ip": scope_client_ip(scope)})

    async def decision(self, cookie: str, label: str, suffix: str, *, key: str = ""
                       ) -> Decision:
        """A key, when the request carries one, else the app session's cookie, decided at
        most APPS_DECISION_CACHE_S ago."""
        cached_as = (f"key:{key}" if key else cookie, label, suffix)
        now = time.monotonic()
        cached = self.decisions.get(cached_as)
        if cached and now - cached[0] < settings.APPS_DECISION_CACHE_S:
            return cached[1]
        if key:
            decision = await sync_to_async(decide)(label, suffix, key=key)
        else:
            app_session = (await sync_to_async(cache.get)(f"apps:session:{cookie}")
                           if cookie else None)
            decision = await sync_to_async(decide)(label, suffix, app_session)
        if len(self.decisions) > 10_000:
            self.decisions.clear()
        self.decisions[cached_as] = (now, decision)
        return decision

    async def websocket(self, scope: dict[str, Any], receive: Any, send: Any, label: str,
                        suffix: str, headers: dict[str, str], key: str = "") -> None:
        """A WebSocket (code-server, a live dashboard): decided like any request, then made
        again to the service and relayed both ways; decided again every
        APPS_DECISION_CACHE_S while it is open, so losing access closes it."""
        if (await receive())["type"] != "websocket.connect":
            return
        cookie = _cookie(headers.get("cookie", ""), COOKIE)
        decision = await self.decision(cookie, label, suffix, key=key)
        if not decision.allowed or (not key and from_elsewhere(headers)) or _escapes(
                _raw_path(scope)):
            await send({"type": "websocket.close", "code": 1008})
            return
        forward, url = self.target(scope, headers, decision)
        url = "ws" + url[4:]  # http→ws, https→wss
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")
                   if p.strip()]
        # (the client library sends the Host of the URL itself)
        forward = [(k, v) for k, v in forward
                   if not k.startswith(b"sec-websocket-") and k != b"host"]
        options: dict[str, Any] = {
            "additional_headers": [(k.decode("latin-1"), v.decode("latin-1"))
                                   for k, v in forward],
            "subprotocols": offered or None, "user_agent_header": None,
            "compression": None, "max_size": None, "open_timeout": 15, "close_timeout": 5}
        try:
            if decision.upstream is not None:
                upstream = await websocket_connect(
                    url, ssl=(decision.upstream.ssl_context or None)
                    if url.startswith("wss:") else None, **options)
            else:
                upstream = await unix_connect(decision.socket, url, **options)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            log.info("%s: WebSocket to %s refused: %r", label, scope["path"], exc)
            await send({"type": "websocket.close", "code": 1011})
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def still_allowed() -> None:
            while (await self.decision(cookie, label, suffix, key=key)).allowed:
                await asyncio.sleep(settings.APPS_DECISION_CACHE_S)

        await relay_websocket(receive, send, upstream, still_allowed())

    def target(self, scope: dict[str, Any], headers: dict[str, str], decision: Decision
               ) -> tuple[list[tuple[bytes, bytes]], str]:
        """The headers the service gets and the URL it is reached at: never the portal's
        cookie nor a credential meant for the portal; on Kubernetes, the request's path
        after the service proxy's (unless the API server's own rewriting put it there)."""
        dropped = HOP_BY_HOP | {"cookie", "authorization"} | (
            {"origin", "referer"} if decision.drop_origin else set())
        # Nor what would have the API server act as someone else (as the Kubernetes proxy).
        forward = [(k, v) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in dropped
                   and not k.lower().startswith((b"impersonate-", b"x-remote-"))]
        others = _without_cookie(headers.get("cookie", ""), COOKIE)
        if others:
            forward.append((b"cookie", others.encode("latin-1")))
        forward += [(b"x-forwarded-host", headers.get("host", "").encode("latin-1")),
                    (b"x-forwarded-proto", b"https" if _secure(scope, headers) else b"http")]
        raw_path = _raw_path(scope)
        query = scope.get("query_string", b"").decode("latin-1")
        query = f"?{query}" if query else ""
        if decision.upstream is not None:
            prefix = decision.prefix
            path = raw_path if raw_path.startswith(prefix + "/") else prefix + raw_path
            forward += [(k.lower().encode(), v.encode("latin-1"))
                        for k, v in decision.upstream.headers.items()]
            return forward, decision.upstream.base_url + path + query
        # Apps check their Host against loopback names (MLflow refuses others).
        forward.append((b"host", b"localhost"))
        return forward, "http://localhost" + raw_path + query

    async def sign_in(self, scope: dict[str, Any], send: Any, label: str,
                      headers: dict[str, str]) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        next_path = safe_next((query.get("next") or ["/"])[0])
        key = f"apps:ticket:{ticket}"
        data = await sync_to_async(cache.get)(key) if ticket else None
        # One use: of two requests with one ticket, only the one that deletes it signs in.
        if (not data or data.get("target") != label
                or not await sync_to_async(cache.delete)(key)):
            await self.refuse(send, 401)
            return
        cookie = await self.new_session(data, scope, headers)
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", next_path.encode("latin-1")), (b"set-cookie", cookie),
            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def new_session(self, data: dict[str, Any], scope: dict[str, Any],
                          headers: dict[str, str]) -> bytes:
        """An app session of this origin: its Set-Cookie header."""
        app_session = secrets.token_urlsafe(32)
        await sync_to_async(cache.set)(f"apps:session:{app_session}", data,
                                       settings.SESSION_COOKIE_AGE)
        secure = "; Secure" if _secure(scope, headers) else ""
        return (f"{COOKIE}={app_session}; Path=/; HttpOnly; SameSite=Lax; "
                f"Max-Age={settings.SESSION_COOKIE_AGE}{secure}").encode()

    async def refuse(self, send: Any, status: int, *, program: bool = False) -> None:
        """The refusal in words: a page for a browser, or for a program (a key, or JSON
        asked for) an error in the shape OpenAI-compatible clients show."""
        words = {
            401: ("The key is not valid for this service; make one on its page in the portal."
                  if program else "Open this service from the portal: its page has an Open "
                  "button that signs you in here."),
            400: "Refused: a path with dot segments.",
            403: "Refused: a page of another origin sent this request.",
            404: "No such service.",
            413: "The request's body is too large.",
            503: "This service is not running now; see its page in the portal.",
        }[status]
        if program:
            kind = "application/json"
            body = json.dumps({"error": {"message": words, "type": {
                400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error",
                413: "invalid_request_error"}.get(
                    status, "service_unavailable"), "code": status}}).encode()
        else:
            kind = "text/html; charset=utf-8"
            body = (f"<!doctype html><title>{words}</title><p>{words}</p>").encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", kind.encode()), (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def forward(self, scope: dict[str, Any], receive: Any, send: Any,
                      decision: Decision, headers: dict[str, str], *,
                      set_cookie: bytes | None = None) -> int:
        """Pass the request on; returns the status its user got (0: they left first)."""
        try:
            body = await read_body(receive, MAX_BODY)
        except TooLarge:
            await self.refuse(send, 413)
            return 413
        if body is None:
            return 0
        forward, url = self.target(scope, headers, decision)
        client = self.client_for(decision)
        try:
            request = client.build_request(scope["method"], url, headers=forward,
                                           content=bytes(body))
            response = await client.send(request, stream=True)
        except httpx.HTTPError:
            await self.refuse(send, 503)
            return 503
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.decode("latin-1").lower() not in HOP_BY_HOP
                                    - {"content-length"}
                                    and (k.lower() != b"set-cookie"
                                         or _cookie_for_this_host(v))]
                        + ([(b"set-cookie", set_cookie)] if set_cookie else [])})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()
        return response.status_code


def _raw_path(scope: dict[str, Any]) -> str:
    return (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")


def _credential(scope: dict[str, Any], headers: dict[str, str], *, notebook: bool) -> str:
    """What a program brings instead of a browser's app session: an API key to a service
    (`Authorization: Bearer gps_…`), or a local notebook's own token, as Jupyter's clients
    send it (`Authorization: token …`, or `?token=`)."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    value = value.strip()
    if notebook and scheme.lower() in ("token", "bearer"):
        return value
    if scheme.lower() == "bearer" and value.startswith(ServiceKey.PREFIX):
        # Only the portal's keys: a browser app's own Authorization header (dropped before
        # it is forwarded) leaves its user's session to decide.
        return value
    if notebook:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return (query.get("token") or [""])[0]
    return ""


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def _without_cookie(header: str, name: str) -> str:
    """The Cookie header without the portal's own: the service never sees it."""
    return "; ".join(p.strip() for p in header.split(";")
                     if p.strip() and p.strip().partition("=")[0] != name)
