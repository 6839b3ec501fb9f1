"""The browser shell, end to end without a browser: the portal served by uvicorn (its
production ASGI server, over HTTPS) with Django Channels on the real Redis channel layer, a
real WebSocket client signed in with a session cookie. On a Kubernetes instance the shell is a
pod of the instance: the kit's kubelet stand-in runs it off the portal's filesystem, and its
real kubectl comes back through the portal's own proxy to the Kubernetes API emulator. On a
local instance it is a login shell in the sandbox. What a browser sees is in
test_shell_browser.py."""

import os
import re
import shutil
import time
from contextlib import ExitStack, contextmanager, suppress
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from access import services as access_services
from access.models import AccessToken, ProxyRequest, ShellPod
from clusters.backends.local import limits as local_limits
from clusters.backends.local import tenants
from instances import collaborators
from instances.models import Collaborator, Instance
from workspaces.models import AuditEvent

from .conftest import make_user, running_instance, wait_for
from .kit import kubelet as kit_kubelet
from .kit.asgi import client_tls, serve
from .kit.kubelet import Kubelet
from .test_collaborators import share_with
from .test_remote_access import emu, namespace_of, profile, real_profile, tls  # noqa: F401
from .test_remote_access import running_instance as kube_instance

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.django_db(transaction=True)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x01\x02]")


@pytest.fixture
def portal(request, transactional_db, settings, tls) -> str:  # noqa: F811
    """Pages, proxy and WebSockets as the production server serves them. For Kubernetes
    instances over HTTPS (the shell pod's kubectl sends tokens over HTTPS only; kubeconfigs
    carry the self-signed certificate); local sandboxes' shells over plain HTTP, as
    `make run` serves them."""
    from gpupaas.asgi import application

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
    settings.ACCESS_KUBECONFIG_CA_FILE = str(tls[0])
    secure = bool({"kubelet", "alice_kube", "profile"} & set(request.fixturenames))
    with serve(application, tls=tls if secure else None) as url, fresh_channel_layer(), \
            no_shell_left():
        yield url


@contextmanager
def no_shell_left():
    """Shells still open when the test's server stops end with it (as they do when a web
    process exits: their terminal closes), so their OS users can be removed after the run."""
    import signal

    try:
        yield
    finally:
        for pid in shell_processes():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def fresh_channel_layer():
    """The channel layer is made once per process and bound to the event loop that first
    receives on it; each test serves the portal on an event loop of its own."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    try:
        yield
    finally:
        channel_layers.backends.clear()


class Shell:
    """One open browser shell: keystrokes in, terminal output out."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.output = b""
        self.closed_reason = ""
        self.close_code: int | None = None

    def type(self, line: str) -> None:
        self.socket.send(line.encode() + b"\r")

    @property
    def text(self) -> str:
        return ANSI.sub(b"", self.output).decode(errors="replace").replace("\r", "")

    def read(self, timeout: float) -> bool:
        """Take what arrives within `timeout`; False once the socket closed."""
        try:
            frame = self.socket.recv(timeout=timeout)
        except TimeoutError:
            return True
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
            return False
        if isinstance(frame, bytes):
            self.output += frame
        elif '"closed"' in frame:
            import json

            self.closed_reason = json.loads(frame)["reason"]
        return True

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            if time.monotonic() > deadline or not self.read(0.2):
                raise AssertionError(f"{text!r} never came; the terminal shows:\n{self.text}")
        return self.text

    def wait_closed(self, timeout: float = 10) -> float:
        """Seconds until the server closed the shell."""
        started = time.monotonic()
        while self.read(0.1):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"still open after {timeout}s:\n{self.text}")
        return time.monotonic() - started


def session_cookie(client, user) -> str:
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture
def open_shell(portal, tls):  # noqa: F811
    """Opens shells on the served portal (`open_shell(cookie, instance id)`); all are closed
    after the test."""
    trust = client_tls(tls[0])
    with ExitStack() as stack:

        def opener(cookie: str, instance_id: int, *, origin: str | None = None,
                   forwarded: str | None = None) -> Shell:
            url = (portal.replace("http", "ws", 1)
                   + f"/access/instances/{instance_id}/shell/socket/")
            headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}",
                       "Origin": origin or portal}
            if forwarded is not None:
                headers["X-Forwarded-For"] = forwarded
            # 60 s: on a loaded CI machine (two test workers) a handshake once took over 20.
            return Shell(stack.enter_context(
                connect(url, additional_headers=headers, open_timeout=60,
                        ssl=trust if url.startswith("wss:") else None)))

        yield opener


