"""The portal over ASGI: pages through Django, `/k8s/` through the Kubernetes API proxy.

The proxy is a plain ASGI application beside Django, so a watch or `logs -f` streams with no
Django middleware or thread hop per chunk, and a WebSocket upgrade can reach it.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")
django_application = get_asgi_application()

from access.proxy import KubeProxy  # noqa: E402 - needs the apps loaded above

PROXY_PREFIX = "/k8s/"
kube_proxy = KubeProxy()


async def application(scope, receive, send):
    if scope["type"] in ("http", "websocket") and scope["path"].startswith(PROXY_PREFIX):
        await kube_proxy(scope, receive, send)
    else:
        await django_application(scope, receive, send)
