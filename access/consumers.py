"""The browser shell's WebSocket (Django Channels): one terminal on the page, relayed to an
`exec` into the user's shell pod in a Kubernetes instance (access/shellpod.py), or, for a
local sandbox, to a login shell in a pseudo-terminal here (access/shell.py).

Binary frames carry keystrokes in and terminal output out, unchanged; text frames carry JSON
control messages: `{"type": "resize", "cols": .., "rows": ..}` from the page, and
`{"type": "closed", "reason": ..}` to it just before the server closes.

The shell lives only while its user may reach the instance: access is decided when it opens
(someone else's instance is refused like a missing one), again every ACCESS_RECHECK_S, and at
once when the revoke path signals the instance's group (a pod shell's pod is then deleted).
It also closes after SHELL_IDLE_TIMEOUT_S without a keystroke, when its session token
expires, and when the shell ends (`exit`). While a shell pod starts, the terminal says what
it waits for, and why it failed, in the cluster's words.
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
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from api.services import TokenRefused, authenticate_api_token

from . import services, shell, shellpod
from .proxy import scope_client_ip

log = logging.getLogger(__name__)


def user_of_api_token(*, plain: str, ip_address: str | None) -> AbstractBaseUser | None:
    """The user of a live API token that may write (`gpupaas shell`), else None: a shell
    changes things, so a read-only token opens none."""
    try:
        token, _ = authenticate_api_token(plain=plain, ip_address=ip_address)
    except TokenRefused:
        return None
    return token.user if token.can_write else None

# Close codes the page reads (static/js/shell.js): the final ones are not retried.
ENDED = 4000  # the process ended, or the time limit
REFUSED = 4403  # access refused or ended
IDLE = 4408
UNAVAILABLE = 4503


class ShellConsumer(AsyncWebsocketConsumer):
    grant: services.ShellGrant | None = None
    process: shell.ShellProcess | None = None  # a local sandbox's shell
    upstream: Any = None  # a pod shell's exec WebSocket
    pod: shellpod.ShellPod | None = None
    renew_every = 0.0  # seconds between writes of the pod's kubeconfig (its token expires)
    written = 0.0
    end_code: int | None = None

    async def connect(self) -> None:
        self.tasks: list[asyncio.Task] = []
        self.size: tuple[int, int] | None = None  # (cols, rows), once the page said
        self.early = b""  # keystrokes typed before the shell was ready (up to 64 KiB)
        self.closing = False
        self.reason = "the browser left"
        self.write_lock = asyncio.Lock()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in self.scope["headers"]}
        self.client_ip = scope_client_ip(self.scope)
        user = self.scope.get("user")
        if headers.get("authorization", "").startswith("Bearer "):
            # `gpupaas shell`: an API token that may write, instead of a session cookie.
            user = await database_sync_to_async(user_of_api_token)(
                plain=headers["authorization"][7:].strip(), ip_address=self.client_ip)
        elif user is not None and user.is_authenticated and not await self.session_fresh():
            user = None
        if user is None or not user.is_authenticated:
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
        self.last_input = time.monotonic()
        await self.channel_layer.group_add(services.shell_group(self.grant.instance_id),
                                           self.channel_name)
        self.tasks = [asyncio.ensure_future(self.run()), asyncio.ensure_future(self.watch())]

    async def run(self) -> None:
        """Start the shell, then relay its output until it ends."""
        try:
            if self.grant.kind == "pod":
                await self.start_pod()
                await self.pump_pod()
                return
            terminal = await database_sync_to_async(services.sandbox_terminal)(
                grant=self.grant)
            self.process = await sync_to_async(shell.start_terminal, thread_sensitive=False)(
                terminal, owner=self.grant.user_id)
            if self.size:
                shell.resize(self.process, cols=self.size[0], rows=self.size[1])
            if self.early:
                await self.write(self.early)
        except (shell.ShellUnavailable, services.ShellRefused, shellpod.ShellPodError) as exc:
            await self.end(str(exc), UNAVAILABLE)
            return
        await self.pump()

    async def session_fresh(self) -> bool:
        """The page's session has not idled out (as IdleTimeoutMiddleware decides pages)."""
        session = self.scope["session"]
        last = await database_sync_to_async(session.get)("last_seen")
        return last is None or time.time() - last <= settings.SESSION_IDLE_TIMEOUT_S

    def portal_url(self) -> str:
        """The address the browser reached the portal at (the pod's fallback)."""
        headers = dict(self.scope["headers"])
        scheme = "https" if self.scope.get("scheme") == "wss" else "http"
        return f"{scheme}://{headers.get(b'host', b'').decode('latin-1')}"

    async def say(self, line: str) -> None:
        await self.send(bytes_data=f"\x1b[2m{line}\x1b[0m\r\n".encode())

    # -- a Kubernetes instance: the shell's pod

    async def start_pod(self) -> None:
        """Start the user's shell pod (or reuse it), saying what it waits for; write its
        kubeconfig; exec a login shell in it."""
        handle, body, config, self.renew_every = await database_sync_to_async(
            services.shell_pod)(grant=self.grant, portal_url=self.portal_url())
        self.pod = handle
        began, said = time.monotonic(), ""
        while True:
            pod = await asyncio.to_thread(handle.get)
            if pod is None:
                pod = await asyncio.to_thread(handle.create, body)
            state = shellpod.state(pod)
            if state.ready:
                break
            if state.failed:
                raise shellpod.ShellPodError(f"Your shell could not start. {state.failed}")
            if state.waiting != said:
                said = state.waiting
                await self.say(said)
            if time.monotonic() - began > settings.SHELL_START_TIMEOUT_S:
                raise shellpod.ShellPodError(
                    f"Your shell did not start within {settings.SHELL_START_TIMEOUT_S} s. "
                    f"{said}")
            await asyncio.sleep(0.3 if time.monotonic() - began < 10 else 1)
        await handle.write_file(shellpod.KUBECONFIG, config.encode())
        self.written = time.monotonic()
        self.upstream = await handle.exec(shellpod.LOGIN, tty=True)
        if self.size:
            await self.resize_pod(*self.size)
        if self.early:
            await self.upstream.send(b"\x00" + self.early)
        where = f"namespace {handle.namespace}" if self.grant.namespace != "default" \
            else "the default namespace of its cluster"
        await self.say(f"Shell in pod {handle.name} ({where}), as you: kubectl and helm "
                       "reach the instance through the portal. Files in your home last "
                       "as long as the pod.")

    async def pump_pod(self) -> None:
        """The exec's output to the page; its error channel's Status ends the shell."""
        ended = "The shell ended."
        with contextlib.suppress(Exception):  # a dropped connection ends it as well
            async for frame in self.upstream:
                if not isinstance(frame, bytes) or not frame:
                    continue
                if frame[0] in (1, 2):
                    await self.send(bytes_data=frame[1:])
                elif frame[0] == 3:
                    why = shellpod.exit_message(frame[1:])
                    ended = f"The shell ended ({why})." if why else ended
        if not self.closing:
            await self.end(ended, ENDED)

    async def resize_pod(self, cols: int, rows: int) -> None:
        with contextlib.suppress(Exception):
            await self.upstream.send(b"\x04" + json.dumps(
                {"Width": max(1, min(cols, 1000)), "Height": max(1, min(rows, 500))}).encode())

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
        if self.closing:
            return
        if bytes_data is not None:
            self.last_input = time.monotonic()
            if self.upstream is not None:
                with contextlib.suppress(Exception):
                    await self.upstream.send(b"\x00" + bytes_data)
            elif self.process is not None:
                await self.write(bytes_data)
            else:
                self.early = (self.early + bytes_data)[:65536]
            return
        with contextlib.suppress(ValueError, TypeError, KeyError):
            message = json.loads(text_data or "")
            if message.get("type") == "resize":
                self.size = (int(message["cols"]), int(message["rows"]))
                if self.upstream is not None:
                    await self.resize_pod(*self.size)
                elif self.process is not None:
                    shell.resize(self.process, rows=self.size[1], cols=self.size[0])

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
        failures, touched = 0, time.monotonic()
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
            if self.renew_every and self.upstream is not None and \
                    time.monotonic() - self.written > self.renew_every:
                await self.renew_kubeconfig()
            if self.grant.kind == "pod" and time.monotonic() - touched > 60:
                touched = time.monotonic()
                with contextlib.suppress(Exception):
                    await database_sync_to_async(services.touch_shell_pod)(grant=self.grant)

    async def renew_kubeconfig(self) -> None:
        """A fresh short-lived token into the pod's kubeconfig (the fallback where the pod
        cannot reach the portal); a failure is said and tried again on the next pass."""
        self.written = time.monotonic()
        try:
            config, _ = await database_sync_to_async(services.renewed_shell_kubeconfig)(
                grant=self.grant)
            await self.pod.write_file(shellpod.KUBECONFIG, config.encode())
        except (services.ShellRefused, shellpod.ShellPodError) as exc:
            log.warning("shell on instance %s: kubeconfig not renewed: %s",
                        self.grant.instance_id, exc)

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
        if self.grant is not None:
            await self.check_access()

    # -- the end

    async def end(self, reason: str, code: int) -> None:
        """Tell the page why, then close; `disconnect` cleans up."""
        if self.closing:
            return
        self.closing = True
        self.reason, self.end_code = reason, code
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
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                await self.upstream.close()
        await database_sync_to_async(services.close_shell)(
            grant=self.grant, reason=self.reason, ip_address=self.client_ip)
        if self.grant.kind == "pod" and self.end_code == REFUSED:
            # Access ended: the pod goes now.
            await database_sync_to_async(services.end_shell_pod)(
                grant=self.grant, reason=self.reason)
        elif self.grant.kind == "pod":
            # It stays for the next shell until SHELL_IDLE_TIMEOUT_S from now.
            await database_sync_to_async(services.touch_shell_pod)(grant=self.grant)
