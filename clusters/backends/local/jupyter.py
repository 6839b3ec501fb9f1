"""Real JupyterLab servers on this machine, one process per notebook, bound to loopback.

A notebook's process is started in its own session so it outlives the worker task that
started it (like a pod outlives the API call). The portal keeps what it needs to find it
again (`runtime.json`, the log) in a control folder of its own that tenants cannot write,
and writes it *before* the process starts. Every server also carries a marker on its command
line naming its notebook, so a sweep over /proc finds servers nobody tracks any more.
"""

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from ..base import NotebookSpec, NotebookState, token_digest
from . import limits
from .environments import Environment
from .tenants import Tenant

MARKER = "--GpuPortal.notebook="

ANNOUNCEMENTS_PLUGIN = "@jupyterlab/apputils-extension:announcements"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_runtime(control: Path) -> dict:
    """How to find a notebook's server (pid, port), or {} when none was started."""
    try:
        return json.loads((control / "runtime.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def _ours(pid: int | None, server_id: str) -> bool:
    """The pid is still this notebook's server (and not a process that reused the pid)."""
    return bool(pid) and f"{MARKER}{server_id}" in _cmdline(pid)


def running_servers(scope: str) -> dict[str, int]:
    """{server id: pid} of every marked server whose id lies under `scope`."""
    found = {}
    prefix = f"{MARKER}{scope.rstrip('/')}/"
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info["cmdline"] or []:
            if arg.startswith(prefix):
                found[arg[len(MARKER):]] = proc.pid
    return found


def api(port: int, token: str, path: str, *, timeout: float = 5) -> Any:
    """The JSON answer of the server on `port` to `path` of its REST API, asked with this
    token."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def answers(port: int, token: str) -> bool:
    """The server on `port` answers its API with this token."""
    try:
        api(port, token, "/api/status", timeout=1)
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def clean_environment(*, spec: NotebookSpec, home: Path, env: Environment) -> dict[str, str]:
    """All a notebook's processes see: never the portal's own variables (database URL,
    secrets, broker)."""
    return {
        # The token stays out of the command line, where `ps` would show it to everyone.
        "JUPYTER_TOKEN": spec.token,
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
        "HOME": str(home),
        "PATH": f"{env.bin}:/usr/local/bin:/usr/bin:/bin",
        # The OS user's login shell is nologin; JupyterLab terminals need a real one.
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
    }


def start(spec: NotebookSpec, *, control: Path, home: Path, env: Environment,
          tenant: Tenant | None, server_id: str) -> NotebookState:
    """Start the server unless it already runs; the state says how far it got."""
    runtime = read_runtime(control)
    if runtime and _ours(runtime.get("pid"), server_id):
        if runtime.get("token_sha256") == token_digest(spec.token):
            return state(spec, control, server_id)
        stop(control, server_id)  # a new token: the server that accepts the old one must go
    work = prepare(control, home, tenant)
    quiet_lab(env)
    port = free_port()
    command = [
        str(env.python), "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--ServerApp.root_dir={work}",
        # No calls out to PyPI or the JupyterLab news feed from a sandbox.
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
        f"{MARKER}{server_id}",
    ]
    if tenant is None and os.geteuid() == 0:
        command.append("--allow-root")  # single-user mode as root; Jupyter refuses else
    # Tracked before it starts: whatever happens next, cleanup knows where to look.
    _write_runtime(control, {"pid": None, "port": port, "started": time.time()})
    ids = {"user": tenant.uid, "group": tenant.gid, "extra_groups": []} if tenant else {}
    environment = clean_environment(spec=spec, home=home, env=env)
    if limits.enforced():
        # Held by its own cgroups from its first instruction; it becomes the tenant there.
        command = limits.confine(
            command, name=limits_name(server_id), uid=tenant.uid if tenant else None,
            gid=tenant.gid if tenant else None, path=environment["PATH"],
            limits=limits.for_resources(cpu=spec.cpu, memory_gib=spec.memory_gib,
                                        gpus=spec.gpu_indices))
        ids = {}
    with open(control / "jupyter.log", "ab") as log:
        process = subprocess.Popen(
            command, cwd=work, env=environment,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, umask=0o077, **ids,
        )
    _write_runtime(control, {"pid": process.pid, "port": port, "started": time.time(),
                             "token_sha256": token_digest(spec.token)})
    return NotebookState("deploying", "starting", "Starting JupyterLab.",
                         detail=f"pid {process.pid}, port {port}")


def prepare(control: Path, home: Path, tenant: Tenant | None) -> Path:
    """The portal's control folder for a server, and the sandbox's work folder (the
    tenant's) it works in, made when missing; returns the work folder."""
    control.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = home / "work"
    if not work.exists():
        work.mkdir(mode=0o700)
        if tenant is not None:
            os.chown(work, tenant.uid, tenant.gid, follow_symlinks=False)
    return work


def quiet_lab(env: Environment) -> None:
    """JupyterLab opens without its "receive official Jupyter news?" pop-up: the
    announcements plugin is off in the environment's own config folder (sys.prefix/etc/jupyter,
    which every server of the environment reads), kept by root, readable by all."""
    labconfig = env.path / "etc" / "jupyter" / "labconfig"
    if (labconfig / "page_config.json").exists():
        return
    for folder in (labconfig.parent.parent, labconfig.parent, labconfig):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
    scratch = labconfig / f"page_config.json.{os.getpid()}"
    scratch.write_text(json.dumps({"disabledExtensions": {ANNOUNCEMENTS_PLUGIN: True}}))
    scratch.chmod(0o644)
    scratch.replace(labconfig / "page_config.json")


def _write_runtime(control: Path, runtime: dict) -> None:
    scratch = control / "runtime.json.tmp"
    scratch.write_text(json.dumps(runtime))
    scratch.replace(control / "runtime.json")


def state(spec: NotebookSpec, control: Path, server_id: str) -> NotebookState:
    runtime = read_runtime(control)
    if not runtime:
        return NotebookState("gone", "", "The notebook's server is not there.")
    pid, port = runtime.get("pid"), runtime["port"]
    if not _ours(pid, server_id):
        log = control / "jupyter.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        if f"port {port} is not available" in tail:
            # Another process took the free port between free_port() and the server's
            # bind: "gone" has the worker start it again, on another port.
            return NotebookState("gone", "", "Its port was taken as it started; starting "
                                 "it again.", detail=tail)
        return NotebookState("failed", "starting", "JupyterLab stopped.", detail=tail)
    if answers(port, spec.token):
        return NotebookState("running", "reachable", "Running.",
                             url=f"http://127.0.0.1:{port}/lab", detail=f"pid {pid}, port {port}")
    return NotebookState("deploying", "starting", "Starting JupyterLab.",
                         detail=f"pid {pid}, port {port}")


def stop(control: Path, server_id: str, grace_s: float = 5.0) -> None:
    """Stop the server with its kernels and terminals, and forget it."""
    pid = read_runtime(control).get("pid")
    if _ours(pid, server_id):
        stop_pid(pid, grace_s)
    # A server started but not yet recorded (the portal died in between) has its marker.
    for found, other in running_servers(server_id.rsplit("/", 1)[0]).items():
        if found == server_id:
            stop_pid(other, grace_s)
    (control / "runtime.json").unlink(missing_ok=True)
    limits.release(limits_name(server_id))


def limits_name(server_id: str) -> str:
    """The cgroups of one notebook server: unique per sandbox root and notebook."""
    return "nb-" + hashlib.sha256(server_id.encode()).hexdigest()[:20]


def stop_pid(pid: int, grace_s: float = 5.0) -> None:
    """TERM lets Jupyter shut its kernels down; whatever of its tree is left then is killed
    (kernels and terminals run in sessions of their own, out of the server's group)."""
    tree = _descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid):
        _reap(pid)
        time.sleep(0.05)
    for p in [pid, *tree]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    _reap(pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _reap(pid: int) -> None:
    # When this process started the server, collect its exit so no zombie keeps the pid.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
