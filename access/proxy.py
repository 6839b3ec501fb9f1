"""The authenticating Kubernetes API proxy: `/k8s/<instance id>/...`, an ASGI application.

Every request is decided afresh (`services.authorize_proxy_request`): a live token bound to
this instance, and a user still allowed on it. Then it goes to the instance's API with the
instance's own credential (a namespace instance's access ServiceAccount token, a virtual or
dedicated cluster's admin kubeconfig; never the portal's, never impersonating), and the answer
streams back chunk by chunk, so watches and `logs -f` arrive as they happen. Long requests
are re-decided every ACCESS_RECHECK_S: a watch ends within about a second of a revocation.

exec, attach and port-forward arrive as WebSocket upgrades (kubectl 1.31 and newer speak
`v5.channel.k8s.io`; port-forward tunnels `SPDY/3.1+portforward.k8s.io` inside WebSocket
frames): decided the same way, connected to the instance's API with the same credential,
offering the client's subprotocols, and relayed frame by frame. A raw SPDY
upgrade cannot pass through ASGI: it is answered with the API server's own refusal when it
has one (a forbidden namespace, a pod that is not scheduled), else with a clear 400.
"""

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

import httpx
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from websockets.asyncio.client import connect as websocket_connect

from clusters.backends import BackendError
from clusters.backends.kubernetes.client import request_verb
from gpupaas import logs
from gpupaas.metrics import PROXY_LATENCY, PROXY_REQUESTS
from workspaces.services import client_address

from . import services
from .services import Grant, Refusal

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, never forwarded. The client's
# own credentials and impersonation requests never reach the cluster: the portal sets the
# credential, and impersonates no one.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
MAX_BODY = 64 * 1024 * 1024  # kube-apiserver itself refuses requests over 3 MiB
STREAMING = ("exec", "attach", "portforward")  # pod subresources that upgrade
NO_SPDY = ("The portal passes exec, attach and port-forward over WebSockets only (kubectl "
           "1.31 or newer, or a client speaking v5.channel.k8s.io); SPDY upgrades cannot "
           "pass through it.")


