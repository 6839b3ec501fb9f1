"""What a local notebook or shell may use of the machine, enforced by the kernel.

As systemdspawner and The Littlest JupyterHub do with systemd units, every JupyterLab server
(with its kernels and terminals) and every sandbox shell runs in cgroups of its own, made
here directly in the cgroup filesystem (this needs root, which isolated mode has anyway):

- memory: the notebook's (or the instance's, for a shell) memory; a process past it is
  killed by the kernel's OOM killer inside that cgroup, never a neighbour or the portal;
- CPU: a CFS quota of the notebook's cores;
- processes: at most LOCAL_TASKS_MAX tasks (threads count), so a fork bomb stops there;
- devices (cgroup v1): nothing but the usual character devices, the NVIDIA control devices
  and the instance's own `/dev/nvidiaN`: unsetting CUDA_VISIBLE_DEVICES does not reach
  another instance's GPU; on v1 and v2 alike, the other GPUs' `/dev/nvidiaN` are also
  covered by /dev/null in its mount namespace;
- and, in mount and IPC namespaces of its own, a private /tmp, /var/tmp, /dev/shm and SysV
  IPC.

The process is started by a root shell that joins the cgroups, unshares its mounts, mounts
the private folders and only then drops to the workspace's OS user (`setpriv`, with
no_new_privs), so nothing the tenant runs ever lived outside them. cgroup v1 (separate
hierarchies, as on this project's machines) enforces all of it; v2 enforces memory, CPU and
processes, and GPUs through the mount namespace only (its device controller needs eBPF,
which this does not load); anywhere else the portal says "limits are not enforced on this
machine".
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP = "gpupaas"
NVIDIA_MAJOR = 195
# What any process needs (null, zero, full, random, urandom, tty, console, ptmx, ptys), and
# the NVIDIA driver's control devices (nvidiactl 255, nvidia-modeset 254); the majors of
# nvidia-uvm and nvidia-caps are read from /proc/devices.
BASE_DEVICES = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",
                f"c {NVIDIA_MAJOR}:255 rwm", f"c {NVIDIA_MAJOR}:254 rwm")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Runs as root with the system's PATH (the tenant's, $8, is given back at the end): joins the
# cgroups ($1, colon-separated cgroup.procs files), unshares its mounts and SysV IPC, gives
# itself a fresh /tmp, /var/tmp and /dev/shm (the portal's own folders that live under them,
# $7, are bound into the fresh one before it is moved into place), hides the GPU device
# nodes of other instances under /dev/null ($9), then becomes the tenant ($2:$3).
CONFINE = r"""
set -ef
files=$1; uid=$2; gid=$3; unshare=$4; setpriv=$5; mount=$6; keep=$7; path=$8; hide=$9
shift 9
IFS=:
for f in $files; do echo $$ > "$f"; done
unset IFS
exec "$unshare" --mount --ipc --propagation private -- /bin/sh -c '
set -ef
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount=$1; setpriv=$2; uid=$3; gid=$4; keep=$5; path=$6; hide=$7; shift 7
mask=$(umask)
umask 022
for d in /tmp /var/tmp; do
  [ -d "$d" ] || continue
  "$mount" -t tmpfs -o mode=1777,nosuid,nodev tmpfs /mnt
  IFS=:
  for k in $keep; do
    case "$k" in "$d"/*) ;; *) continue ;; esac
    [ -d "$k" ] || continue
    mkdir -p "/mnt/${k#"$d"/}"
    "$mount" --bind "$k" "/mnt/${k#"$d"/}"
  done
  unset IFS
  "$mount" --move /mnt "$d"
done
[ -d /dev/shm ] && "$mount" -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
IFS=:
for n in $hide; do
  [ -c "$n" ] && "$mount" --bind /dev/null "$n"
done
unset IFS
umask "$mask"
unset PWD OLDPWD  # the shell adds them; the process gets exactly its own environment
PATH=$path
export PATH
if [ "$uid" = "-" ]; then exec "$@"; fi
exec "$setpriv" --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs -- "$@"
' confine "$mount" "$setpriv" "$uid" "$gid" "$keep" "$path" "$hide" "$@"
"""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu: float  # cores
    tasks: int
    gpus: tuple[int, ...]  # the /dev/nvidiaN this process may open


def for_resources(*, cpu: float, memory_gib: float, gpus: tuple[int, ...]) -> Limits:
    return Limits(memory_bytes=int(memory_gib * 2**30), cpu=float(cpu),
                  tasks=settings.LOCAL_TASKS_MAX, gpus=tuple(gpus))


def version() -> str:
    """'v1', 'v2', or '' where this process cannot make cgroups (not root, none mounted)."""
    import os

    if os.geteuid() != 0 or not settings.LOCAL_LIMITS:
        return ""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2"
    if all((CGROUP_ROOT / c / "cgroup.procs").exists() for c in ("memory", "cpu", "pids")):
        return "v1"
    return ""


def tools() -> tuple[str, str, str] | None:
    found = tuple(shutil.which(name, path=SYSTEM_PATH) for name in ("unshare", "setpriv",
                                                                       "mount"))
    return found if all(found) else None  # type: ignore[return-value]


def enforced() -> bool:
    return bool(version()) and tools() is not None


def mode_line() -> str:
    """One line for `make run`, the admin and the instance page."""
    kind = version()
    if not kind or tools() is None:
        return ("Limits are not enforced on this machine: a notebook's memory, CPU, processes "
                "and GPUs are not capped (needs root, cgroups and util-linux).")
    return (f"Limits enforced per notebook and shell (cgroup {kind}): memory, CPU, processes, "
            "other instances' GPU devices, and a private /tmp.")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:200]


def _groups(name: str) -> dict[str, Path]:
    """The cgroup folders of one confined process tree, by controller ('' for v2)."""
    leaf = Path(GROUP) / _safe(name)
    if version() == "v2":
        return {"": CGROUP_ROOT / leaf}
    return {c: CGROUP_ROOT / c / leaf for c in ("memory", "cpu", "pids", "devices")
            if (CGROUP_ROOT / c).is_dir()}


def _extra_majors() -> list[int]:
    """nvidia-uvm's and nvidia-caps' majors, where the driver is loaded."""
    majors = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/devices").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] in ("nvidia-uvm", "nvidia-caps") \
                    and parts[0].isdigit():
                majors.append(int(parts[0]))
    return majors


def prepare(name: str, limits: Limits) -> list[Path]:
    """Make (or reset) the cgroups of `name` with `limits`; the cgroup.procs files a process
    joins to be held by them."""
    groups = _groups(name)
    if "" in groups:  # v2: one folder, the controllers enabled down to it
        parent = groups[""].parent
        parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (CGROUP_ROOT / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        leaf = groups[""]
        leaf.mkdir(exist_ok=True)
        (leaf / "memory.max").write_text(str(limits.memory_bytes))
        (leaf / "cpu.max").write_text(f"{max(int(limits.cpu * 100_000), 1000)} 100000")
        (leaf / "pids.max").write_text(str(limits.tasks))
        return [leaf / "cgroup.procs"]
    for folder in groups.values():
        folder.parent.mkdir(exist_ok=True)
        folder.mkdir(exist_ok=True)
    (groups["memory"] / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
    (groups["cpu"] / "cpu.cfs_period_us").write_text("100000")
    (groups["cpu"] / "cpu.cfs_quota_us").write_text(str(max(int(limits.cpu * 100_000), 1000)))
    (groups["pids"] / "pids.max").write_text(str(limits.tasks))
    if "devices" in groups:
        devices = groups["devices"]
        (devices / "devices.deny").write_text("a")  # default deny, then what is needed
        allowed = [*BASE_DEVICES, *(f"c {m}:* rwm" for m in _extra_majors()),
                   *(f"c {NVIDIA_MAJOR}:{int(i)} rwm" for i in limits.gpus)]
        for rule in allowed:
            (devices / "devices.allow").write_text(rule)
    return [folder / "cgroup.procs" for folder in groups.values()]


def confine(argv: list[str], *, name: str, limits: Limits, uid: int | None,
            gid: int | None, path: str) -> list[str]:
    """The command that runs `argv` held by the cgroups of `name`, with private temporary
    folders, as `uid`:`gid` (None: as the caller), with `path` as its PATH (the command's
    environment's PATH is not used before then: it may name the tenant's folders). Start it
    as root."""
    found = tools()
    assert found is not None
    procs = prepare(name, limits)
    # The portal's folders the process works in, where they live under a private folder.
    keep = ":".join(str(Path(p).resolve()) for p in (
        settings.LOCAL_SANDBOX_ROOT, settings.LOCAL_ENV_ROOT))
    return ["/bin/sh", "-c", CONFINE, "confine", ":".join(str(p) for p in procs),
            "-" if uid is None else str(uid), "-" if gid is None else str(gid), *found,
            keep, path, ":".join(other_gpus(limits.gpus)), *argv]


def other_gpus(allowed: tuple[int, ...]) -> list[str]:
    """The GPU device nodes of this machine that are not the process's (`/dev/nvidiaN`)."""
    return sorted(str(node) for node in Path("/dev").glob("nvidia*")
                  if re.fullmatch(r"nvidia\d+", node.name)
                  and int(node.name[6:]) not in allowed)


def release(name: str) -> None:
    """Remove the cgroups of `name` once nothing runs in them (a busy one stays)."""
    for folder in _groups(name).values():
        with contextlib.suppress(OSError):
            folder.rmdir()