@pytest.fixture
def alice_kube(alice, profile):  # noqa: F811
    return kube_instance(alice, profile)


def shell_processes() -> dict[int, str]:
    """The browser shells' processes on this machine: pid → command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"What starts a local sandbox's browser terminal" in cmdline:
                found[int(entry.name)] = cmdline.decode(errors="replace")
    return found


# --- Kubernetes instances: a shell in a pod of the instance --------------------------------


@pytest.fixture
def kubelet(emu, tmp_path):  # noqa: F811
    """The emulator's kubelet stand-in: the shell pod runs, and exec runs its commands in a
    container of their own (tests/kit/kubelet.py)."""
    if not (KUBECTL and Kubelet and kit_kubelet.available()):
        pytest.skip("the kubelet stand-in needs root, unshare, chroot, setpriv and kubectl")
    stand_in = Kubelet(emu, tmp_path / "kubelet")
    yield stand_in
    stand_in.close()


def shell_pod(emu, instance, user) -> dict | None:  # noqa: F811
    return emu.get("Pod", f"gpupaas-shell-{user.pk}", namespace_of(instance))


def test_the_shell_runs_in_a_pod_of_the_instance_and_kubectl_goes_through_the_portal(
    open_shell, client, alice, alice_kube, emu, kubelet  # noqa: F811
):
    namespace = namespace_of(alice_kube)
    started = time.monotonic()
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Shell in pod gpupaas-shell-")
    shell.type("echo READY-$((20+22))")
    shell.wait_for("READY-42")
    print(f"open shell to a prompt: {time.monotonic() - started:.2f}s (emulator)")
    assert "Starting your shell" in shell.text or "Waiting for a node" in shell.text

    # The pod: in the instance's namespace, restricted, no GPU, no service account token.
    pod = shell_pod(emu, alice_kube, alice)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert not any("gpu" in key for key in container["resources"]["limits"])
    assert container["image"] == settings.SHELL_IMAGE
    assert kubelet.execs[-1]["user"] == 65532 and kubelet.execs[-1]["tty"]

    # kubectl in the pod reaches the instance through the portal's proxy, with the shell's
    # own session token: decided, forwarded as the instance's access account, audited.
    shell.type("kubectl get configmaps; echo DONE-$((1+1))")
    shell.wait_for("DONE-2")
    token = AccessToken.objects.get(user=alice, instance=alice_kube)
    assert token.created_from.startswith("web shell")
    assert wait_for(lambda: ProxyRequest.objects.filter(
        token=token, path__startswith=f"/api/v1/namespaces/{namespace}/configmaps",
        status=200).exists(), timeout=5), list(ProxyRequest.objects.values_list("path", "status"))
    assert f"system:serviceaccount:{namespace}:gpupaas-access" in {
        r.user for r in emu.requests.records() if r.resource == "configmaps"}
    shell.type("grep -c token: $KUBECONFIG; echo DONE-$((2+1))")
    assert "\n1\nDONE-3" in shell.wait_for("DONE-3")

    shell.type("exit")
    shell.wait_closed()
    token = wait_for(lambda: AccessToken.objects.filter(pk=token.pk, revoked_at__isnull=False)
                     .first(), timeout=5)
    assert token.revoked_reason == "shell closed: The shell ended."
    # The pod stays for the next shell, which reuses it (and the files in its home).
    assert shell_pod(emu, alice_kube, alice) is not None
    again = open_shell(session_cookie(client, alice), alice_kube.pk)
    again.wait_for("Shell in pod gpupaas-shell-")
    assert "Starting your shell" not in again.text and "Waiting for a node" not in again.text
    assert ShellPod.objects.filter(instance=alice_kube, user=alice).count() == 1


ATTACKS = [
    "cat {marker}",
    "kubectl cp -- {marker} {pod}:/tmp/x",
    "kubectl cp {marker} {pod}:/tmp/x",
    "kubectl cp -- {pod}:/etc/hostname {target}",
    "kubectl apply -f {marker}",
    "kubectl apply -f /etc/passwd",
    "kubectl --kubeconfig={marker} get pods",
    "kubectl --server=https://127.0.0.1:1 get pods",
    "kubectl config set-credentials x --exec-command=/bin/sh --exec-arg=-c "
    "--exec-arg='cat {marker}'",
    "kubectl plugin list",
    "KUBE_EDITOR='cp {marker} /tmp/y' kubectl edit configmap x",
    "timeout 2 kubectl proxy --port=0",
    "timeout 2 kubectl port-forward pod/{pod} 0:80",
    "echo overwritten > {target}",
    "ls {folder}",
]


def test_the_attack_list_cannot_touch_a_file_of_the_portals_machine(
    open_shell, client, alice, alice_kube, emu, kubelet, tmp_path  # noqa: F811
):
    folder = Path(settings.VAR_DIR)
    marker = folder / "marker-shell-attack"
    marker.write_text("PORTAL-SECRET-7731\n")
    target = tmp_path / "target"
    target.write_text("untouched\n")
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Shell in pod gpupaas-shell-")
    pod = f"gpupaas-shell-{alice.pk}"
    for number, attack in enumerate(ATTACKS):
        shell.type(attack.format(marker=marker, pod=pod, target=target, folder=folder)
                   + f"; echo ATTACK-{number}-$((0+1))")
        shell.wait_for(f"ATTACK-{number}-1", timeout=30)
    assert "PORTAL-SECRET-7731" not in shell.text
    assert marker.read_text() == "PORTAL-SECRET-7731\n"
    assert target.read_text() == "untouched\n"
    assert not (Path("/tmp/y")).exists()
    # The shell sees its pod's files, not the portal's.
    shell.type("ls / | tr '\\n' ' '; echo; id -u; echo END-$((3+3))")
    screen = shell.wait_for("END-6")
    assert "work" not in screen.split("END-6")[0].split("ls /")[-1]
    assert "\n65532\n" in screen


def test_where_pods_cannot_reach_the_portal_the_shell_gets_a_short_lived_account_token(
    open_shell, client, alice, alice_kube, emu, kubelet, monkeypatch  # noqa: F811
):
    alice_kube.cluster.shell_reaches_portal = False
    alice_kube.cluster.save()
    real = access_services.shell_kubeconfig
    # Renewed every second here (at half its ten minutes in production).
    monkeypatch.setattr(access_services, "shell_kubeconfig",
                        lambda **kwargs: (real(**kwargs)[0], 1.0))
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Shell in pod")

    def kubeconfig() -> dict:
        marker = f"KC-{time.monotonic_ns()}"
        shell.type(f"echo {marker}-START; cat $KUBECONFIG; echo {marker}-$((1+1))")
        text = shell.wait_for(f"{marker}-2")
        return yaml.safe_load(text.split(f"{marker}-START\n")[-1].split(f"{marker}-2")[0])

    first = kubeconfig()
    assert first["clusters"][0]["cluster"] == {
        "server": "https://kubernetes.default.svc",
        "certificate-authority": "/var/run/gpupaas/ca.crt"}
    token = first["users"][0]["user"]["token"]
    namespace = namespace_of(alice_kube)
    assert emu.token_user(f"Bearer {token}") == (
        f"system:serviceaccount:{namespace}:gpupaas-access")
    time.sleep(2.5)
    renewed = kubeconfig()["users"][0]["user"]["token"]
    assert renewed != token and emu.token_user(f"Bearer {renewed}")


def test_a_pod_that_cannot_start_says_why_in_the_clusters_words(
    open_shell, client, alice, alice_kube, emu, kubelet  # noqa: F811
):
    alice_kube.cluster.shell_image = "registry.example/no-such-image:1"
    alice_kube.cluster.save()
    kubelet.failures.add("no-such-image")
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_closed(timeout=20)
    assert shell.close_code == 4503
    assert "Your shell could not start. ErrImagePull" in shell.closed_reason
    assert "no-such-image" in shell.closed_reason


def test_someone_elses_shell_is_refused_like_a_missing_instance(
    open_shell, client, alice, bob, alice_kube, emu  # noqa: F811
):
    with pytest.raises(InvalidStatus) as refused:
        open_shell(session_cookie(client, bob), alice_kube.pk)
    assert refused.value.response.status_code == 403
    assert client.get(f"/access/instances/{alice_kube.pk}/shell/").status_code == 404
    with pytest.raises(InvalidStatus):
        open_shell(session_cookie(client, bob), 999999)
    assert not AccessToken.objects.exists() and not ShellPod.objects.exists()
    assert not emu.objects("Pod")


def test_another_site_cannot_open_a_shell_with_the_users_cookie(
    open_shell, client, alice, alice_kube  # noqa: F811
):
    with pytest.raises(InvalidStatus):
        open_shell(session_cookie(client, alice), alice_kube.pk,
                   origin="https://evil.example")
    assert not AccessToken.objects.exists()


def test_a_signed_out_visitor_gets_no_shell(open_shell, alice_kube):  # noqa: F811
    with pytest.raises(InvalidStatus):
        open_shell("not-a-session", alice_kube.pk)


def test_removing_a_collaborator_closes_their_shell_within_a_second_and_deletes_its_pod(
    open_shell, client, alice, alice_kube, emu, kubelet  # noqa: F811
):
    carol = make_user("carol", group=None)
    share_with(alice_kube, alice, carol)
    shell = open_shell(session_cookie(client, carol), alice_kube.pk)
    shell.wait_for("Shell in pod gpupaas-shell-")
    assert shell_pod(emu, alice_kube, carol) is not None

    collaborators.remove_collaborator(
        collaborator=Collaborator.objects.get(user=carol), by=alice)
    closed_after = shell.wait_closed(timeout=5)

    assert closed_after < 1.0, closed_after
    assert shell.close_code == 4403
    assert "revoked" in shell.closed_reason or "removed" in shell.closed_reason
    assert wait_for(lambda: shell_pod(emu, alice_kube, carol) is None, timeout=5)
    # Its row goes just after the pod (the consumer's clean-up, on its own thread).
    assert wait_for(lambda: not ShellPod.objects.filter(user=carol).exists(), timeout=5)
    assert AuditEvent.objects.filter(action="shell.pod_deleted").exists()


def test_revoking_the_tokens_on_the_instance_page_closes_the_shell_at_once(
    open_shell, client, alice, alice_kube, kubelet  # noqa: F811
):
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Shell in pod")
    client.post(f"/access/instances/{alice_kube.pk}/tokens/revoke/")
    assert shell.wait_closed(timeout=5) < 1.0
    assert "revoked" in shell.closed_reason


def test_a_deleted_instance_or_deactivated_user_ends_the_shell(
    open_shell, client, alice, alice_kube, kubelet  # noqa: F811
):
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Shell in pod")
    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)
    shell.wait_closed(timeout=5)
    assert "deactivated" in shell.closed_reason

    get_user_model().objects.filter(pk=alice.pk).update(is_active=True)
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Shell in pod")
    Instance.objects.filter(pk=alice_kube.pk).update(status=Instance.Status.DELETING)
    shell.wait_closed(timeout=5)
    assert shell.close_code == 4403


def test_an_idle_shell_closes_and_its_pod_goes_after_the_idle_timeout(
    open_shell, client, alice, alice_kube, emu, kubelet, settings  # noqa: F811
):
    settings.SHELL_IDLE_TIMEOUT_S = 2
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Shell in pod")
    shell.type("true")  # a keystroke keeps it open a while longer
    closed_after = shell.wait_closed(timeout=10)
    assert 1.5 < closed_after < 5
    assert shell.close_code == 4408
    assert "without a keystroke" in shell.closed_reason
    closed = timezone.now() - timedelta(seconds=1)
    assert wait_for(lambda: ShellPod.objects.filter(last_active_at__gte=closed).exists(),
                    timeout=5)
    assert access_services.sweep_shell_pods() == 0  # just closed: kept for the next shell
    time.sleep(2.1)
    from access.tasks import sweep_remote_access

    assert sweep_remote_access()["shell_pods_deleted"] == 1  # the periodic sweep's task
    assert shell_pod(emu, alice_kube, alice) is None


def test_on_a_real_server_the_shell_pod_is_admitted_and_its_credential_scoped(
    client, alice, real_profile  # noqa: F811
):
    """There is no kubelet on the test's real server: the pod is admitted (Pod Security
    restricted, the access account's rights) but never runs, so exec needs a real cluster."""
    instance = kube_instance(alice, real_profile, name="real")
    grant = access_services.open_shell(user=alice, instance_id=instance.pk)
    handle, body, config, _ = access_services.shell_pod(grant=grant,
                                                     portal_url="https://127.0.0.1:1")
    created = handle.create(body)
    assert created["spec"]["automountServiceAccountToken"] is False
    assert created["metadata"]["namespace"] == namespace_of(instance)
    assert yaml.safe_load(config)["users"][0]["user"]["token"] == grant.token
    handle.delete()

