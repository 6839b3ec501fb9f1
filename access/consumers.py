"""The browser shell's WebSocket (Django Channels): one terminal on the page, one process in
a pseudo-terminal here (access/shell.py).

Binary frames carry keystrokes in and terminal output out, unchanged; text frames carry JSON
control messages: `{"type": "resize", "cols": .., "rows": ..}` from the page, and
`{"type": "closed", "reason": ..}` to it just before the server closes.

The shell lives only while its user may reach the instance: access is decided when it opens
(someone else's instance is refused like a missing one), again every ACCESS_RECHECK_S, and at
once when the revoke path signals the instance's group. It also closes after
SHELL_IDLE_TIMEOUT_S without a keystroke, when its session token expires, and when the
process ends (`exit`).
"""

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from . import loopback, services, shell
from .proxy import scope_client_ip

log = logging.getLogger(__name__)

# Close codes the page reads (static/js/shell.js): the final ones are not retried.
ENDED = 4000  # the process ended, or the time limit
REFUSED = 4403  # access refused or ended
IDLE = 4408
UNAVAILABLE = 4503


class ShellConsumer(AsyncWebsocketConsumer):
    grant: services.ShellGrant | None = None
    process: shell.ShellProcess | None = None

    async def connect(self) -> None:
        self.tasks: list[asyncio.Task] = []
        self.closing = False
        self.reason = "the browser left"
        self.write_lock = asyncio.Lock()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in self.scope["headers"]}
        self.client_ip = scope_client_ip(self.scope)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await self.session_fresh():
            await self.close()  # the handshake is refused: sign in first
            return
        try:
            self.grant = await database_sync_to_async(services.open_shell)(
                user=user, instance_id=int(self.scope["url_route"]["kwargs"]["pk"]),
                client=f"{self.client_ip or '?'} {headers.get('user-agent', '')}".strip(),
                ip_address=self.client_ip,
            )
        except services.ShellRefused as exc:
            if exc.hidden:
                await self.close()  # someone else's instance: as if it did not exist
                return
            await self.accept()
            await self.end(exc.message, REFUSED)
            return
        await self.accept()
        try:
            self.process = await self.start()
        except (shell.ShellUnavailable, services.ShellRefused) as exc:
            await self.end(str(exc), UNAVAILABLE)
            return
        self.last_input = time.monotonic()
        await self.channel_layer.group_add(services.shell_group(self.grant.instance_id),
                                           self.channel_name)
        self.tasks = [asyncio.ensure_future(self.pump()), asyncio.ensure_future(self.watch())]

    async def session_fresh(self) -> bool:
        """The page's session has not idled out (as IdleTimeoutMiddleware decides pages)."""
        session = self.scope["session"]
        last = await database_sync_to_async(session.get)("last_seen")
        return last is None or time.time() - last <= settings.SESSION_IDLE_TIMEOUT_S

    async def start(self) -> shell.ShellProcess:
        grant = self.grant
        if grant.kind == "kubectl":
            listener = await loopback.listener()
            return await sync_to_async(shell.start_kubectl, thread_sensitive=False)(
                owner=grant.user_id, instance=grant.instance_name, namespace=grant.namespace,
                username=grant.username, token=grant.token,
                server=f"{listener.base_url}/k8s/{grant.instance_id}/", ca_pem=listener.ca_pem,
            )
        terminal = await database_sync_to_async(services.sandbox_terminal)(grant=grant)
        return await sync_to_async(shell.start_terminal, thread_sensitive=False)(
            terminal, owner=grant.user_id)

    # -- the terminal's output to the page, its keystrokes to the terminal

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self.process.fd
        while True:
            readable = loop.create_future()
            loop.add_reader(fd, lambda f=readable: f.done() or f.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the shell and everything in it ended
                data = b""
            if not data:
                break
            try:
                await self.send(bytes_data=data)
            except Exception:  # the page left; disconnect() cleans up
                return
        if not self.closing:
            await self.end("The shell ended.", ENDED)

    async def receive(self, text_data: str | None = None,
                      bytes_data: bytes | None = None) -> None:
        if self.process is None or self.closing:
            return
        if bytes_data is not None:
            self.last_input = time.monotonic()
            await self.write(bytes_data)
            return
        with contextlib.suppress(ValueError, TypeError, KeyError):
            message = json.loads(text_data or "")
            if message.get("type") == "resize":
                shell.resize(self.process, rows=message["rows"], cols=message["cols"])

    async def write(self, data: bytes) -> None:
        """All of it, waiting while the terminal's input is full (a long paste)."""
        loop = asyncio.get_running_loop()
        fd = self.process.fd
        async with self.write_lock:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    writable = loop.create_future()
                    loop.add_writer(fd, lambda f=writable: f.done() or f.set_result(None))
                    try:
                        await asyncio.wait_for(writable, 30)
                    except TimeoutError:
                        return  # nothing reads the terminal's input: drop the rest
                    finally:
                        loop.remove_writer(fd)
                except OSError:
                    return

    # -- staying open only while allowed

    async def watch(self) -> None:
        idle = settings.SHELL_IDLE_TIMEOUT_S
        failures = 0
        while True:
            await asyncio.sleep(min(settings.ACCESS_RECHECK_S, max(idle / 4, 0.05)))
            try:
                if await self.check_access():
                    return
                failures = 0
            except Exception as exc:
                # Access that cannot be checked is not assumed: a few tries, then closed.
                failures += 1
                log.warning("shell on instance %s: access check failed: %r",
                            self.grant.instance_id, exc)
                if failures >= 3:
                    await self.end("The portal could not check your access, so the shell "
                                   "closed; open it again in a moment.", UNAVAILABLE)
                    return
            if time.monotonic() - self.last_input > idle:
                minutes = f"{idle / 60:g} minute{'s' if idle != 60 else ''}"
                await self.end(f"Closed after {minutes} without a keystroke.", IDLE)
                return
            if timezone.now() >= self.grant.expires_at:
                await self.end("The shell reached its time limit; open a new one.", ENDED)
                return

    async def check_access(self) -> bool:
        """True once the shell was closed because access ended."""
        if self.closing:
            return True
        why = await database_sync_to_async(services.shell_access)(grant=self.grant)
        if why:
            await self.end(why, REFUSED)
            return True
        return False

    async def access_changed(self, event: dict[str, Any]) -> None:
        """The revoke path signalled this instance's group: decide again now."""
        if self.grant is not None and self.process is not None:
            await self.check_access()

    # -- the end

    async def end(self, reason: str, code: int) -> None:
        """Tell the page why, then close; `disconnect` cleans up."""
        if self.closing:
            return
        self.closing = True
        self.reason = reason
        with contextlib.suppress(Exception):  # the page may be gone already
            await self.send(bytes_data=f"\r\n\x1b[33m[{reason}]\x1b[0m\r\n".encode())
            await self.send(text_data=json.dumps({"type": "closed", "reason": reason,
                                                  "code": code}))
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        self.closing = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        if self.grant is None:
            return
        with contextlib.suppress(Exception):
            await self.channel_layer.group_discard(
                services.shell_group(self.grant.instance_id), self.channel_name)
        if self.process is not None:
            await sync_to_async(shell.stop, thread_sensitive=False)(self.process)
        await database_sync_to_async(services.close_shell)(
            grant=self.grant, reason=self.reason, ip_address=self.client_ip)
