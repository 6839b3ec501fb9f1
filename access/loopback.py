"""The Kubernetes proxy on a loopback port of this web process, over TLS: where the kubectl of
browser shells goes.

kubectl sends a bearer token over HTTPS only, while the portal may be served over plain HTTP
(`make run`) or behind a TLS proxy whose public name it cannot reach from inside. So each web
process also serves the same proxy (`access.proxy.KubeProxy`) on 127.0.0.1, at a port the
system picks, with a certificate it makes for itself at first use; a shell's kubeconfig
names that address and carries that certificate. Requests are decided, forwarded and
audited exactly as those of a downloaded kubeconfig: the shell's kubeconfig holds a token of
the same kind, and nothing else.
"""

import asyncio
import datetime
import ipaddress
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from asgiref.sync import sync_to_async

from .proxy import KubeProxy, refuse_path

PREFIX = "/k8s/"


@dataclass(frozen=True)
class Listener:
    base_url: str  # https://127.0.0.1:<port>
    ca_pem: bytes  # the certificate itself (self-signed): what kubeconfigs trust
    server: Any  # the uvicorn.Server, kept alive with the event loop


# One listener per event loop (a web worker has one; tests may run several servers).
_listeners: dict[asyncio.AbstractEventLoop, Listener] = {}
_starting: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}


def _certificate(folder: Path) -> tuple[Path, Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpupaas shell proxy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path, pem


def _app(proxy: KubeProxy):
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(PREFIX):
            await proxy(scope, receive, send)
        elif scope["type"] in ("http", "websocket"):
            await refuse_path(scope, receive, send)

    return app


async def listener() -> Listener:
    """This event loop's listener, started at first use."""
    loop = asyncio.get_running_loop()
    if loop in _listeners:
        return _listeners[loop]
    async with _starting.setdefault(loop, asyncio.Lock()):
        if loop not in _listeners:
            _listeners[loop] = await _start()
        for old in [other for other in _listeners if other.is_closed()]:
            del _listeners[old]
    return _listeners[loop]


async def _start() -> Listener:
    folder = Path(tempfile.mkdtemp(prefix="gpupaas-shell-proxy-"))  # 0700, the portal's
    cert, key, pem = await sync_to_async(_certificate, thread_sensitive=False)(folder)
    config = uvicorn.Config(
        _app(KubeProxy()), host="127.0.0.1", port=0, ssl_certfile=str(cert),
        ssl_keyfile=str(key), lifespan="off", log_level="warning", access_log=False,
        proxy_headers=False,  # loopback clients are shells: no forwarded addresses to trust
    )
    config.load()
    key.unlink()  # loaded into the SSL context; no copy stays on disk
    server = uvicorn.Server(config)
    # Server.startup() without serve(): this process's own server (gunicorn's worker)
    # handles the signals and the event loop; this one only adds a listening socket.
    server.lifespan = config.lifespan_class(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await server.startup(sockets=[sock])
    return Listener(base_url=f"https://127.0.0.1:{sock.getsockname()[1]}", ca_pem=pem,
                    server=server)