# --- local instances: a login shell in the sandbox ----------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox shells need the portal to run as root")
def test_a_local_instance_gets_a_shell_in_its_sandbox_as_the_workspaces_user(
    open_shell, client, alice, catalogue
):
    instance = running_instance(alice, catalogue[2], "sandboxed")
    shell = open_shell(session_cookie(client, alice), instance.pk)
    shell.type("id -un; pwd; echo gpus=$CUDA_VISIBLE_DEVICES; env | grep -c DATABASE_URL; "
               "echo END-$((40+2))")
    tenant = tenants.username(str(instance.workspace_id))
    screen = shell.wait_for("END-42")
    assert f"\n{tenant}\n" in screen
    assert f"{instance.cluster.name}/{instance.key}" in screen
    assert "\ngpus=" + ",".join(str(i) for i in instance.gpu_indices) + "\n0\n" in screen
    shell.type(f"cat {settings.VAR_DIR}/secret_key; echo DONE-$((1+1))")
    shell.wait_for("DONE-2")
    assert "Permission denied" in shell.text or "No such file" in shell.text
    if local_limits.enforced():  # held by the instance's own cgroups, capped at its size
        shell.type("grep -c gpupaas/sh- /proc/self/cgroup; cat /sys/fs/cgroup/memory$("
                   "grep memory /proc/self/cgroup | cut -d: -f3)/memory.limit_in_bytes; "
                   "echo LIM-$((2+1))")
        screen = shell.wait_for("LIM-3")
        # memory, cpu, pids (and devices on cgroup v1), at the instance's memory
        assert re.search(rf"\n[34]\n{instance.memory_gib * 2**30}\nLIM-3", screen), screen
    shell.type("exit")
    shell.wait_closed()


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox shells need the portal to run as root")
@pytest.mark.parametrize("forwarded", ["6.6.6.6", "not-an-ip", "x" * 3000])
def test_a_shells_audit_row_names_the_real_peer_whatever_the_header(
        open_shell, client, alice, catalogue, forwarded):
    instance = running_instance(alice, catalogue[1], "audited")
    shell = open_shell(session_cookie(client, alice), instance.pk, forwarded=forwarded)
    shell.type("echo UP-$((1+1))")
    shell.wait_for("UP-2")
    opened = wait_for(lambda: AuditEvent.objects.filter(
        action="shell.opened", object_id=str(instance.pk)).first(), timeout=5)
    assert opened.ip_address == "127.0.0.1"
    shell.type("exit")
    shell.wait_closed()


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox shells need the portal to run as root")
def test_sandbox_shells_are_capped_per_person_and_per_machine(
    open_shell, client, alice, bob, catalogue, settings
):
    settings.SHELL_PER_USER, settings.SHELL_MAX_SESSIONS = 1, 2
    instance = running_instance(alice, catalogue[1], "capped")
    first = open_shell(session_cookie(client, alice), instance.pk)
    first.type("echo ONE-$((0+1))")
    first.wait_for("ONE-1")
    second = open_shell(session_cookie(client, alice), instance.pk)
    second.wait_closed()
    assert second.closed_reason == "You have 1 shell open already; close one to open another."

    bobs = running_instance(bob, catalogue[1], "bobs")
    bobs_shell = open_shell(session_cookie(client, bob), bobs.pk)
    bobs_shell.type("echo TWO-$((1+1))")
    bobs_shell.wait_for("TWO-2")
    carol = make_user("carol")
    third = open_shell(session_cookie(client, carol),
                       running_instance(carol, catalogue[1], "c").pk)
    third.wait_closed()
    assert "All 2 browser shells of this server are in use" in third.closed_reason
    first.type("echo STILL-$((1+2))")
    first.wait_for("STILL-3")


