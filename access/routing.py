"""WebSocket routes (Django Channels), mounted by gpupaas/asgi.py."""

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path, re_path

from . import consumers


class NoSuchSocket(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()


websocket_urlpatterns = [
    path("access/instances/<int:pk>/shell/socket/", consumers.ShellConsumer.as_asgi()),
    re_path(r"", NoSuchSocket.as_asgi()),
]
