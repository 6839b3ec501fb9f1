"""The portal over ASGI: pages through Django, `/k8s/` through the Kubernetes API proxy, and
the browser shell's WebSockets through Django Channels.

The proxy is a plain ASGI application beside Django, so a watch or `logs -f` streams with no
Django middleware or thread hop per chunk, and exec's WebSocket upgrade reaches it. Other
WebSockets go to Channels with the session's user, and only from the portal's own pages
(their Origin must be one of ALLOWED_HOSTS: another site cannot open a shell with the
user's cookie).
"""

import asyncio
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does


class PagesHandler(ASGIHandler):
    """Django's ASGI handler running the middleware and the view as one sync call.

    Every page, its middleware included, is sync code. Django's own ASGI handler runs the
    middleware chain in async mode, which adapts each sync part on its own and so crosses
    between the event loop and a worker thread several times a request; here the whole of
    `get_response` (as Django's WSGI handler runs it) is one call on the request's thread.
    Reading the body, the disconnect watch, the signals and streaming the answer stay
    Django's ASGI code."""

    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response)(request)


django_asgi = PagesHandler()

# Need the apps loaded above.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from access.origins import AppsProxy, host_label  # noqa: E402
from access.proxy import KubeProxy, refuse_path  # noqa: E402
from access.routing import websocket_urlpatterns  # noqa: E402


class DjangoThreads:
    """Django's sync code (every page and partial) on a fixed set of reused threads.

    Django runs each request's sync code on a thread made for it. A burst of requests (100
    launches at once) then made 100 threads per process that fought over the GIL while all
    but DATABASE_POOL_SIZE of them waited for a connection anyway. Here a request waits in
    the event loop for one of `threads` threads, which stay for the next request; everything
    Django does for the request still happens on that one thread (asgiref's
    ThreadSensitiveContext with an executor: Django's own context inside it uses it).

    A request keeps its thread until its answer is sent, so a slow view, a slow upload or a
    client that does not read its answer keeps one. A request that waited `spare_after`
    seconds for a thread gets a spare one of its own, as Django would give it: a few such
    requests (or a hostile client's many) slow the others by that much, never stop them."""

    def __init__(self, app, threads: int, spare_after: float = 2.0) -> None:
        self.app = app
        self.threads = threads
        self.spare_after = spare_after
        # Per event loop (one in a server process; tests may run several): idle threads and
        # how many were made.
        self.loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        if loop not in self.loops:
            self.loops[loop] = (asyncio.Queue(), [0])
        idle, made = self.loops[loop]
        spare = False
        if idle.empty() and made[0] < self.threads:
            made[0] += 1
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django")
        else:
            try:
                executor = await asyncio.wait_for(idle.get(), self.spare_after)
            except TimeoutError:
                spare = True
                executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-spare")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)
        finally:
            if spare:
                executor.shutdown(wait=False)
            else:
                idle.put_nowait(executor)


django_application = DjangoThreads(django_asgi, settings.WEB_THREADS) \
    if settings.WEB_THREADS else django_asgi

PROXY_PREFIX = "/k8s/"
kube_proxy = KubeProxy()
websocket_application = AllowedHostsOriginValidator(
    AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
WEBSOCKET_PATHS = ("/access/",)


apps_proxy = AppsProxy()


def _host(scope) -> str:
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")


async def application(scope, receive, send):
    if scope["type"] in ("http", "websocket") and host_label(_host(scope)):
        # A catalogue service's own origin: nothing of the portal is served there.
        await apps_proxy(scope, receive, send)
    elif scope["type"] in ("http", "websocket") and scope["path"].startswith(PROXY_PREFIX):
        await kube_proxy(scope, receive, send)
    elif scope["type"] == "websocket" and scope["path"].startswith(WEBSOCKET_PATHS):
        await websocket_application(scope, receive, send)
    elif scope["type"] == "websocket":
        await refuse_path(scope, receive, send)
    else:
        await django_application(scope, receive, send)
