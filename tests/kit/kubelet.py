"""The kubelet the emulator lacks, for the pods a test lets it run (the browser shell's).

- **Scheduling and start:** a pod created through the API with the label this kubelet
  watches is bound to ``kit-node`` and reported Running and Ready ``start_delay`` seconds
  later. An image with a substring of ``failures`` reports ``ErrImagePull`` in the kubelet's
  own words, and never starts.
- **exec** (WebSocket, ``v5.channel.k8s.io`` and ``v4``): the command runs in a *container*
  of its own, off the portal's filesystem by construction: new mount and PID namespaces
  whose root holds only this machine's ``/usr`` (read-only: the "image"), a minimal ``/etc``,
  ``/dev`` and ``/proc``, and the pod's ``emptyDir`` volumes (kept per pod between execs);
  nothing of ``/work``, ``/tmp``, ``/root`` or ``/var``. It runs as the pod's
  ``runAsUser``/``runAsGroup`` with no supplementary groups and ``no_new_privs``, with the
  pod's environment only. With ``tty=true`` it gets a pseudo-terminal (resize on channel 4);
  otherwise pipes, and v5's close of stdin (channel 255). The exit comes on channel 3 as the
  kubelet's Status.

The network is the machine's: the pod reaches the portal's proxy on loopback, as a pod
reaches a portal's URL. Needs root (mount namespaces); ``available()`` says.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

SETUP = r"""
set -e
R=$1; shift
mount --make-rprivate /
mount --bind /usr "$R/usr"; mount -o remount,bind,ro "$R/usr"
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=755,size=1m kitdev "$R/dev"
for d in null zero random urandom tty; do : > "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir "$R/dev/pts"; mount --bind /dev/pts "$R/dev/pts"; ln -s pts/ptmx "$R/dev/ptmx"
while [ "$1" != "--" ]; do mount --bind "$1" "$R$2"; shift 2; done; shift
exec chroot "$R" "$@"
"""


def available() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "chroot", "setpriv"))


class Kubelet:
    """Plays the kubelet for the emulator's pods labelled ``label`` (``key=value``)."""

    def __init__(self, emu: Any, root: Path, *, label: str = "app.kubernetes.io/name=gpupaas-shell",
                 start_delay: float = 0.2) -> None:
        self.emu = emu
        self.root = root
        self.label = tuple(label.split("=", 1))
        self.start_delay = start_delay
        self.failures: set[str] = set()  # image substrings that cannot be pulled
        self.execs: list[dict[str, Any]] = []  # what ran: pod, command, tty, user
        self.processes: set[subprocess.Popen] = set()
        emu.add_hook(self._on_write)
        emu.kubelet = self

    def close(self) -> None:
        for process in list(self.processes):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        self.emu.kubelet = None

    def runs(self, pod: dict[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return labels.get(self.label[0]) == self.label[1]

    # -- scheduling and start

    def _on_write(self, store: Any, event: Any) -> None:
        if (event.type == "ADDED" and event.info.plural == "pods" and event.info.group == ""
                and self.runs(event.object)):
            store._scheduler.call_later(
                self.start_delay, lambda: self._start(event.namespace, event.name))

    def _start(self, namespace: str, name: str) -> None:
        pod = self.emu.get("Pod", name, namespace)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        containers = pod["spec"]["containers"]
        if any(bad in c["image"] for c in containers for bad in self.failures):
            image = containers[0]["image"]
            self._patch(namespace, name, {"spec": {"nodeName": "kit-node"}}, {
                "phase": "Pending", "containerStatuses": [{
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                    "restartCount": 0, "state": {"waiting": {
                        "reason": "ErrImagePull",
                        "message": f'failed to pull and unpack image "{image}": failed to '
                                   "resolve reference: not found"}}} for c in containers]})
            return
        self._patch(namespace, name, {"spec": {"nodeName": "kit-node"}}, {
            "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.1.0.9", "startTime": now,
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                           for t in ("PodScheduled", "Initialized", "ContainersReady",
                                     "Ready")],
            "containerStatuses": [{
                "name": c["name"], "image": c["image"], "imageID": c["image"], "ready": True,
                "started": True, "restartCount": 0,
                "state": {"running": {"startedAt": now}}} for c in containers]})

    def _patch(self, namespace: str, name: str, patch: dict[str, Any],
               status: dict[str, Any]) -> None:
        """The binding, then the status through its subresource, as a kubelet writes it."""
        self.emu.patch_object("Pod", name, patch, namespace)
        info = self.emu.catalog.resolve("Pod")
        self.emu.store.patch(info, namespace, name, "application/merge-patch+json",
                             {"status": status}, subresource="status")

    # -- exec

    def _container_root(self, pod: dict[str, Any]) -> tuple[Path, list[str]]:
        """The pod's root folder and its volumes' bind mounts (source, target pairs)."""
        meta = pod["metadata"]
        base = self.root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        root = base / "root"
        spec = pod["spec"]
        user = (spec.get("securityContext") or {}).get("runAsUser", 0)
        group = (spec.get("securityContext") or {}).get("runAsGroup", user)
        if not root.exists():
            for folder in ("usr", "proc", "dev", "etc"):
                (root / folder).mkdir(parents=True)
            for link in ("bin", "lib", "lib64", "sbin"):
                (root / link).symlink_to(f"usr/{link}")
            (root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\n"
                                             f"shell:x:{user}:{group}::/home/shell:/bin/sh\n")
            (root / "etc/group").write_text(f"root:x:0:\nshell:x:{group}:\n")
            (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
        mounts: list[str] = []
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in spec["containers"][0].get("volumeMounts") or []:
            if "emptyDir" not in volumes.get(mount["name"], {}):
                continue
            source = base / "volumes" / mount["name"]
            if not source.exists():
                source.mkdir(parents=True)
                os.chown(source, user, group)
            target = root / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            mounts += [str(source), "/" + mount["mountPath"].lstrip("/")]
        return root, mounts

    def exec(self, ws: Any, pod: dict[str, Any], query: dict[str, list[str]]) -> None:
        """Serve one exec on `ws` (the emulator's WebSocket connection, a
        ``websockets.sync.connection.Connection``) until the command ends; the emulator
        closes it."""
        flag = lambda name: (query.get(name) or ["false"])[-1] == "true"  # noqa: E731
        tty, stdin = flag("tty"), flag("stdin")
        command = query.get("command") or []
        container = pod["spec"]["containers"][0]
        context = pod["spec"].get("securityContext") or {}
        user = context.get("runAsUser", 0)
        group = context.get("runAsGroup", user)
        env = [f"{e['name']}={e.get('value', '')}" for e in container.get("env") or []]
        env.insert(0, "PATH=/usr/local/bin:/usr/bin:/bin")
        root, mounts = self._container_root(pod)
        self.execs.append({"pod": pod["metadata"]["name"], "command": command, "tty": tty,
                           "user": user})
        argv = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "/bin/sh", "-c",
                SETUP, "kit-container", str(root), *mounts, "--", "/usr/bin/setpriv",
                f"--reuid={user}", f"--regid={group}", "--clear-groups", "--no-new-privs",
                "--", "/usr/bin/env", "-i", *env, *command]
        def send(payload: bytes) -> None:
            with contextlib.suppress(ConnectionClosed, OSError):
                ws.send(payload)

        if tty:
            master, slave = os.openpty()

            def take_terminal() -> None:
                os.setsid()
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

            process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                       preexec_fn=take_terminal, close_fds=True)
            os.close(slave)
            outputs = {master: 1}
            writer = master
        else:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       close_fds=True)
            outputs = {process.stdout.fileno(): 1, process.stderr.fileno(): 2}
            writer = process.stdin.fileno() if stdin else -1
        self.processes.add(process)

        def from_client() -> None:  # pings and the closing handshake are the library's
            with contextlib.suppress(ConnectionClosed, OSError):
                for message in ws:
                    data = message.encode() if isinstance(message, str) else message
                    if not data:
                        continue
                    channel, data = data[0], data[1:]
                    if channel == 0 and writer >= 0:
                        with contextlib.suppress(OSError):
                            os.write(writer, data)
                    elif channel == 4 and tty:
                        with contextlib.suppress(ValueError, KeyError, OSError):
                            size = json.loads(data)
                            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack(
                                "HHHH", int(size["Height"]), int(size["Width"]), 0, 0))
                    elif channel == 255 and data[:1] == b"\x00" and not tty and stdin:
                        with contextlib.suppress(OSError):
                            process.stdin.close()
            with contextlib.suppress(ProcessLookupError):  # the client went away, or closed
                process.kill()

        threading.Thread(target=from_client, daemon=True, name="kubelet-exec-in").start()
        open_fds = dict(outputs)
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [], 0.5)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the terminal's last process ended
                    data = b""
                if not data:
                    del open_fds[fd]
                    continue
                send(bytes([open_fds[fd]]) + data)
        code = process.wait()
        self.processes.discard(process)
        if tty:
            os.close(master)
        if code == 0:
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": f"command terminated with non-zero exit code: exit status {code}",
                      "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        send(b"\x03" + json.dumps(status).encode())
