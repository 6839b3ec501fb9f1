"""The processes behind browser shells, on the portal's machine.

A shell is one process in a pseudo-terminal whose master end the WebSocket consumer
(access/consumers.py) relays to xterm.js in the browser:

- *Kubernetes instances*: the kubectl REPL of access/terminal.py, with a kubeconfig whose
  server is this web process's own loopback listener for the proxy (access/loopback.py) and
  whose token is a session token issued like a downloaded kubeconfig's: the same identity,
  scope and audit.
- *Local instances*: a login shell in the sandbox, as the workspace's own OS user (the local
  backend's `terminal()`).

Every shell holds a *slot*, one of SHELL_MAX_SESSIONS on the machine (at most
SHELL_PER_USER per portal user): a folder `<LOCAL_SANDBOX_ROOT>/.shells/<n>/` leased with a
file lock for as long as the shell runs (a crashed web process releases it). Where the
portal runs as root, a kubectl shell's slot also has an OS user of its own
(`<LOCAL_USER_PREFIX>sh<n>`, created on demand like the workspaces' users): two shells never
share files or processes, and everything a slot's user runs is ended when the shell closes.
Elsewhere kubectl shells run as the portal's own user, still with a clean environment, the
limits and the argument filter.

No shell gets anything of the portal's environment: the process starts with a handful of
variables built here.
"""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO

import yaml
from django.conf import settings

from clusters.backends import BackendError, Terminal
from clusters.backends.local import environments, tenants

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class ShellUnavailable(Exception):
    """No shell can start here, for a reason the user is told."""


@dataclass
class Slot:
    number: int
    lock: IO[str]  # flock held while the shell runs; holds the owner's user id
    folder: Path
    user: tenants.Tenant | None = None  # its OS user, for a kubectl shell as root


@dataclass
class ShellProcess:
    popen: subprocess.Popen
    fd: int  # the pseudo-terminal's master end, non-blocking
    slot: Slot | None = None
    ended: bool = field(default=False)


@cache
def _terminal_source() -> str:
    return (Path(__file__).parent / "terminal.py").read_text()


def kubectl_path() -> str:
    """The kubectl shells run: SHELL_KUBECTL, else the system's."""
    path = settings.SHELL_KUBECTL or shutil.which("kubectl", path=SAFE_PATH)
    if not path or not os.access(path, os.X_OK):
        raise ShellUnavailable(
            "kubectl is not installed on the portal's machine, so the browser shell cannot "
            "run it; an administrator installs it (see the README).")
    return path


def shells_root() -> Path:
    """`.shells` beside the sandboxes: shell users may pass through, not list it."""
    base = Path(settings.LOCAL_SANDBOX_ROOT)
    root = base / ".shells"
    if os.geteuid() == 0:
        tenants.protect_portal_files()
        tenants.traversable(base)
        tenants.traversable(root)
    else:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def _processes(match) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if match(int(entry.name)):
                    pids.append(int(entry.name))
    return pids


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return -1


def _session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[3])  # state ppid pgrp session


def _kill_all(match) -> None:
    """SIGKILL every process `match(pid)` selects, again until none is left (one may fork
    while the first pass runs)."""
    me = os.getpid()
    for _ in range(20):
        pids = [p for p in _processes(match) if p != me]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _lease_slot(*, owner: int, with_user: bool) -> Slot:
    """One of SHELL_MAX_SESSIONS slots of this machine, for as long as the shell runs (its
    file lock; a crashed web process releases it), at most SHELL_PER_USER per portal user.
    `with_user`: the slot's own OS user, with nothing left running of an earlier holder."""
    root = shells_root()
    locks = root / ".locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    free: list[tuple[int, IO[str]]] = []
    held_by_owner = 0
    try:
        for number in range(settings.SHELL_MAX_SESSIONS):
            handle = open(locks / f"{number}.lock", "a+")  # noqa: SIM115 - held for the session
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                held_by_owner += handle.read().strip() == str(owner)
                handle.close()
                continue
            if free:
                handle.close()  # one free slot is enough
            else:
                free.append((number, handle))
        if held_by_owner >= settings.SHELL_PER_USER:
            raise ShellUnavailable(
                f"You have {held_by_owner} shell{'s' if held_by_owner != 1 else ''} open "
                "already; close one to open another.")
        if not free:
            raise ShellUnavailable(
                f"All {settings.SHELL_MAX_SESSIONS} browser shells of this server are in use; "
                "try again in a moment.")
        number, handle = free.pop()
        handle.seek(0)
        handle.truncate()
        handle.write(str(owner))
        handle.flush()
        folder = root / str(number)
        user = None
        if with_user:
            user = tenants.ensure_os_user(tenants.shell_username(number))
            # Whatever an earlier holder left (a crashed web process) goes first, so nothing
            # of theirs can touch what is written for the new one.
            _kill_all(lambda pid, uid=user.uid: _uid_of(pid) == uid)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o750)
        if user is not None:
            os.chown(folder, 0, user.gid)  # theirs to read, not to change
        return Slot(number=number, lock=handle, folder=folder, user=user)
    except BaseException:
        for _, handle in free:
            handle.close()
        raise


def _own_folder(path: Path, slot: Slot) -> Path:
    path.mkdir(mode=0o700)
    if slot.user is not None:
        os.chown(path, slot.user.uid, slot.user.gid)
    return path


