"""The browser shell, end to end without a browser: the portal served by uvicorn (its
production ASGI server) with Django Channels on the real Redis channel layer, a real
WebSocket client signed in with a session cookie, the real kubectl in a real pseudo-terminal,
through the portal's own proxy, to the Kubernetes API emulator. What a browser sees is in
test_shell_browser.py."""

import os
import re
import shutil
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from access.models import AccessToken, ProxyRequest
from clusters.backends.local import limits as local_limits
from instances import services as instance_services
from instances.models import Collaborator, Instance
from workspaces.models import AuditEvent

from .conftest import make_user, running_instance, wait_for
from .kit.asgi import serve
from .test_collaborators import share_with
from .test_remote_access import emu, namespace_of, profile, real_profile  # noqa: F401
from .test_remote_access import running_instance as kube_instance

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.django_db(transaction=True)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x01\x02]")


@pytest.fixture
def portal(transactional_db, settings) -> str:
    """Pages, proxy and WebSockets as the production server serves them."""
    from gpupaas.asgi import application

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
    with serve(application) as url, fresh_channel_layer(), no_shell_left():
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
def open_shell(portal):
    """Opens shells on the served portal (`open_shell(cookie, instance id)`); all are closed
    after the test."""
    with ExitStack() as stack:

        def opener(cookie: str, instance_id: int, *, origin: str | None = None,
                   forwarded: str | None = None) -> Shell:
            url = (portal.replace("http", "ws", 1)
                   + f"/access/instances/{instance_id}/shell/socket/")
            headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}",
                       "Origin": origin or portal}
            if forwarded is not None:
                headers["X-Forwarded-For"] = forwarded
            return Shell(stack.enter_context(
                connect(url, additional_headers=headers, open_timeout=20)))

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
            if b"What runs inside a browser terminal" in cmdline:
                found[int(entry.name)] = cmdline.decode(errors="replace")
    return found


# --- Kubernetes instances: kubectl through the portal -----------------------------------


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_runs_as_the_user_through_the_portal_with_the_same_audit(
    open_shell, client, alice, alice_kube, emu  # noqa: F811
):
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Kubernetes shell for train")
    namespace = namespace_of(alice_kube)
    shell.type(f"kubectl get ns {namespace}")
    screen = shell.wait_for("AGE")
    shell.wait_for(f"\n{namespace} ")
    assert re.search(rf"^{namespace}\s", shell.text, re.M), screen

    # The proxy decided, forwarded as alice and audited it like any kubeconfig request.
    token = AccessToken.objects.get(user=alice, instance=alice_kube)
    assert token.created_from.startswith("web shell")
    assert wait_for(lambda: ProxyRequest.objects.filter(
        token=token, path=f"/api/v1/namespaces/{namespace}", status=200).exists(), timeout=5), \
        list(ProxyRequest.objects.values_list("path", "status"))
    assert emu.requests.records()[-1].user == (
        f"system:serviceaccount:{namespace}:gpupaas-access")
    assert AuditEvent.objects.filter(action="shell.opened", object_id=str(alice_kube.pk))\
        .exists()

    shell.type("exit")
    shell.wait_closed()
    token = wait_for(lambda: AccessToken.objects.filter(pk=token.pk, revoked_at__isnull=False)
                     .first(), timeout=5)
    assert token.revoked_reason == "shell closed: The shell ended."
    assert not shell_processes()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_flags_that_change_server_or_identity_are_refused_and_nothing_runs(
    open_shell, client, alice, alice_kube, emu  # noqa: F811
):
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Kubernetes shell")
    before = len(emu.requests.records())
    shell.type("kubectl get pods --server=https://example.com")
    shell.wait_for("--server is refused")
    shell.type("kubectl get pods --as=system:admin")
    shell.wait_for("--as is refused")
    shell.type("kubectl get pods; cat /etc/passwd")
    shell.wait_for("shell syntax are not interpreted here")
    shell.type("kubectl apply -f /etc/passwd")
    shell.wait_for("/etc/passwd is outside this session's folder")
    shell.type("cat /etc/passwd")
    shell.wait_for("Only kubectl commands run here.")
    assert len(emu.requests.records()) == before
    assert "root:x:0:0" not in shell.text


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_the_shell_process_runs_as_its_own_user_with_none_of_the_portals_environment(
    open_shell, client, alice, alice_kube, monkeypatch  # noqa: F811
):
    monkeypatch.setenv("PORTAL_SECRET_FOR_TEST", "do-not-leak")
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Kubernetes shell")
    [pid] = shell_processes()
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    if os.geteuid() == 0:
        import pwd

        assert uid != 0 and pwd.getpwuid(uid).pw_name.startswith(settings.LOCAL_USER_PREFIX)
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "TERM", "KUBECONFIG", "KUBE_EDITOR",
                     "EDITOR", "GOMAXPROCS", "GOMEMLIMIT"}
    assert b"do-not-leak" not in b"".join(environ)
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"Max cpu time\s+300\s+300", limits), limits
    assert re.search(rf"Max address space\s+{2048 << 20}", limits), limits


