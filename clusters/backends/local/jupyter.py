"""Real JupyterLab servers on this machine, one process per notebook, bound to loopback.

A notebook's process is started in its own session so it outlives the worker task that
started it (like a pod outlives the API call); `runtime.json` in its folder records how to
find it again.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..base import NotebookSpec, NotebookState, token_digest

ANNOUNCEMENTS_PLUGIN = "@jupyterlab/apputils-extension:announcements"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_runtime(folder: Path) -> dict:
    """How to find a notebook's server (pid, port), or {} when none was started."""
    try:
        return json.loads((folder / "runtime.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _ours(pid: int, port: int) -> bool:
    """The pid is still our Jupyter server (and not a process that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--ServerApp.port={port}".encode() in cmdline


def answers(port: int, token: str) -> bool:
    """The server on `port` answers its API with this token."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(spec: NotebookSpec, folder: Path, root_dir: Path) -> NotebookState:
    """Start the server unless it already runs; the state says how far it got."""
    runtime = read_runtime(folder)
    if runtime and _ours(runtime["pid"], runtime["port"]):
        if runtime.get("token_sha256") == token_digest(spec.token):
            return state(spec, folder)
        stop(folder)  # a new token: the server that accepts the old one must go
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_dir.mkdir(parents=True, exist_ok=True)
    # JupyterLab opens without its "receive official Jupyter news?" pop-up: the
    # announcements plugin is off in this server's own config folder (JUPYTER_CONFIG_DIR).
    labconfig = folder / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {ANNOUNCEMENTS_PLUGIN: True}}
    ))
    port = free_port()
    env = {
        **os.environ,
        # The token stays out of the command line, where `ps` would show it to everyone.
        "JUPYTER_TOKEN": spec.token,
        "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
        "JUPYTER_CONFIG_DIR": str(folder / "config"),
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root_dir}",
        # No calls out to PyPI or the JupyterLab news feed from a sandbox.
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")  # containers and CI run as root; Jupyter refuses else
    with open(folder / "jupyter.log", "ab") as log:
        process = subprocess.Popen(
            command, cwd=root_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    (folder / "runtime.json").write_text(
        json.dumps({"pid": process.pid, "port": port, "started": time.time(),
                    "token_sha256": token_digest(spec.token)})
    )
    return NotebookState("deploying", "starting", "Starting JupyterLab.",
                         detail=f"pid {process.pid}, port {port}")


def state(spec: NotebookSpec, folder: Path) -> NotebookState:
    runtime = read_runtime(folder)
    if not runtime:
        return NotebookState("gone", "", "The notebook's server is not there.")
    pid, port = runtime["pid"], runtime["port"]
    if not _ours(pid, port):
        log = folder / "jupyter.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        return NotebookState("failed", "starting", "JupyterLab stopped.", detail=tail)
    if answers(port, spec.token):
        return NotebookState("running", "reachable", "Running.",
                             url=f"http://127.0.0.1:{port}/lab", detail=f"pid {pid}, port {port}")
    return NotebookState("deploying", "starting", "Starting JupyterLab.",
                         detail=f"pid {pid}, port {port}")


def stop(folder: Path, grace_s: float = 5.0) -> None:
    """Stop the server (its whole process group) and forget it."""
    runtime = read_runtime(folder)
    if runtime and _ours(runtime["pid"], runtime["port"]):
        pid = runtime["pid"]
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _ours(pid, runtime["port"]):
                _reap(pid)
                time.sleep(0.05)
            if _ours(pid, runtime["port"]):
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)
    (folder / "runtime.json").unlink(missing_ok=True)


def _reap(pid: int) -> None:
    # When this process started the server, collect its exit so no zombie keeps the pid.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
