"""Run code in a real JupyterLab's kernel, as its user would: REST to start a kernel, then the
kernel's websocket channel with Jupyter's message protocol (v5, JSON)."""

import json
import urllib.request
import uuid

import websocket


def _request(base: str, token: str, method: str, path: str) -> dict:
    request = urllib.request.Request(
        f"{base}{path}", method=method, data=b"{}" if method == "POST" else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else {}


def run_code(lab_url: str, token: str, code: str, timeout: float = 60) -> str:
    """stdout of `code` run in a new kernel of the server at `lab_url`; raises with the
    traceback if it fails."""
    base = lab_url.removesuffix("/lab")
    kernel = _request(base, token, "POST", "/api/kernels")
    ws = websocket.create_connection(
        f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel['id']}/channels",
        header=[f"Authorization: token {token}"], timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        out, error = [], None
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                break
    finally:
        ws.close()
        _request(base, token, "DELETE", f"/api/kernels/{kernel['id']}")
    if error:
        raise RuntimeError(error)
    return "".join(out)
