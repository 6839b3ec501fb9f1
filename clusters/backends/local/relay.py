"""A catalogue service's front door on this machine: run as a plain script (no Django),
`python relay.py MARKER SOCKET PORT [--uid N --gid N] -- COMMAND…`.

Started by the portal inside a network namespace of the service's own (`unshare --net`),
it brings that namespace's loopback up, starts the service there (it listens on
127.0.0.1:PORT, which exists nowhere else), and relays every connection made to SOCKET, a
Unix socket in the portal's own control folder, to it. So the portal reaches the service
and no tenant does: their processes are in other network namespaces, and the socket's
folder is the portal's alone. The relay lives as long as the service and exits with it.
"""

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys

SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: a new network namespace's loopback
    starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, request)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def relay(port: int, client_reader: asyncio.StreamReader,
                client_writer: asyncio.StreamWriter) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_writer.close()  # not listening yet: the portal's health check retries
        return
    await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))


async def serve(path: str, port: int, child: subprocess.Popen) -> int:
    server = await asyncio.start_unix_server(
        lambda r, w: relay(port, r, w), path=path)
    os.chmod(path, 0o600)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, child.terminate)
    try:
        return await loop.run_in_executor(None, child.wait)
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main(argv: list[str]) -> int:
    split = argv.index("--")
    head, command = argv[:split], argv[split + 1:]
    _marker, path, port = head[0], head[1], int(head[2])
    options = dict(zip(head[3::2], head[4::2], strict=True))
    if os.geteuid() == 0:
        loopback_up()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    ids = {}
    if "--uid" in options:
        ids = {"user": int(options["--uid"]), "group": int(options["--gid"]),
               "extra_groups": []}
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, umask=0o077, **ids)
    return asyncio.run(serve(path, port, child))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
