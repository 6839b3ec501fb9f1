"""`gpupaas shell NAME`: the browser shell in this terminal, over the same WebSocket.

The terminal goes to raw mode, so every key (Ctrl-C, Tab, arrows) reaches the shell; its
size follows this window (SIGWINCH); the portal's closing reason is printed on stderr, and
the exit code says how it ended (see EXIT_CODES)."""

import contextlib
import json
import os
import select
import signal
import ssl
import sys
import termios
import tty
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import connect

from . import __version__, client

# The portal's close codes (access/consumers.py) as exit codes.
BY_CLOSE = {1000: client.OK, 4000: client.OK, 4403: client.FORBIDDEN,
            4408: client.TIMED_OUT, 4503: client.REFUSED}


def _size() -> tuple[int, int]:
    with contextlib.suppress(OSError):
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    return 80, 24


def run(url: str, token: str, instance_id: int, *, tls: ssl.SSLContext | None = None) -> int:
    """Relay this terminal to the shell until it closes; the exit code. `tls`: how the
    portal's certificate is checked (the API client's: --ca-file, --insecure)."""
    socket_url = url.replace("http", "ws", 1) + f"/access/instances/{instance_id}/shell/socket/"
    context = (tls or ssl.create_default_context()) if socket_url.startswith("wss:") else None
    if context is not None and tls is None and os.environ.get("SSL_CERT_FILE"):
        context.load_verify_locations(os.environ["SSL_CERT_FILE"])
    try:
        socket = connect(socket_url, ssl=context, open_timeout=20, max_size=None,
                         additional_headers={"Authorization": f"Bearer {token}",
                                             # An API token, not a cookie: the portal's
                                             # origin check asks for its own address.
                                             "Origin": url},
                         user_agent_header=f"gpupaas-cli/{__version__}")
    except InvalidStatus as exc:
        print("The portal refused the shell: sign in again (`gpupaas login`) with a token "
              "that may write, on an instance you can reach.", file=sys.stderr)
        return client.UNAUTHENTICATED if exc.response.status_code in (401, 403) \
            else client.ERROR
    except (OSError, TimeoutError, WebSocketException) as exc:
        print(f"Cannot reach the portal at {url}: {exc}.", file=sys.stderr)
        return client.UNREACHABLE
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if interactive else None
    reason: dict[str, Any] = {}

    def resize(*_: Any) -> None:
        cols, rows = _size()
        with contextlib.suppress(Exception):
            socket.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    try:
        if interactive:
            tty.setraw(sys.stdin.fileno())
            signal.signal(signal.SIGWINCH, resize)
        resize()
        stdin = sys.stdin.fileno()
        while True:
            with contextlib.suppress(TimeoutError):
                frame = socket.recv(timeout=0.02)
                if isinstance(frame, bytes):
                    os.write(sys.stdout.fileno(), frame)
                else:
                    with contextlib.suppress(ValueError):
                        message = json.loads(frame)
                        if message.get("type") == "closed":
                            reason.update(message)
                continue
            ready, _, _ = select.select([stdin] if stdin >= 0 else [], [], [], 0.05)
            if ready:
                data = os.read(stdin, 4096)
                if not data and not interactive:
                    stdin = -1  # piped input ended: wait for the shell to end
                    continue
                socket.send(data)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else 1006
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(Exception):
            socket.close()
    if reason.get("reason"):
        print(f"\r\n{reason['reason']}", file=sys.stderr)
    return BY_CLOSE.get(code, client.UNREACHABLE if code == 1006 else client.ERROR)