# --- the same shell from the command line ---------------------------------------------------


def gpupaas_shell(portal, tls, token, name, stdin):  # noqa: F811
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUPAAS_", "DJANGO"))}
    env.update({"GPUPAAS_URL": portal, "GPUPAAS_TOKEN": token, "SSL_CERT_FILE": str(tls[0])})
    return subprocess.run([sys.executable, "-m", "gpupaas_cli", "shell", name], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60)


def test_gpupaas_shell_opens_the_same_shell_in_the_users_terminal(
    portal, tls, alice, alice_kube, kubelet  # noqa: F811
):
    from api.services import create_api_token

    _, writer = create_api_token(user=alice, name="cli", days=1, scope="write")
    done = gpupaas_shell(portal, tls, writer, "train",
                         "echo CLI-$((20+22)); kubectl get configmaps >/dev/null && "
                         "echo API-OK\nexit 3\n")
    assert "CLI-42" in done.stdout and "API-OK" in done.stdout, (done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    assert "The shell ended (exit code 3)." in done.stderr

    _, reader = create_api_token(user=alice, name="read", days=1, scope="read")
    refused = gpupaas_shell(portal, tls, reader, "train", "echo NO\n")
    assert refused.returncode == 3 and "NO" not in refused.stdout
    assert "a token that may write" in refused.stderr
