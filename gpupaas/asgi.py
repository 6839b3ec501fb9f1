"""The portal over ASGI: pages through Django, `/k8s/` through the Kubernetes API proxy, and
the browser shell's WebSockets through Django Channels.

The proxy is a plain ASGI application beside Django, so a watch or `logs -f` streams with no
Django middleware or thread hop per chunk, and exec's WebSocket upgrade reaches it. Other
WebSockets go to Channels with the session's user, and only from the portal's own pages
(their Origin must be one of ALLOWED_HOSTS: another site cannot open a shell with the
user's cookie).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")
django_application = get_asgi_application()

# Need the apps loaded above.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from access.proxy import KubeProxy, refuse_path  # noqa: E402
from access.routing import websocket_urlpatterns  # noqa: E402

PROXY_PREFIX = "/k8s/"
kube_proxy = KubeProxy()
websocket_application = AllowedHostsOriginValidator(
    AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
WEBSOCKET_PATHS = ("/access/",)


async def application(scope, receive, send):
    if scope["type"] in ("http", "websocket") and scope["path"].startswith(PROXY_PREFIX):
        await kube_proxy(scope, receive, send)
    elif scope["type"] == "websocket" and scope["path"].startswith(WEBSOCKET_PATHS):
        await websocket_application(scope, receive, send)
    elif scope["type"] == "websocket":
        await refuse_path(scope, receive, send)
    else:
        await django_application(scope, receive, send)
