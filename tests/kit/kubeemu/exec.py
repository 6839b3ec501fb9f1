"""Pod streams: exec, attach and port-forward are refused as a real server refuses them (a
missing pod, a pod not bound to a node, no WebSocket upgrade); exec over WebSocket
(``v5.channel.k8s.io``, ``v4``) in a pod bound to a node is answered by the ``websockets``
library's protocol, as a kubelet would for a container that has only ``echo``: its
arguments on stdout (channel 1), exit 0; anything else exit 127. Pods the kit's kubelet
stand-in runs (``tests/kit/kubelet.py``) execute for real, on the same connection."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from websockets.server import ServerProtocol
from websockets.sync.connection import Connection

from .errors import Obj, bad_request, not_found

if TYPE_CHECKING:
    from ..kubeproxy import RequestRecord
    from .serving import Handler, Route

POD_STREAMS = ("exec", "attach", "portforward")
PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]  # preferred first, as a kubelet does


def serve(handler: Handler, route: Route, query: dict[str, list[str]],
          record: RequestRecord) -> None:
    """Answer one pod stream request on `handler`'s connection; `record` is its request's."""
    emu = handler.server.emulator
    handler._read_body()
    pod = emu.store.find(emu.catalog.lookup("", "v1", "pods"), route.namespace, route.name or "")
    offered = {p.strip() for p in (handler.headers.get("Sec-WebSocket-Protocol") or "").split(",")}
    error = None
    if pod is None:
        error = not_found("", "pods", route.name or "")
    elif not (pod.get("spec") or {}).get("nodeName"):
        error = bad_request(f"pod {route.name} does not have a host assigned")
    elif ((handler.headers.get("Upgrade") or "").lower() != "websocket"
          or route.subresource != "exec" or not offered & set(PROTOCOLS)):
        error = bad_request("Upgrade request required")
    if error is not None:
        emu.requests._finish(record, error.code)
        handler._send(error.code, error.status())
        return
    # The sans-I/O protocol parses the handshake itself: replay the request http.server read.
    protocol = ServerProtocol(subprotocols=PROTOCOLS, logger=logging.getLogger("kubeemu.exec"))
    protocol.receive_data("".join([f"{handler.requestline}\r\n", *(
        f"{k}: {v}\r\n" for k, v in handler.headers.items()), "\r\n"]).encode("latin-1"))
    [request] = protocol.events_received()
    response = protocol.accept(request)
    protocol.send_response(response)
    handler.wfile.write(b"".join(protocol.data_to_send()))
    emu.requests._finish(record, response.status_code)
    handler.close_connection = True
    if response.status_code != 101:  # not a valid WebSocket handshake: refused as it says
        return
    ws = Connection(handler.connection, protocol, ping_interval=None, close_timeout=2)
    try:
        if emu.kubelet is not None and emu.kubelet.runs(pod):
            emu.kubelet.exec(ws, pod, query)
        else:
            _echo(ws, query.get("command") or [])
    finally:
        ws.close()  # 1000, and the closing handshake


def _echo(ws: Connection, command: list[str]) -> None:
    if command[:1] == ["echo"]:
        ws.send(b"\x01" + (" ".join(command[1:]) + "\n").encode())
        status: Obj = {"metadata": {}, "status": "Success"}
    else:
        ws.send(b"\x02" + f"kubeemu: {' '.join(command)}: not found\n".encode())
        status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                  "message": "command terminated with non-zero exit code: error executing "
                             f"command {command}, exit code 127",
                  "details": {"causes": [{"reason": "ExitCode", "message": "127"}]}}
    ws.send(b"\x03" + json.dumps(status).encode())
