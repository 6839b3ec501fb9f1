"""The processes behind local sandboxes' browser shells, on the portal's machine.

A shell is one process in a pseudo-terminal whose master end the WebSocket consumer
(access/consumers.py) relays to xterm.js in the browser: a login shell in the sandbox, as the
workspace's own OS user (the local backend's `terminal()`), only where the portal runs as
root. Kubernetes instances' shells run in a pod of the instance instead (access/shellpod.py).

Every shell holds a *slot*, one of SHELL_MAX_SESSIONS on the machine (at most
SHELL_PER_USER per portal user): a lock file leased for as long as the shell runs (a crashed
web process releases it).

No shell gets anything of the portal's environment: the process starts with the handful of
variables the backend built.
"""

import contextlib
import fcntl
import json
import os
import signal
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO

import psutil
from django.conf import settings

from clusters.backends import BackendError, Terminal
from clusters.backends.local import environments, tenants


class ShellUnavailable(Exception):
    """No shell can start here, for a reason the user is told."""


@dataclass
class Slot:
    number: int
    lock: IO[str]  # flock held while the shell runs; holds the owner's user id


@dataclass
class ShellProcess:
    popen: subprocess.Popen
    fd: int  # the pseudo-terminal's master end, non-blocking
    slot: Slot | None = None
    ended: bool = field(default=False)


@cache
def _terminal_source() -> str:
    return (Path(__file__).parent / "terminal.py").read_text()


def shells_root() -> Path:
    """`.shells` beside the sandboxes, the slots' lock files."""
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
    for pid in psutil.pids():
        with contextlib.suppress(OSError):  # gone meanwhile
            if match(pid):
                pids.append(pid)
    return pids


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


def _lease_slot(*, owner: int) -> Slot:
    """One of SHELL_MAX_SESSIONS slots of this machine, for as long as the shell runs (its
    file lock; a crashed web process releases it), at most SHELL_PER_USER per portal user."""
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
        return Slot(number=number, lock=handle)
    except BaseException:
        for _, handle in free:
            handle.close()
        raise


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


def start_terminal(terminal: Terminal, *, owner: int) -> ShellProcess:
    """A backend's login shell (a local sandbox), set up by the same launcher; it holds a
    slot too, so the machine's and the user's caps count it."""
    slot = _lease_slot(owner=owner)
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
    slot.lock.seek(0)
    slot.lock.truncate()
    slot.lock.close()


def stop(process: ShellProcess) -> None:
    """End the shell and everything it started; free its slot."""
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
    # What it started in the background (its session).
    _kill_all(lambda pid: os.getsid(pid) == leader)
    if process.slot is not None:
        _release(process.slot)
