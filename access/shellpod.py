"""The browser shell of a Kubernetes instance: a pod in the instance itself, which the portal
only relays bytes to (OpenShift's Web Terminal is the model). Nothing a user types runs on the
portal's machine.

- **Where:** a namespace instance's namespace; the `default` namespace inside a virtual or
  dedicated cluster. One pod per user and instance (`gpupaas-shell-<user id>`), reused by
  every shell that user opens there, deleted SHELL_IDLE_TIMEOUT_S after the last one closed
  and at once when the user's access ends (access.services.sweep_shell_pods).
- **As whom:** every call here (create, read, delete, exec) goes with the instance's own
  credential, as the proxy forwards a user's request: a namespace instance's access account
  token, a virtual or dedicated cluster's own kubeconfig. The portal's account needs no
  right on pods.
- **What the pod holds:** Pod Security `restricted`, no GPU, small requests, no service
  account token (`automountServiceAccountToken: false`), a read-only root with an
  `emptyDir` home. Its kubeconfig is written into that home over `exec` stdin when a shell
  opens, never in a Secret, never in a command line: its server is the portal's proxy and its
  credential the shell's own session token, so every kubectl call is audited and refused
  the moment access ends; the token is revoked when the shell closes.
"""

import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import websockets
from django.conf import settings
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect

from clusters.backends.kubernetes.upstream import Upstream

CONTAINER = "shell"
HOME = "/home/shell"
CA_DIR = "/var/run/gpupaas"  # the cluster's CA (kube-root-ca.crt), for the fallback token
IN_CLUSTER = "https://kubernetes.default.svc"
KUBECONFIG = f"{HOME}/.kube/config"
SHELL_UID = 65532  # the "nonroot" user of distroless-style images
PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
# The pod's main process: nothing but waiting, so an exec always has a container to join,
# and SIGTERM ends it at once.
KEEPER = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"
# What "Open shell" runs: a login shell in the home folder (bash where the image has it).
LOGIN = ["sh", "-c", 'cd "$HOME"; command -v bash >/dev/null 2>&1 && exec bash -l; exec sh -l']
# Waiting reasons a kubelet reports for a container that will not start by itself.
STUCK = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
         "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff",
         "RunContainerError"}


class ShellPodError(Exception):
    """The shell's pod cannot start or be reached, in words for the user."""


def pod_name(user_id: int) -> str:
    return f"gpupaas-shell-{user_id}"


def manifest(*, name: str, namespace: str, image: str, user_id: int) -> dict[str, Any]:
    """The shell's pod, within Pod Security `restricted` and free of GPUs."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "gpupaas-shell",
                       "app.kubernetes.io/managed-by": "gpupaas",
                       "gpupaas.io/shell-user": str(user_id)},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 2,
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": SHELL_UID, "runAsGroup": SHELL_UID,
                "fsGroup": SHELL_UID, "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": CONTAINER,
                "image": image,
                "command": ["sh", "-c", KEEPER],
                "workingDir": HOME,
                "env": [{"name": "HOME", "value": HOME},
                        {"name": "KUBECONFIG", "value": KUBECONFIG},
                        {"name": "TERM", "value": "xterm-256color"}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"cpu": settings.SHELL_CPU_LIMIT,
                               "memory": settings.SHELL_MEMORY_LIMIT},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "home", "mountPath": HOME},
                                 {"name": "tmp", "mountPath": "/tmp"},
                                 {"name": "kube-ca", "mountPath": CA_DIR, "readOnly": True}],
            }],
            "volumes": [{"name": "home", "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                        # The cluster's CA, which every namespace has: only used where the
                        # shell's kubeconfig goes straight to the API server.
                        {"name": "kube-ca", "configMap": {"name": "kube-root-ca.crt",
                                                          "optional": True}}],
        },
    }


def _reason(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return response.json().get("message") or response.text
    return response.text


@dataclass(frozen=True)
class PodState:
    ready: bool
    waiting: str  # what the user is told while it starts ('' once ready)
    failed: str  # why it will not start ('' while it may)


def state(pod: dict[str, Any]) -> PodState:
    """What a pod's status says about the shell: ready, starting (and at what), or stuck."""
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return PodState(False, "Waiting for the previous shell pod to go…", "")
    if status.get("phase") in ("Failed", "Succeeded"):
        return PodState(False, "", f"The shell pod ended ({status.get('reason') or 'stopped'}"
                                   f"{': ' + status['message'] if status.get('message') else ''}).")
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK:
            return PodState(False, "", f"{waiting['reason']}: "
                                       f"{waiting.get('message') or 'the container cannot start'}")
        if container.get("ready") and (container.get("state") or {}).get("running"):
            return PodState(True, "", "")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return PodState(False, "No room for the shell on the cluster yet: "
                                   f"{condition.get('message') or condition.get('reason')}", "")
    if not (pod.get("spec") or {}).get("nodeName"):
        return PodState(False, "Waiting for a node…", "")
    return PodState(False, "Starting your shell (pulling the image)…", "")