def _status(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes `Status` body, which kubectl turns into a readable error."""
    return json.dumps({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }).encode()


class TooLarge(Exception):
    pass


async def read_body(receive: Any, limit: int) -> bytes | None:
    """An ASGI request's whole body; None when the client went away first. TooLarge past
    `limit` bytes."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise TooLarge
        if not message.get("more_body"):
            return bytes(body)


def kube_verb(method: str, path: str, query: str) -> str:
    """The Kubernetes verb of a request, as audit logs name it."""
    return request_verb(method, path, dict(parse_qsl(query)))


def scope_client_ip(scope: dict[str, Any]) -> str | None:
    """The client's address of an ASGI request, as pages and the API read it
    (workspaces.services.client_address: TRUSTED_PROXY_COUNT hops, validated). Several
    X-Forwarded-For lines count as one list, in order, as Django joins them."""
    client = scope.get("client")
    forwarded = ",".join(v.decode("latin-1") for k, v in scope.get("headers", [])
                         if k.lower() == b"x-forwarded-for")
    return client_address(client[0] if client else None, forwarded)


class KubeProxy:
    def __init__(self) -> None:
        # One connection pool per upstream credential, for this process's event loop.
        self.clients: dict[str, httpx.AsyncClient] = {}

    def client_for(self, grant: Grant) -> httpx.AsyncClient:
        client = self.clients.get(grant.upstream_key)
        if client is None:
            client = httpx.AsyncClient(
                verify=grant.upstream.ssl_context or False,
                # Watches and `logs -f` are open for as long as the client wants: no read limit.
                timeout=httpx.Timeout(connect=10, read=None, write=60, pool=10),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
            self.clients[grant.upstream_key] = client
        return client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # As every page has: a request id (the client's X-Request-ID when plain, else a new
        # one) on the log lines about this request and on its answer, and its instance's id.
        offered = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                        if k.lower() == b"x-request-id"), None)
        rid = logs.new_request_id(offered)
        instance_part = scope["path"].split("/", 3)[2:3]
        instance = int(instance_part[0]) if instance_part and instance_part[0].isdigit() \
            else None
        with logs.bound(request_id=rid, user_id=None, instance_id=instance):
            await self.serve(scope, receive, send, rid)

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any, rid: str) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        started, answered = time.monotonic(), {"status": 0}

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
                message = {**message, "headers": [
                    *message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.http(scope, receive, counted)
        finally:
            _, _, _, *rest = scope["path"].split("/", 3)  # '', 'k8s', '<id>', rest
            verb = kube_verb(scope["method"], "/" + (rest[0] if rest else ""),
                             scope.get("query_string", b"").decode("latin-1"))
            PROXY_REQUESTS.labels(verb, str(answered["status"] or 499)).inc()
            PROXY_LATENCY.labels(verb).observe(time.monotonic() - started)

    async def decide(self, scope: dict[str, Any]) -> tuple[
            dict[str, str], str, str, str | None, str, Grant | Refusal]:
        """Parse and decide one request: (headers, path, query, client ip, user agent,
        decision)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        # The path as the client encoded it, so names pass to the API server unchanged.
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        _, _, instance_part, *rest = raw_path.split("/", 3)  # '', 'k8s', '<id>', rest
        path = "/" + (rest[0] if rest else "")
        user_agent = headers.get("user-agent", "")
        client_ip = scope_client_ip(scope)
        if not instance_part.isdigit():
            return headers, path, query, client_ip, user_agent, Refusal(
                404, "NotFound", "No such instance.")
        client = f"{client_ip or '?'} {user_agent}".strip()
        decision = await sync_to_async(services.authorize_proxy_request)(
            token=_bearer(headers), instance_id=int(instance_part), client=client
        )
        if isinstance(decision, Grant):
            logs.user_id.set(decision.user_id)
        return headers, path, query, client_ip, user_agent, decision

    def forward_headers(self, headers: dict[str, str], grant: Grant) -> dict[str, str]:
        forward = {k: v for k, v in headers.items()
                   if k not in HOP_BY_HOP and k != "authorization"
                   and not k.startswith("impersonate-")}
        forward.update(grant.upstream.headers)
        return forward

    async def websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """exec, attach and port-forward: the upgrade is decided like any request, then made
        again to the instance's API and the frames relayed both ways, unchanged."""
        started = time.monotonic()
        if (await receive())["type"] != "websocket.connect":
            return
        headers, path, query, client_ip, user_agent, decision = await self.decide(scope)
        if isinstance(decision, Refusal):
            await self.refuse_upgrade(scope, send, decision.status,
                                      _status(decision.status, decision.reason,
                                              decision.message))
            return
        token = _bearer(headers)
        audit = {"grant": decision, "method": "GET", "verb": _stream_verb(path),
                 "path": path + (f"?{query}" if query else ""), "client_ip": client_ip,
                 "user_agent": user_agent}
        url = decision.upstream.base_url + path + (f"?{query}" if query else "")
        url = "ws" + url[4:] if url.startswith("http") else url  # http→ws, https→wss
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")
                   if p.strip()]
        forward = {k: v for k, v in self.forward_headers(headers, decision).items()
                   if not k.startswith("sec-websocket-")}
        try:
            upstream = await websocket_connect(
                url, additional_headers=forward, subprotocols=offered or None,
                ssl=(decision.upstream.ssl_context or None) if url.startswith("wss:") else None,
                user_agent_header=None, compression=None, max_size=None, ping_interval=None,
                open_timeout=15, close_timeout=5,
            )
        except websockets.InvalidStatus as exc:
            # The API server's own answer (forbidden, not found, not scheduled...): kubectl
            # reads the Status in its body.
            response = exc.response
            if response.status_code == 401 and decision.access_token:
                # A stale access token: the next upgrade gets a new one.
                with contextlib.suppress(BackendError):
                    await sync_to_async(services.renew_access_token)(decision.instance_id)
            await self.refuse_upgrade(scope, send, response.status_code, response.body or b"",
                                      response.headers.get("Content-Type", "application/json"))
            await self.audit(audit, response.status_code, started)
            return
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            log.warning("proxy: upgrade to %s failed: %r", url, exc)
            await self.refuse_upgrade(scope, send, 502, _status(
                502, "ServiceUnavailable", f"The portal cannot reach the instance's API: {exc}"))
            await self.audit(audit, 502, started)
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        await relay_websocket(receive, send, upstream, self.wait_revoked(token, decision))
        await self.audit(audit, 101, started)

    async def refuse_upgrade(self, scope: dict[str, Any], send: Any, status: int, body: bytes,
                             content_type: str = "application/json") -> None:
        """Answer an upgrade with an HTTP response (where the server can), so the client
        reads the reason; else close the handshake (the server answers 403)."""
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({
            "type": "websocket.http.response.start", "status": status,
            "headers": [(b"content-type", content_type.encode("latin-1")),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "websocket.http.response.body", "body": body})

    async def audit(self, audit: dict[str, Any], status: int, started: float) -> None:
        await sync_to_async(services.record_proxy_request)(
            **audit, status=status, duration_ms=int((time.monotonic() - started) * 1000))

    async def http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.monotonic()
        method = scope["method"]
        headers, path, query, client_ip, user_agent, decision = await self.decide(scope)
        if isinstance(decision, Refusal):
            await self.answer(send, decision.status, decision.reason, decision.message)
            return
        token = _bearer(headers)
        # kubectl falls back to SPDY when a WebSocket upgrade was refused: the request goes on
        # without the upgrade, so the API server's reason (forbidden, not scheduled) reaches
        # kubectl; only its "upgrade required" is replaced by why SPDY cannot pass.
        spdy = headers.get("upgrade", "").lower().startswith("spdy/")

        try:
            body = await read_body(receive, MAX_BODY)
        except TooLarge:
            await self.answer(send, 413, "RequestEntityTooLarge", "Request body too large.")
            return
        if body is None:
            return

        forward = self.forward_headers(headers, decision)
        url = decision.upstream.base_url + path + (f"?{query}" if query else "")
        request = self.client_for(decision).build_request(
            method, url, headers=forward, content=body
        )
        state = {"status": 0, "started": False, "spdy": spdy}
        streaming = asyncio.ensure_future(self.relay(request, decision, send, state))
        watchers = [
            asyncio.ensure_future(self.wait_disconnect(receive)),
            asyncio.ensure_future(self.wait_revoked(token, decision)),
        ]
        try:
            done, _ = await asyncio.wait([streaming, *watchers],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, *watchers):
                task.cancel()
            await asyncio.gather(streaming, *watchers, return_exceptions=True)
        if streaming not in done and state["started"]:
            # Revoked (or the client left) mid-stream: end the response cleanly.
            with contextlib.suppress(Exception):  # the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        await sync_to_async(services.record_proxy_request)(
            grant=decision, method=method, verb=kube_verb(method, path, query), path=path +
            (f"?{query}" if query else ""), status=state["status"] or 499,
            duration_ms=int((time.monotonic() - started) * 1000), client_ip=client_ip,
            user_agent=user_agent,
        )

    async def relay(self, request: httpx.Request, grant: Grant, send: Any,
                    state: dict[str, Any]) -> None:
        client = self.client_for(grant)
        try:
            response = await client.send(request, stream=True)
            if response.status_code == 401 and grant.access_token and "proxy" not in \
                    request.url.path.split("/"):
                # The API server's own refusal of the cached token (its account was made
                # again since): once more, with a new one. Never for a tenant's service
                # answering 401 through services/<name>/proxy.
                body = await response.aread()
                await response.aclose()
                fresh = None
                if _is_unauthorized_status(body):
                    try:
                        fresh = await sync_to_async(services.renew_access_token)(
                            grant.instance_id)
                    except BackendError as exc:
                        state["status"] = 503
                        await self.answer(send, 503, "ServiceUnavailable", exc.message)
                        return
                if fresh is None:
                    state["status"] = 401
                    await self.answer_raw(send, 401, body, response.headers.get(
                        "content-type", "application/json"))
                    return
                request.headers.update(fresh)
                response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("proxy: %s %s failed: %r", request.method, request.url, exc)
            state["status"] = 502
            await self.answer(send, 502, "ServiceUnavailable",
                              f"The portal cannot reach the instance's API: {exc}")
            return
        try:
            state["status"] = response.status_code
            if state.get("spdy"):
                body = await response.aread()
                if response.status_code < 400 or b"Upgrade request required" in body:
                    state["status"] = 400
                    await self.answer(send, 400, "BadRequest", NO_SPDY)
                    return
                await self.answer_raw(send, response.status_code, body,
                                      response.headers.get("content-type", "application/json"))
                return
            await send({
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in response.headers.multi_items()
                    if k.lower() not in HOP_BY_HOP - {"content-length"}
                ],
            })
            state["started"] = True
            # Raw bytes as they arrive: no decoding, no buffering (watch events, log lines).
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def wait_disconnect(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def wait_revoked(self, token: str, grant: Grant) -> None:
        """Re-decide a long request every ACCESS_RECHECK_S; return once it is refused."""
        while True:
            await asyncio.sleep(settings.ACCESS_RECHECK_S)
            decision = await sync_to_async(services.authorize_proxy_request)(
                token=token, instance_id=grant.instance_id, touch=False
            )
            if isinstance(decision, Refusal):
                return

    async def answer(self, send: Any, code: int, reason: str, message: str) -> None:
        await self.answer_raw(send, code, _status(code, reason, message))

    async def answer_raw(self, send: Any, code: int, body: bytes,
                         content_type: str = "application/json") -> None:
        await send({
            "type": "http.response.start", "status": code,
            "headers": [(b"content-type", content_type.encode("latin-1")),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})


async def relay_websocket(receive: Any, send: Any, upstream: Any, watch: Any) -> None:
    """Pass an accepted WebSocket's frames both ways, unchanged (the Kubernetes proxy's
    streams and the services' origins), until either side closes or `watch` (a coroutine
    that returns when access ends) does; then close both."""
    tasks = [asyncio.ensure_future(client_to_upstream(receive, upstream)),
             asyncio.ensure_future(upstream_to_client(upstream, send)),
             asyncio.ensure_future(watch)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "websocket.close", "code": upstream.close_code or 1000})


async def client_to_upstream(receive: Any, upstream: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            await upstream.send(message["bytes"])
        elif message.get("text") is not None:
            await upstream.send(message["text"])


async def upstream_to_client(upstream: Any, send: Any) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for data in upstream:
            key = "bytes" if isinstance(data, bytes) else "text"
            await send({"type": "websocket.send", key: data})


def _is_unauthorized_status(body: bytes) -> bool:
    """Whether a 401's body is the API server's own Status (not something a pod answered)."""
    try:
        status = json.loads(body)
    except ValueError:
        return False
    return isinstance(status, dict) and status.get("kind") == "Status" \
        and status.get("reason") == "Unauthorized"


def _bearer(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def _stream_verb(path: str) -> str:
    """exec, attach or portforward, as the audit trail names a streaming request."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in STREAMING else "upgrade"


async def refuse_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Anything outside /k8s/ on a listener that serves only the proxy."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1008})
        return
    body = _status(404, "NotFound", "Only the Kubernetes proxy is served here.")
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