def test_someone_elses_shell_is_refused_like_a_missing_instance(
    open_shell, client, alice, bob, alice_kube  # noqa: F811
):
    with pytest.raises(InvalidStatus) as refused:
        open_shell(session_cookie(client, bob), alice_kube.pk)
    assert refused.value.response.status_code == 403
    assert client.get(f"/access/instances/{alice_kube.pk}/shell/").status_code == 404
    with pytest.raises(InvalidStatus):
        open_shell(session_cookie(client, bob), 999999)
    assert not AccessToken.objects.exists() and not shell_processes()


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


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_removing_a_collaborator_closes_their_open_shell_within_a_second(
    open_shell, client, alice, alice_kube  # noqa: F811
):
    carol = make_user("carol", group=None)
    share_with(alice_kube, alice, carol)
    shell = open_shell(session_cookie(client, carol), alice_kube.pk)
    shell.wait_for("Kubernetes shell for train")

    instance_services.remove_collaborator(
        collaborator=Collaborator.objects.get(user=carol), by=alice)
    closed_after = shell.wait_closed(timeout=5)

    assert closed_after < 1.5, closed_after
    assert shell.close_code == 4403
    assert "revoked" in shell.closed_reason or "removed" in shell.closed_reason
    wait_for(lambda: not shell_processes(), timeout=5)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_revoking_the_tokens_on_the_instance_page_closes_the_shell_at_once(
    open_shell, client, alice, alice_kube  # noqa: F811
):
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Kubernetes shell")
    client.post(f"/access/instances/{alice_kube.pk}/tokens/revoke/")
    assert shell.wait_closed(timeout=5) < 1.5
    assert "revoked" in shell.closed_reason


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_a_deleted_instance_or_deactivated_user_ends_the_shell(
    open_shell, client, alice, alice_kube  # noqa: F811
):
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Kubernetes shell")
    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)
    shell.wait_closed(timeout=5)
    assert "deactivated" in shell.closed_reason

    get_user_model().objects.filter(pk=alice.pk).update(is_active=True)
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Kubernetes shell")
    Instance.objects.filter(pk=alice_kube.pk).update(status=Instance.Status.DELETING)
    shell.wait_closed(timeout=5)
    assert shell.close_code == 4403


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_a_shell_without_keystrokes_closes_after_the_idle_timeout(
    open_shell, client, alice, alice_kube, settings  # noqa: F811
):
    settings.SHELL_IDLE_TIMEOUT_S = 2
    shell = open_shell(session_cookie(client, alice), alice_kube.pk)
    shell.wait_for("Kubernetes shell")
    shell.type("kubectl version --client")  # a keystroke keeps it open a while longer
    closed_after = shell.wait_closed(timeout=10)
    assert 1.5 < closed_after < 5
    assert shell.close_code == 4408
    assert "without a keystroke" in shell.closed_reason


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_on_a_real_server_the_shell_has_the_scope_of_a_downloaded_kubeconfig(
    open_shell, client, alice, real_profile  # noqa: F811
):
    instance = kube_instance(alice, real_profile, name="real")
    shell = open_shell(session_cookie(client, alice), instance.pk)
    shell.wait_for("Kubernetes shell for real")
    shell.type("kubectl auth can-i create deployments")
    shell.wait_for("\nyes\n")
    shell.type("kubectl get pods -n kube-system")
    shell.wait_for("Forbidden")
    assert f'User "{settings.PORTAL_ID}:user:alice" cannot list resource "pods"' in shell.text


# --- local instances: a login shell in the sandbox ----------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox shells need the portal to run as root")
def test_a_local_instance_gets_a_shell_in_its_sandbox_as_the_workspaces_user(
    open_shell, client, alice, catalogue
):
    instance = running_instance(alice, catalogue[2], "sandboxed")
    shell = open_shell(session_cookie(client, alice), instance.pk)
    shell.type("id -un; pwd; echo gpus=$CUDA_VISIBLE_DEVICES; env | grep -c DATABASE_URL; "
               "echo END-$((40+2))")
    tenant = f"{settings.LOCAL_USER_PREFIX}{instance.workspace_id}"
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


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_shells_are_capped_per_person_and_per_machine(
    open_shell, client, alice, bob, alice_kube, profile, settings  # noqa: F811
):
    settings.SHELL_PER_USER, settings.SHELL_MAX_SESSIONS = 1, 2
    first = open_shell(session_cookie(client, alice), alice_kube.pk)
    first.wait_for("Kubernetes shell")
    second = open_shell(session_cookie(client, alice), alice_kube.pk)
    second.wait_closed()
    assert second.closed_reason == "You have 1 shell open already; close one to open another."

    bobs = kube_instance(bob, profile, name="bobs")
    open_shell(session_cookie(client, bob), bobs.pk).wait_for("Kubernetes shell")
    carol = make_user("carol")
    third = open_shell(session_cookie(client, carol), kube_instance(carol, profile, "c").pk)
    third.wait_closed()
    assert "All 2 browser shells of this server are in use" in third.closed_reason
    # Nothing of the refused ones is left: no process, no live token.
    assert wait_for(lambda: AccessToken.objects.filter(revoked_at__isnull=True).count() == 2,
                    timeout=5)
    assert len(shell_processes()) == 2
