"""Catalogue services (TensorBoard, MLflow…) on this machine: one process per service, in
the instance's sandbox, as the workspace's OS user, held by the same limits as notebooks.

Unlike JupyterLab these apps have no login of their own, so none may be reachable on the
machine's loopback. Each runs in a network namespace of its own behind `relay.py`, which
the portal reaches through a Unix socket in its control folder; the portal's app proxy
decides every request (`access.origins`). Where the portal is not root (single-user mode: one
OS user for everything) the namespace is skipped and the relay alone remains.

Tracking is jupyter.py's: `runtime.json` in the control folder written before the start,
and the marker on the relay's command line for the orphan sweep."""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path

from ..base import BackendError, NotebookState, ServiceSpec
from . import jupyter, limits
from .environments import Environment
from .tenants import Tenant

RELAY = Path(__file__).with_name("relay.py")
PLACEHOLDERS = ("port", "home", "work")


def command_line(template: str, *, port: int, home: Path, work: Path) -> list[str]:
    """The profile's command with its placeholders filled in; ValueError names what is
    wrong (the admin form shows it)."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"not a command line: {exc}") from None
    if not words:
        raise ValueError("empty.")
    values = {"port": port, "home": home, "work": work}
    try:
        return [word.format(**values) for word in words]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"unknown placeholder {exc}; use {{port}}, {{home}} or {{work}}."
                         ) from None


class UnixConnection(HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("service", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def answers(path: str, health: str) -> bool:
    """The service answers its health path through the relay (anything but a 5xx)."""
    connection = UnixConnection(path, timeout=2)
    try:
        connection.request("GET", health or "/", headers={"Host": "service"})
        return connection.getresponse().status < 500
    except (OSError, ValueError):
        return False
    finally:
        connection.close()


def socket_path(control: Path) -> Path:
    return control / "service.sock"


def start(spec: ServiceSpec, *, control: Path, home: Path, env: Environment,
          tenant: Tenant | None, server_id: str) -> NotebookState:
    """Start the service unless it already runs; the state says how far it got."""
    runtime = jupyter.read_runtime(control)
    if runtime and jupyter._ours(runtime.get("pid"), server_id):
        return state(spec, control, server_id)
    work = jupyter.prepare(control, home, tenant)
    if len(str(socket_path(control)).encode()) > 100:  # AF_UNIX paths end at 108 bytes
        raise BackendError(
            "The portal's sandbox folder is too deep for a service's socket: set "
            "LOCAL_SANDBOX_ROOT to a shorter path.", detail=str(socket_path(control)))
    port = jupyter.free_port()
    argv = command_line(spec.command, port=port, home=home, work=work)
    if "/" not in argv[0] and (env.bin / argv[0]).exists():
        argv[0] = str(env.bin / argv[0])
    environment = {
        "HOME": str(home), "PATH": f"{env.bin}:/usr/local/bin:/usr/bin:/bin",
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
        "LANG": "C.UTF-8",
    }
    ids: list[str] = []
    if limits.enforced():
        argv = limits.confine(
            argv, name=jupyter.limits_name(server_id), uid=tenant.uid if tenant else None,
            gid=tenant.gid if tenant else None, path=environment["PATH"],
            limits=limits.for_resources(cpu=spec.cpu, memory_gib=spec.memory_gib,
                                        gpus=spec.gpu_indices))
    elif tenant is not None:
        ids = ["--uid", str(tenant.uid), "--gid", str(tenant.gid)]
    command = [sys.executable, str(RELAY), f"{jupyter.MARKER}{server_id}",
               str(socket_path(control)), str(port), *ids, "--", *argv]
    if os.geteuid() == 0:  # its own network: nothing else on this machine reaches the port
        command = [shutil.which("unshare", path=limits.SYSTEM_PATH) or "unshare", "--net",
                   "--", *command]
    jupyter._write_runtime(control, {"pid": None, "port": port, "started": time.time()})
    with open(control / "jupyter.log", "ab") as log:
        process = subprocess.Popen(
            command, cwd=work, env=environment, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, umask=0o077)
    jupyter._write_runtime(control, {"pid": process.pid, "port": port, "started": time.time(),
                                     "socket": str(socket_path(control))})
    return NotebookState("deploying", "starting", f"Starting {spec.profile}.",
                         detail=f"pid {process.pid}, port {port} in its own network")


def state(spec: ServiceSpec, control: Path, server_id: str) -> NotebookState:
    runtime = jupyter.read_runtime(control)
    if not runtime:
        return NotebookState("gone", "", "The service's process is not there.")
    pid = runtime.get("pid")
    if not jupyter._ours(pid, server_id):
        log = control / "jupyter.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        return NotebookState("failed", "starting", f"{spec.profile} stopped.", detail=tail)
    if answers(str(socket_path(control)), spec.health_path):
        return NotebookState("running", "reachable", "Running.", detail=f"pid {pid}")
    return NotebookState("deploying", "starting", f"Starting {spec.profile}.",
                         detail=f"pid {pid}")