class ShellPod:
    """One user's shell pod on one instance, reached with the instance's own credential."""

    def __init__(self, upstream: Upstream, *, namespace: str, name: str) -> None:
        self.upstream = upstream
        self.namespace = namespace
        self.name = name
        self.path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            with httpx.Client(base_url=self.upstream.base_url, headers=self.upstream.headers,
                              verify=self.upstream.ssl_context or False, timeout=15) as client:
                return client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ShellPodError(f"The portal cannot reach the instance's API: {exc}") from exc

    def get(self) -> dict[str, Any] | None:
        response = self._request("GET", self.path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ShellPodError(f"The cluster refused to show the shell pod: {_reason(response)}")
        return response.json()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create it (or take the one a concurrent open made)."""
        response = self._request("POST", f"/api/v1/namespaces/{quote(self.namespace)}/pods",
                                 json=body)
        if response.status_code == 409:
            return self.get() or body
        if response.status_code == 403 and "quota" in response.text:
            raise ShellPodError(f"The instance's quota has no room for the shell (it needs "
                                f"100m CPU and 256Mi memory): {_reason(response)}")
        if response.status_code not in (200, 201):
            raise ShellPodError(f"The cluster refused the shell pod: {_reason(response)}")
        return response.json()

    def delete(self) -> None:
        response = self._request("DELETE", self.path, params={"gracePeriodSeconds": "0"})
        if response.status_code not in (200, 202, 404):
            raise ShellPodError(f"The cluster refused to delete the shell pod: "
                                f"{_reason(response)}")

    async def exec(self, command: list[str], *, tty: bool, stdin: bool = True,
                   stderr: bool = False) -> ClientConnection:
        """An exec into the shell's container over WebSocket (v5, else v4)."""
        query = urlencode([("container", CONTAINER), ("stdin", str(stdin).lower()),
                           ("stdout", "true"), ("stderr", str(stderr and not tty).lower()),
                           ("tty", str(tty).lower()), *[("command", c) for c in command]])
        url = self.upstream.base_url + f"{self.path}/exec?{query}"
        url = "ws" + url[4:]  # http→ws, https→wss
        try:
            return await websocket_connect(
                url, additional_headers=self.upstream.headers, subprotocols=PROTOCOLS,
                ssl=(self.upstream.ssl_context or None) if url.startswith("wss:") else None,
                user_agent_header=None, compression=None, max_size=None, ping_interval=None,
                open_timeout=15, close_timeout=2)
        except websockets.InvalidStatus as exc:
            body = exc.response.body or b""
            try:
                message = json.loads(body).get("message") or body.decode()
            except ValueError:
                message = body.decode(errors="replace")
            raise ShellPodError(f"The cluster refused the shell: {message}") from exc
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise ShellPodError(f"The portal cannot reach the instance's API: {exc}") from exc

    async def write_file(self, path: str, data: bytes) -> None:
        """Write `data` to `path` in the pod, mode 0600, through exec stdin: the content is in
        no command line and no API object. `head -c` ends the command on its own, so this
        works on both v4 and v5 of the protocol."""
        script = (f'umask 077; mkdir -p "$(dirname {path})" && head -c {len(data)} > {path}.new'
                  f" && mv {path}.new {path}")
        socket = await self.exec(["sh", "-c", script], tty=False, stderr=True)
        try:
            await socket.send(b"\x00" + data)
            errors = b""
            async for frame in socket:
                if isinstance(frame, bytes) and frame[:1] in (b"\x01", b"\x02"):
                    errors += frame[1:]
                elif isinstance(frame, bytes) and frame[:1] == b"\x03":
                    status = json.loads(frame[1:] or b"{}")
                    if status.get("status") != "Success":
                        why = errors.decode(errors="replace").strip() or status.get("message")
                        raise ShellPodError(f"The shell's kubeconfig could not be written: {why}")
                    return
        finally:
            await socket.close()


def exit_message(frame: bytes) -> str:
    """The error channel's Status, in words ('' for a clean exit)."""
    try:
        status = json.loads(frame or b"{}")
    except ValueError:
        return ""
    if status.get("status") == "Success":
        return ""
    causes = (status.get("details") or {}).get("causes") or []
    code = next((c.get("message") for c in causes if c.get("reason") == "ExitCode"), "")
    return f"exit code {code}" if code else (status.get("message") or "")