def _spawn(config: dict, *, env: dict[str, str], cwd: str, uid: int | None,
           gid: int | None) -> tuple[subprocess.Popen, int]:
    master, child_end = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    ids = {"user": uid, "group": gid, "extra_groups": []} if uid is not None else {}
    try:
        popen = subprocess.Popen(
            [environments.interpreter(), "-I", "-S", "-c", _terminal_source(),
             json.dumps(config)],
            stdin=child_end, stdout=child_end, stderr=child_end, cwd=cwd, env=env,
            close_fds=True, umask=0o077, **ids,
        )
    except (OSError, subprocess.SubprocessError, BackendError) as exc:
        os.close(master)
        raise ShellUnavailable(f"The shell could not start: {exc}") from exc
    finally:
        os.close(child_end)
    os.set_blocking(master, False)
    return popen, master


def limits() -> dict[str, int]:
    return {
        "cpu_s": settings.SHELL_CPU_S, "memory_mb": settings.SHELL_MEMORY_MB,
        "file_mb": settings.SHELL_FILE_MB, "open_files": 1024,
    }


def start_kubectl(*, owner: int, instance: str, namespace: str, username: str, token: str,
                  server: str, ca_pem: bytes) -> ShellProcess:
    """The kubectl REPL for one session, with its own kubeconfig and folder."""
    kubectl = kubectl_path()
    slot = _lease_slot(owner=owner, with_user=os.geteuid() == 0)
    user = slot.user
    try:
        folder = slot.folder
        home = _own_folder(folder / "home", slot)
        files = _own_folder(folder / "files", slot)
        _own_folder(home / "tmp", slot)
        context = {"cluster": "portal", "user": username}
        if namespace:
            context["namespace"] = namespace
        kubeconfig = folder / "kubeconfig"
        fd = os.open(kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": instance,
                "clusters": [{"name": "portal", "cluster": {
                    "server": server, "certificate-authority-data": _b64(ca_pem)}}],
                "users": [{"name": username, "user": {"token": token}}],
                "contexts": [{"name": instance, "context": context}],
            }, f, sort_keys=False)
            if user is not None:
                os.fchown(f.fileno(), 0, user.gid)  # readable by the shell, not writable
        config = {
            "mode": "kubectl", "kubectl": kubectl, "scratch": str(files),
            "instance": instance, "namespace": namespace,
            "banner": banner(instance=instance, namespace=namespace, username=username),
            "limits": {**limits(), "processes": settings.SHELL_PROCESSES if user else 0},
        }
        env = {
            "PATH": SAFE_PATH, "HOME": str(home), "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8", "TERM": "xterm-256color", "KUBECONFIG": str(kubeconfig),
            # No editor: `kubectl edit` is refused, and anything else that would open one
            # fails instead of starting vi (which can run commands).
            "KUBE_EDITOR": "/bin/false", "EDITOR": "/bin/false",
            # Go reserves address space up front; these keep kubectl within the limits.
            "GOMAXPROCS": "2", "GOMEMLIMIT": f"{max(settings.SHELL_MEMORY_MB // 4, 64)}MiB",
        }
        popen, master = _spawn(config, env=env, cwd=str(files),
                               uid=user.uid if user else None, gid=user.gid if user else None)
    except BaseException:
        _release(slot)
        raise
    return ShellProcess(popen=popen, fd=master, slot=slot)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def banner(*, instance: str, namespace: str, username: str) -> str:
    where = f" (namespace {namespace})" if namespace else ""
    return (
        f"\x1b[1mKubernetes shell for {instance}{where}, as {username}.\x1b[0m\r\n"
        "Only kubectl runs here: kubectl get pods, kubectl logs -f <pod>, kubectl apply -f -"
        " (paste, then Ctrl-D).\r\n"
        "Tab completes, Up/Down recall, Ctrl-C stops a command. Type help for more.\r\n")


def start_terminal(terminal: Terminal, *, owner: int) -> ShellProcess:
    """A backend's login shell (a local sandbox), set up by the same launcher; it holds a
    slot too, so the machine's and the user's caps count it."""
    slot = _lease_slot(owner=owner, with_user=False)
    config = {"mode": "exec", "argv": list(terminal.argv), "limits": {"open_files": 4096}}
    try:
        popen, master = _spawn(config, env=terminal.env, cwd=terminal.cwd, uid=terminal.uid,
                               gid=terminal.gid)
    except BaseException:
        _release(slot)
        raise
    return ShellProcess(popen=popen, fd=master, slot=slot)


def resize(process: ShellProcess, *, rows: int, cols: int) -> None:
    rows, cols = max(1, min(int(rows), 500)), max(1, min(int(cols), 1000))
    with contextlib.suppress(OSError):
        fcntl.ioctl(process.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _release(slot: Slot) -> None:
    if slot.user is not None:
        _kill_all(lambda pid, uid=slot.user.uid: _uid_of(pid) == uid)
    shutil.rmtree(slot.folder, ignore_errors=True)
    slot.lock.seek(0)
    slot.lock.truncate()
    slot.lock.close()


def stop(process: ShellProcess) -> None:
    """End the shell and everything it started; remove its folder; free its slot."""
    if process.ended:
        return
    process.ended = True
    leader = process.popen.pid
    with contextlib.suppress(OSError):
        os.close(process.fd)  # the terminal hangs up: its session gets SIGHUP
    with contextlib.suppress(ProcessLookupError):
        os.kill(leader, signal.SIGHUP)
    try:
        process.popen.wait(timeout=2)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signal.SIGKILL)
        process.popen.wait(timeout=5)
    # What it started in the background (its session; for a slot, everything its user runs).
    _kill_all(lambda pid: _session_of(pid) == leader)
    if process.slot is not None:
        _release(process.slot)
