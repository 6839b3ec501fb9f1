"""The authenticating Kubernetes API proxy: `/k8s/<instance id>/...`, an ASGI application.

Every request is decided afresh (`services.authorize_proxy_request`): a live token bound to
this instance, and a user still allowed on it. Then it goes to the instance's API with the
portal's credentials (impersonating the user for namespace instances), and the answer
streams back chunk by chunk, so watches and `logs -f` arrive as they happen. Long requests
are re-decided every ACCESS_RECHECK_S: a watch ends within about a second of a revocation.
"""

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings

from clusters.backends.kubernetes.client import request_verb
from gpupaas.metrics import PROXY_LATENCY, PROXY_REQUESTS

from . import services
from .services import Grant, Refusal

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, never forwarded. The client's
# own credentials and impersonation requests never reach the cluster: the portal sets both.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
MAX_BODY = 64 * 1024 * 1024  # kube-apiserver itself refuses requests over 3 MiB


def _status(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes `Status` body, which kubectl turns into a readable error."""
    return json.dumps({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }).encode()


def kube_verb(method: str, path: str, query: str) -> str:
    """The Kubernetes verb of a request, as audit logs name it."""
    return request_verb(method, path, dict(parse_qsl(query)))


def _client_ip(scope: dict[str, Any], headers: dict[str, str]) -> str | None:
    # As workspaces.services.client_ip does for pages: behind a TLS proxy, the client's.
    forwarded = headers.get("x-forwarded-for", "")
    if settings.SECURE_PROXY_SSL_HEADER and forwarded:
        return forwarded.split(",")[0].strip()
    client = scope.get("client")
    return client[0] if client else None


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
        if scope["type"] == "websocket":
            # exec, attach and port-forward are not proxied yet: refuse the upgrade plainly.
            await receive()
            await send({"type": "websocket.close", "code": 1003})
            return
        started, answered = time.monotonic(), {"status": 0}

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
            await send(message)

        try:
            await self.http(scope, receive, counted)
        finally:
            _, _, _, *rest = scope["path"].split("/", 3)  # '', 'k8s', '<id>', rest
            verb = kube_verb(scope["method"], "/" + (rest[0] if rest else ""),
                             scope.get("query_string", b"").decode("latin-1"))
            PROXY_REQUESTS.labels(verb, str(answered["status"] or 499)).inc()
            PROXY_LATENCY.labels(verb).observe(time.monotonic() - started)

    async def http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        method, query = scope["method"], scope.get("query_string", b"").decode("latin-1")
        # The path as the client encoded it, so names pass to the API server unchanged.
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        _, _, instance_part, *rest = raw_path.split("/", 3)  # '', 'k8s', '<id>', rest
        if not instance_part.isdigit():
            await self.answer(send, 404, "NotFound", "No such instance.")
            return
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        user_agent = headers.get("user-agent", "")
        client_ip = _client_ip(scope, headers)
        client = f"{client_ip or '?'} {user_agent}".strip()
        decision = await sync_to_async(services.authorize_proxy_request)(
            token=token, instance_id=int(instance_part), client=client
        )
        if isinstance(decision, Refusal):
            await self.answer(send, decision.status, decision.reason, decision.message)
            return

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await self.answer(send, 413, "RequestEntityTooLarge", "Request body too large.")
                return
            if not message.get("more_body"):
                break

        path = "/" + (rest[0] if rest else "")
        forward = {k: v for k, v in headers.items()
                   if k not in HOP_BY_HOP and k != "authorization"
                   and not k.startswith("impersonate-")}
        forward.update(decision.upstream.headers)
        forward.update(decision.impersonate)
        url = decision.upstream.base_url + path + (f"?{query}" if query else "")
        request = self.client_for(decision).build_request(
            method, url, headers=forward, content=bytes(body)
        )
        state = {"status": 0, "started": False}
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
        except httpx.HTTPError as exc:
            log.warning("proxy: %s %s failed: %r", request.method, request.url, exc)
            state["status"] = 502
            await self.answer(send, 502, "ServiceUnavailable",
                              f"The portal cannot reach the instance's API: {exc}")
            return
        try:
            state["status"] = response.status_code
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
        body = _status(code, reason, message)
        await send({
            "type": "http.response.start", "status": code,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
