"""Remote access: a kubeconfig downloaded from the instance page, used by the real `kubectl`
against the portal served by uvicorn (its production ASGI server), which proxies to the
Kubernetes API emulator. What reaches the "cluster" is read from the emulator's own record
of each request."""

import os
import shutil
import ssl
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from django.conf import settings
from django.contrib.auth.models import Group
from django.utils import timezone

from access import services as access
from access.models import AccessToken, ProxyRequest
from access.proxy import kube_verb
from clusters.models import Cluster
from instances import collaborators, services
from instances.models import ComputeProfile, Instance

from .conftest import make_user, wait_for, workspace_of
from .kit import kubeemu
from .kit.asgi import client_tls, self_signed, serve

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
def emu():
    with kubeemu.start() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def portal_ca(settings, tls):
    """The portal's certificate is self-signed here: kubeconfigs carry it as their CA."""
    settings.ACCESS_KUBECONFIG_CA_FILE = str(tls[0])
    settings.PORTAL_ID = "test-portal"
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]


def trusting_the_portal() -> ssl.SSLContext:
    return client_tls(settings.ACCESS_KUBECONFIG_CA_FILE)


@pytest.fixture
def portal(transactional_db, emu, tls) -> str:
    """The whole portal (pages and proxy) as `make run` and the image serve it, over HTTPS."""
    from gpupaas.asgi import application

    with serve(application, tls=tls) as url:
        yield url


@pytest.fixture
def http(tls):
    with httpx.Client(verify=trusting_the_portal()) as client:
        yield client


PORTAL_CREDENTIAL = "the-portals-own-service-account-token"


@pytest.fixture
def profile(emu, transactional_db, tmp_path) -> ComputeProfile:
    cluster = Cluster(name="emu", display_name="Emulated cluster", backend="kubernetes")
    kubeconfig = yaml.safe_load(emu.kubeconfig(tmp_path / "cluster-kubeconfig").read_text())
    kubeconfig["users"][0]["user"] = {"token": PORTAL_CREDENTIAL}
    cluster.set_kubeconfig(yaml.safe_dump(kubeconfig))
    cluster.save()
    return ComputeProfile.objects.create(
        name="ns-1", display_name="Namespace, 1 GPU", kind="namespace", cluster=cluster,
        gpus=1, cpu=8, memory_gib=64, storage_gib=100, published=True,
    )


def running_instance(user, profile, name="train") -> Instance:
    instance = services.launch_instance(
        workspace=workspace_of(user), name=name, profile=profile, by=user
    )
    instance = services.provision_instance(instance_id=instance.pk)
    assert instance.status == Instance.Status.RUNNING, instance.status_message
    return instance


@pytest.fixture
def alice_instance(alice, profile) -> Instance:
    return running_instance(alice, profile)


def download_kubeconfig(client, user, instance, tmp_path, **form) -> tuple[dict, str]:
    """Sign in as `user`, press "Download kubeconfig"; returns (parsed, path)."""
    client.force_login(user)
    response = client.post(f"/access/instances/{instance.pk}/kubeconfig/", form,
                           HTTP_HOST="127.0.0.1", secure=True)
    assert response.status_code == 200, response.content
    assert response["Content-Disposition"].startswith("attachment;")
    path = tmp_path / f"{user.username}-{instance.pk}.yaml"
    path.write_bytes(response.content)
    return yaml.safe_load(response.content), str(path)


def aimed_at(config: dict, portal: str) -> dict:
    """The downloaded kubeconfig with its server moved to where the test serves the portal
    (the test client's host has no port)."""
    config["clusters"][0]["cluster"]["server"] = config["clusters"][0]["cluster"][
        "server"].replace("https://127.0.0.1", portal)
    return config


@pytest.fixture
def alice_kubeconfig(client, alice, alice_instance, portal, tmp_path) -> str:
    config, path = download_kubeconfig(client, alice, alice_instance, tmp_path)
    with open(path, "w") as f:
        yaml.safe_dump(aimed_at(config, portal), f)
    return path


def kubectl(kubeconfig: str, *args: str, check: bool = True, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.path.dirname(kubeconfig),
           "KUBECONFIG": kubeconfig}
    result = subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env,
                            input=stdin, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def token_of(kubeconfig: str) -> str:
    with open(kubeconfig) as f:
        return yaml.safe_load(f)["users"][0]["user"]["token"]


def namespace_of(instance: Instance) -> str:
    return f"{instance.workspace.owner.username}-{instance.name}-{instance.pk}"


CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
data:
  greeting: {value}
"""


# --- the kubeconfig ------------------------------------------------------------------------


def test_the_kubeconfig_points_at_the_portal_with_a_token_kept_only_hashed(
    client, alice, alice_instance, transactional_db, tmp_path
):
    config, _ = download_kubeconfig(client, alice, alice_instance, tmp_path)

    [cluster] = config["clusters"]
    assert cluster["cluster"]["server"] == f"https://127.0.0.1/k8s/{alice_instance.pk}/"
    assert set(cluster["cluster"]) == {"server", "certificate-authority-data"}
    assert config["contexts"][0]["context"]["namespace"] == namespace_of(alice_instance)
    plain = config["users"][0]["user"]["token"]
    assert plain.startswith("gpk_") and len(plain) > 40
    token = AccessToken.objects.get(user=alice, instance=alice_instance)
    assert plain not in {str(getattr(token, f.attname)) for f in AccessToken._meta.fields}
    assert abs(token.expires_at - (timezone.now() + timedelta(hours=8))) < timedelta(minutes=1)
    assert "cluster-kubeconfig" not in str(config) and "127.0.0.1:" not in str(config)


def test_a_token_cannot_outlive_the_maximum_the_administrator_set(
    client, alice, alice_instance, settings
):
    settings.ACCESS_TOKEN_MAX_TTL_HOURS = 12
    client.force_login(alice)
    response = client.post(f"/access/instances/{alice_instance.pk}/kubeconfig/",
                           {"hours": "48"}, follow=True)
    assert "Choose between 1 minute and 12 hours." in response.content.decode()
    assert not AccessToken.objects.exists()


def test_the_instance_page_lists_the_tokens_and_recent_requests(
    client, alice, alice_instance, alice_kubeconfig
):
    kubectl(alice_kubeconfig, "get", "configmaps")
    # Discovery requests are lists too: wait for this one's row (written after it answered).
    wait_for(lambda: ProxyRequest.objects.filter(path__contains="/configmaps").exists(),
             timeout=5)
    page = client.get(f"/access/?instance={alice_instance.pk}").content.decode()
    token = AccessToken.objects.get()
    assert f"{token.prefix}…" in page
    assert "kubectl/" in page  # the client of the last use
    assert "Download kubeconfig" in page
    assert f"/api/v1/namespaces/{namespace_of(alice_instance)}/configmaps" in page


def test_a_local_sandbox_offers_no_kubeconfig(client, alice, catalogue):
    instance = services.launch_instance(
        workspace=workspace_of(alice), name="sandbox", profile=catalogue[1], by=alice
    )
    client.force_login(alice)
    page = client.get(f"/access/?instance={instance.pk}").content.decode()
    assert "no Kubernetes API" in page and "Download kubeconfig" not in page
    assert client.post(f"/access/instances/{instance.pk}/kubeconfig/").status_code == 404


def test_another_users_instance_access_pages_are_404(client, alice, bob, alice_instance,
                                                      tmp_path):
    download_kubeconfig(client, alice, alice_instance, tmp_path)
    token = AccessToken.objects.get()
    client.force_login(bob)
    assert client.get(f"/access/?instance={alice_instance.pk}").status_code == 404
    assert client.post(f"/access/instances/{alice_instance.pk}/kubeconfig/").status_code == 404
    assert client.post(f"/access/instances/{alice_instance.pk}/tokens/revoke/").status_code == 404
    assert client.post(f"/access/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert not AccessToken.objects.filter(user=bob).exists()


# --- kubectl through the proxy -------------------------------------------------------------


def test_kubectl_gets_and_applies_as_the_instances_access_account(
    emu, alice_instance, alice_kubeconfig
):
    ns = namespace_of(alice_instance)
    emu.requests.reset()

    kubectl(alice_kubeconfig, "apply", "-f", "-", stdin=CONFIGMAP.format(name="hello",
                                                                           value="world"))
    out = kubectl(alice_kubeconfig, "get", "configmap", "hello", "-o",
                  "jsonpath={.data.greeting}").stdout

    assert out == "world"
    assert emu.get("ConfigMap", "hello", ns)["data"] == {"greeting": "world"}
    records = [r for r in emu.requests.records() if "/serviceaccounts/" not in r.path]
    # As the instance's access account (a token the portal asked for, TokenRequest), never
    # the portal's own credential, never the user's token, never impersonating anyone.
    assert records and {r.user for r in records} == {
        f"system:serviceaccount:{ns}:gpupaas-access"}
    assert not [r for r in records if any(h.startswith("impersonate-") for h in r.headers)]
    assert f"Bearer {PORTAL_CREDENTIAL}" not in {r.headers.get("authorization") for r in records}
    assert {r.verb for r in records} >= {"get", "create"}
    audit = ProxyRequest.objects.filter(instance=alice_instance, user__username="alice")
    wait_for(lambda: set(audit.values_list("verb", flat=True)) >= {"get", "create"}, timeout=5)
    assert all(r.duration_ms >= 0 and r.user_agent.startswith("kubectl") for r in audit)


def test_kubectl_apply_sends_a_large_object_whole(emu, alice_instance, alice_kubeconfig):
    value = "x" * 900_000
    kubectl(alice_kubeconfig, "create", "-f", "-",
            stdin=CONFIGMAP.format(name="big", value=value))
    assert emu.get("ConfigMap", "big", namespace_of(alice_instance))["data"]["greeting"] == value


def test_a_watch_streams_each_event_as_it_happens(emu, alice_instance, alice_kubeconfig):
    ns = namespace_of(alice_instance)
    env = {"PATH": os.environ["PATH"], "HOME": os.path.dirname(alice_kubeconfig),
           "KUBECONFIG": alice_kubeconfig}
    watch = subprocess.Popen(
        [KUBECTL, "get", "configmaps", "--watch", "-o", "name"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(r.verb == "watch" for r in emu.requests.records()), timeout=30)
        emu.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "arrived"}, "data": {}}, namespace=ns)
        wait_for(lambda: "configmap/arrived\n" in lines, timeout=10)
    finally:
        watch.terminate()
        watch.wait(10)
    assert ProxyRequest.objects.filter(verb="watch").exists() or wait_for(
        lambda: ProxyRequest.objects.filter(verb="watch").exists(), timeout=5)


def test_client_sent_impersonation_and_credentials_never_reach_the_cluster(
    emu, portal, http, alice_instance, alice_kubeconfig
):
    emu.requests.reset()
    kubectl(alice_kubeconfig, "get", "configmaps", "--as", "admin", "--as-group",
            "system:masters")
    response = http.get(
        f"{portal}/k8s/{alice_instance.pk}/api/v1/namespaces/kube-system/secrets",
        headers={"Authorization": f"Bearer {token_of(alice_kubeconfig)}",
                 "Impersonate-User": "system:admin", "Impersonate-Group": "system:masters",
                 "Impersonate-Extra-Scopes": "all", "Proxy-Authorization": "Basic eA=="},
    )
    assert response.status_code == 200  # the emulator enforces no RBAC; the headers count
    records = [r for r in emu.requests.records() if "/serviceaccounts/" not in r.path]
    assert len(records) >= 2
    for record in records:
        assert not [h for h in record.headers if h.startswith("impersonate-")]
        assert "proxy-authorization" not in record.headers
        assert record.user == f"system:serviceaccount:{namespace_of(alice_instance)}:" \
            "gpupaas-access"


# --- refused ------------------------------------------------------------------------------


def status_of(portal: str, instance: Instance, token: str) -> int:
    return httpx.get(f"{portal}/k8s/{instance.pk}/api/v1/namespaces/"
                     f"{namespace_of(instance)}/pods",
                     headers={"Authorization": f"Bearer {token}"},
                     verify=trusting_the_portal()).status_code


def test_a_revoked_token_is_refused_at_the_next_request(
    client, alice, portal, alice_instance, alice_kubeconfig
):
    token = token_of(alice_kubeconfig)
    assert status_of(portal, alice_instance, token) == 200
    row = AccessToken.objects.get()
    response = client.post(f"/access/tokens/{row.pk}/revoke/")
    assert response.status_code == 302

    assert status_of(portal, alice_instance, token) == 401
    result = kubectl(alice_kubeconfig, "get", "pods", check=False)
    assert result.returncode != 0 and "You must be logged in to the server" in result.stderr


def test_revoking_all_ends_a_running_watch_within_seconds(
    client, alice, alice_instance, alice_kubeconfig, emu
):
    env = {"PATH": os.environ["PATH"], "HOME": os.path.dirname(alice_kubeconfig),
           "KUBECONFIG": alice_kubeconfig}
    watch = subprocess.Popen([KUBECTL, "get", "pods", "--watch"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(r.verb == "watch" for r in emu.requests.records()), timeout=30)
        client.force_login(alice)
        client.post(f"/access/instances/{alice_instance.pk}/tokens/revoke/")
        started = time.monotonic()
        watch.wait(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        if watch.poll() is None:
            watch.kill()


def test_an_expired_token_is_refused(portal, http, alice_instance, alice_kubeconfig):
    token = token_of(alice_kubeconfig)
    AccessToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = http.get(f"{portal}/k8s/{alice_instance.pk}/api",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


def test_another_users_token_is_refused_on_alices_instance(
    client, bob, profile, portal, alice_instance, tmp_path
):
    bob_instance = running_instance(bob, profile, name="bobs")
    config, _ = download_kubeconfig(client, bob, bob_instance, tmp_path)
    bob_token = config["users"][0]["user"]["token"]
    assert status_of(portal, bob_instance, bob_token) == 200
    assert status_of(portal, alice_instance, bob_token) == 401
    assert status_of(portal, alice_instance, "gpk_made-up") == 401
    assert httpx.get(f"{portal}/k8s/{alice_instance.pk}/api",
                     verify=trusting_the_portal()).status_code == 401


def test_a_deleted_instance_refuses_its_tokens_and_revokes_them(
    alice, portal, alice_instance, alice_kubeconfig
):
    token = token_of(alice_kubeconfig)
    services.delete_instance(instance=alice_instance, by=alice)

    assert status_of(portal, alice_instance, token) == 401
    row = AccessToken.objects.get()
    assert row.revoked_at is not None and row.revoked_reason == "instance deleted"


def test_losing_the_role_or_the_account_revokes_access(
    alice, portal, alice_instance, alice_kubeconfig
):
    token = token_of(alice_kubeconfig)
    alice.groups.remove(Group.objects.get(name="Users"))
    assert status_of(portal, alice_instance, token) == 401
    assert AccessToken.objects.get().revoked_reason == "role removed"


def test_the_sweep_revokes_tokens_of_deactivated_users(alice, alice_instance, portal,
                                                       alice_kubeconfig):
    carol = make_user("carol")
    alice.is_active = False
    alice.save()
    assert access.revoke_lost_access() == 1
    row = AccessToken.objects.get()
    assert row.revoked_reason == "user deactivated"
    assert status_of(portal, alice_instance, token_of(alice_kubeconfig)) == 401
    assert carol.access_tokens.count() == 0


def test_the_audit_trail_is_kept_for_the_retention_only(alice, alice_instance, settings,
                                                        alice_kubeconfig):
    kubectl(alice_kubeconfig, "get", "pods")
    # The audit row is written once the answer is sent: kubectl may have finished first.
    wait_for(lambda: ProxyRequest.objects.filter(verb="list").exists(), timeout=5)
    settings.ACCESS_AUDIT_RETENTION_DAYS = 30
    old = ProxyRequest.objects.exclude(verb="list").first()  # a discovery request
    ProxyRequest.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    assert access.purge_proxy_requests() == 1
    assert not ProxyRequest.objects.filter(pk=old.pk).exists()
    assert ProxyRequest.objects.filter(verb="list").exists()  # recent ones stay


@pytest.mark.parametrize(("method", "path", "query", "verb"), [
    ("GET", "/api/v1/namespaces/ns/pods", "", "list"),
    ("GET", "/api/v1/namespaces/ns/pods", "watch=true", "watch"),
    ("GET", "/api/v1/namespaces/ns/pods/web", "", "get"),
    ("GET", "/api/v1/namespaces/ns/pods/web/log", "follow=true", "get"),
    ("POST", "/apis/apps/v1/namespaces/ns/deployments", "", "create"),
    ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/web", "", "patch"),
    ("DELETE", "/api/v1/namespaces/ns/configmaps", "", "deletecollection"),
    ("GET", "/api/v1/namespaces", "", "list"),
    ("GET", "/api/v1/namespaces/ns", "", "get"),
    ("GET", "/version", "", "get"),
])
def test_the_audit_names_the_kubernetes_verb(method, path, query, verb):
    assert kube_verb(method, path, query) == verb


# --- exec, attach and port-forward: WebSockets through the proxy ----------------------------


def restricted_pod(name: str, **spec) -> dict:
    """A pod that passes Pod Security `restricted` (the instance namespace enforces it)."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {**spec, "containers": [{
            "name": "app", "image": "busybox",
            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                "runAsUser": 1000, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}},
        }]},
    }


def test_kubectl_exec_goes_through_the_portal_over_a_websocket(
    emu, alice_instance, alice_kubeconfig
):
    ns = namespace_of(alice_instance)
    # Bound to a node, as the scheduler would: the emulator's "kubelet" answers exec.
    emu.create(restricted_pod("web", nodeName="node-1"), namespace=ns)
    emu.requests.reset()

    result = kubectl(alice_kubeconfig, "exec", "web", "--", "echo", "hello", "from", "web")

    assert result.stdout == "hello from web\n"
    [upgrade] = [r for r in emu.requests.records() if r.path.startswith(
        f"/api/v1/namespaces/{ns}/pods/web/exec")]
    # Upgraded as the instance's access account, never with her token or the portal's.
    assert upgrade.headers["upgrade"].lower() == "websocket"
    assert upgrade.user == f"system:serviceaccount:{ns}:gpupaas-access"
    assert "impersonate-user" not in upgrade.headers
    assert "v5.channel.k8s.io" in upgrade.headers["sec-websocket-protocol"]
    row = wait_for(lambda: ProxyRequest.objects.filter(verb="exec").first(), timeout=5)
    assert row.status == 101 and row.path.startswith(f"/api/v1/namespaces/{ns}/pods/web/exec")

    # The remote command's exit code reaches kubectl too.
    failed = kubectl(alice_kubeconfig, "exec", "web", "--", "ls", check=False)
    assert failed.returncode == 127 and "ls: not found" in failed.stderr


def test_the_api_servers_refusal_of_an_exec_reaches_kubectl(
    emu, alice_instance, alice_kubeconfig, tls, portal
):
    ns = namespace_of(alice_instance)
    emu.create(restricted_pod("pending"), namespace=ns)  # never scheduled: no node

    unscheduled = kubectl(alice_kubeconfig, "exec", "pending", "--", "echo", "x", check=False)
    missing = kubectl(alice_kubeconfig, "exec", "nope", "--", "echo", "x", check=False)

    assert unscheduled.returncode == 1
    assert "pod pending does not have a host assigned" in unscheduled.stderr
    assert 'pods "nope" not found' in missing.stderr

    # A client that can only speak SPDY is told why it cannot pass, not left to guess.
    emu.create(restricted_pod("web", nodeName="node-1"), namespace=ns)
    with httpx.Client(verify=trusting_the_portal()) as http:
        answer = http.post(
            f"{portal}/k8s/{alice_instance.pk}/api/v1/namespaces/{ns}/pods/web/exec"
            "?command=echo&stdout=true",
            headers={"Authorization": f"Bearer {token_of(alice_kubeconfig)}",
                     "Connection": "Upgrade", "Upgrade": "SPDY/3.1"})
    assert answer.status_code == 400 and "over WebSockets only" in answer.json()["message"]


def test_a_revoked_token_cannot_open_an_exec_stream(emu, alice_instance, alice_kubeconfig,
                                                   portal):
    import json

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ns = namespace_of(alice_instance)
    emu.create(restricted_pod("web", nodeName="node-1"), namespace=ns)
    access.revoke_access_tokens(instance=alice_instance, reason="test")

    refused = kubectl(alice_kubeconfig, "exec", "web", "--", "echo", "x", check=False)
    assert refused.returncode == 1 and "You must be logged in" in refused.stderr
    # The upgrade itself, as kubectl would send it once past its first request: refused with
    # a Status, never passed on.
    url = (portal.replace("https", "wss", 1) + f"/k8s/{alice_instance.pk}/api/v1/namespaces/"
           f"{ns}/pods/web/exec?command=echo&command=x&stdout=true")
    with pytest.raises(InvalidStatus) as upgrade:
        connect(url, ssl=trusting_the_portal(), subprotocols=["v5.channel.k8s.io"],
                additional_headers={"Authorization": f"Bearer {token_of(alice_kubeconfig)}"})
    assert upgrade.value.response.status_code == 401
    assert "revoked" in json.loads(upgrade.value.response.body)["message"]
    assert not [r for r in emu.requests.records() if "/exec" in r.path]


# --- against a real kube-apiserver (KUBEBUILDER_ASSETS) ------------------------------------
# The emulator enforces no RBAC: namespace scope and `auth can-i` need the real server, from
# the real-server kit's session fixture `real_kube` (skipped when there is none).


@pytest.fixture
def real_profile(request, transactional_db, tmp_path) -> ComputeProfile:
    """A namespace profile on the real API server, reached with the portal's documented
    RBAC and admission policies (its ServiceAccount token), and no impersonation rule."""
    if not os.environ.get("KUBEBUILDER_ASSETS"):
        pytest.skip("no real API server: set KUBEBUILDER_ASSETS")
    try:
        server = request.getfixturevalue("real_kube")
    except pytest.FixtureLookupError:
        pytest.skip("the real API server kit (fixture real_kube) is not on this branch")
    cluster = Cluster(name="real", display_name="Real API server", backend="kubernetes")
    cluster.set_kubeconfig(server.plane.write_kubeconfig(
        tmp_path / "portal-sa.yaml", token=server.token).read_text())
    cluster.save()
    return ComputeProfile.objects.create(
        name="real-ns", display_name="Namespace (real)", kind="namespace", cluster=cluster,
        gpus=0, cpu=1, memory_gib=1, storage_gib=1, published=True,
    )


@pytest.fixture
def real_kubeconfig(client, alice, real_profile, tls, tmp_path) -> tuple[Instance, str]:
    from gpupaas.asgi import application

    instance = running_instance(alice, real_profile, name="real")
    config, path = download_kubeconfig(client, alice, instance, tmp_path)
    with serve(application, tls=tls) as url:
        with open(path, "w") as f:
            yaml.safe_dump(aimed_at(config, url), f)
        yield instance, path


def test_on_a_real_server_the_user_is_admin_of_the_namespace_only(real_kubeconfig):
    instance, kubeconfig = real_kubeconfig
    ns = namespace_of(instance)

    kubectl(kubeconfig, "apply", "-f", "-", stdin=CONFIGMAP.format(name="hello", value="hi"))
    assert kubectl(kubeconfig, "get", "configmap", "hello", "-o",
                   "jsonpath={.data.greeting}").stdout == "hi"
    assert kubectl(kubeconfig, "auth", "can-i", "create", "deployments").stdout.strip() == "yes"
    assert kubectl(kubeconfig, "auth", "can-i", "create", "deployments", "-n", "kube-system",
                   check=False).stdout.strip() == "no"
    denied = kubectl(kubeconfig, "auth", "can-i", "delete", f"namespace/{ns}", check=False)
    assert denied.stdout.strip() == "no", denied.stderr

    refused = kubectl(kubeconfig, "get", "pods", "-n", "kube-system", check=False)
    assert refused.returncode != 0
    # The API server refused it, naming the instance's access account: not the portal.
    assert (f'User "system:serviceaccount:{ns}:gpupaas-access" cannot list resource "pods"'
            in refused.stderr)
    wait_for(lambda: ProxyRequest.objects.filter(
        status=403, path__contains="/namespaces/kube-system/").exists(), timeout=5)


def test_on_a_real_server_exec_is_upgraded_as_the_user_and_its_answer_reaches_kubectl(
    real_kubeconfig
):
    """No kubelet runs beside the test server, so no exec can complete: what is proven is
    that the WebSocket upgrade reaches the API server as the user, and its answer reaches
    kubectl (a pod not scheduled; a scheduled one whose node has no kubelet to upgrade to;
    another namespace forbidden)."""
    instance, kubeconfig = real_kubeconfig
    import json

    nowhere = restricted_pod("nowhere", nodeSelector={"gpupaas.test/no-such-node": "x"})
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(nowhere))
    unscheduled = kubectl(kubeconfig, "exec", "nowhere", "--", "echo", "x", check=False)
    assert "pod nowhere does not have a host assigned" in unscheduled.stderr

    # The real scheduler binds this one to one of the kit's stand-in nodes, whose kubelet
    # does not exist: the API server tries to upgrade to it, and says so.
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(restricted_pod("bound")))
    wait_for(lambda: kubectl(kubeconfig, "get", "pod", "bound", "-o",
                             "jsonpath={.spec.nodeName}").stdout, timeout=30)
    bound = kubectl(kubeconfig, "exec", "bound", "--", "echo", "x", check=False)
    assert bound.returncode == 1 and "unable to upgrade connection" in bound.stderr
    # kubectl reads the pod before exec; the upgrade itself, as kubectl sends it, is refused
    # by the API server (RBAC on pods/exec), and that answer comes back whole.
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with open(kubeconfig) as f:
        server = yaml.safe_load(f)["clusters"][0]["cluster"]["server"]
    url = (server.replace("https", "wss", 1)
           + "api/v1/namespaces/kube-system/pods/etcd/exec?command=sh&stdout=true")
    with pytest.raises(InvalidStatus) as refused:
        connect(url, ssl=trusting_the_portal(), subprotocols=["v5.channel.k8s.io"],
                additional_headers={"Authorization": f"Bearer {token_of(kubeconfig)}"})
    assert refused.value.response.status_code == 403
    status = json.loads(refused.value.response.body)
    assert (f'User "system:serviceaccount:{namespace_of(instance)}:gpupaas-access" cannot'
            in status["message"])
    assert '"pods/exec"' in status["message"] and status["reason"] == "Forbidden"
    assert wait_for(lambda: ProxyRequest.objects.filter(verb="exec", status=403).exists(),
                    timeout=5)
    assert ProxyRequest.objects.filter(verb="exec", status=400).exists()


def test_on_a_real_server_asking_to_be_someone_else_changes_nothing(real_kubeconfig):
    _, kubeconfig = real_kubeconfig
    refused = kubectl(kubeconfig, "get", "secrets", "-n", "kube-system", "--as", "admin",
                      "--as-group", "system:masters", check=False)
    assert refused.returncode != 0
    assert 'User "test-portal:user:alice" cannot list resource "secrets"' in refused.stderr


@pytest.mark.browser
def test_in_a_browser_the_instance_page_downloads_a_kubeconfig_and_revokes_it(
    alice_instance, portal_server, page
):
    from .conftest import PASSWORD

    page.goto(portal_server.url + "/accounts/login/")
    page.fill("#id_login", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{portal_server.url}/instances/{alice_instance.pk}/")
    page.wait_for_selector("text=kubectl sends tokens over HTTPS only")  # a plain-HTTP server
    with page.expect_download() as download:
        page.click("button:has-text('Download kubeconfig')")
    config = yaml.safe_load(Path(download.value.path()).read_text())
    assert config["clusters"][0]["cluster"]["server"].endswith(f"/k8s/{alice_instance.pk}/")

    # No database reads from here on (see the `page` fixture): the page tells it all.
    prefix = config["users"][0]["user"]["token"][:10]
    page.reload()
    page.wait_for_selector(f"#access-tokens >> text={prefix}…")
    page.click("#access-tokens button:has-text('Revoke')")
    page.wait_for_selector(f"text=Token {prefix}… revoked.")
    assert "revoked (revoked by alice)" in page.inner_text("#access-tokens")


# --- collaborators ------------------------------------------------------------------------


def test_a_collaborator_without_a_role_reaches_the_shared_instance_until_removed(
    client, alice, portal, alice_instance, tmp_path
):
    from .conftest import make_user
    from .test_collaborators import share_with

    carol = make_user("carol", group=None)  # a guest-like collaborator: no role of her own
    collaborator = share_with(alice_instance, alice, carol)
    config, _ = download_kubeconfig(client, carol, alice_instance, tmp_path)
    token = config["users"][0]["user"]["token"]
    assert status_of(portal, alice_instance, token) == 200

    collaborators.remove_collaborator(collaborator=collaborator, by=alice)

    assert status_of(portal, alice_instance, token) == 401
    row = AccessToken.objects.get(user=carol)
    assert row.revoked_at is not None and row.revoked_reason == "access to the instance removed"


def test_every_proxied_answer_carries_its_request_id(portal, http, alice_instance,
                                                     alice_kubeconfig):
    """As every page: the client's X-Request-ID when it is plain, else a new one, on the
    answer (and the proxy's log lines), whether the request was forwarded or refused."""
    token = token_of(alice_kubeconfig)
    url = f"{portal}/k8s/{alice_instance.pk}/api"
    granted = http.get(url, headers={"Authorization": f"Bearer {token}",
                                     "X-Request-ID": "kubectl-run-7"})
    assert granted.status_code == 200 and granted.headers["X-Request-ID"] == "kubectl-run-7"
    refused = http.get(url, headers={"X-Request-ID": "not plain; injected=1"})
    assert refused.status_code == 401
    made_up = refused.headers["X-Request-ID"]
    assert made_up != "not plain; injected=1" and len(made_up) == 32 and made_up.isalnum()
    again = http.get(url, headers={"Authorization": f"Bearer {token}"})
    assert again.headers["X-Request-ID"] not in (made_up, "kubectl-run-7")


@pytest.mark.parametrize("forwarded", ["not-an-ip", "6.6.6.6", "x" * 4000, "6.6.6.6, 7.7.7.7"])
def test_a_forged_forwarded_address_is_neither_recorded_nor_an_error(
        emu, portal, http, alice_instance, alice_kubeconfig, forwarded):
    """Through /k8s/, with no trusted proxy: the write goes through and its audit row names
    the real peer, whatever X-Forwarded-For says (it once lost the row for `not-an-ip`)."""
    ns = namespace_of(alice_instance)
    answer = http.post(
        f"{portal}/k8s/{alice_instance.pk}/api/v1/namespaces/{ns}/configmaps",
        json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "forged"}},
        headers={"Authorization": f"Bearer {token_of(alice_kubeconfig)}",
                 "X-Forwarded-For": forwarded})
    assert answer.status_code == 201, answer.text
    row = wait_for(lambda: ProxyRequest.objects.filter(verb="create", status=201).first(),
                   timeout=5)
    assert row.client_ip == "127.0.0.1"


def test_an_access_account_made_again_costs_the_user_nothing(
        emu, portal, http, alice_instance, alice_kubeconfig):
    """Its tokens die with the account (a real server binds them to its uid; the emulator
    answers 401 too): the proxy asks for a new token and sends the request again, once."""
    ns = namespace_of(alice_instance)
    url = f"{portal}/k8s/{alice_instance.pk}/api/v1/namespaces/{ns}/configmaps"
    headers = {"Authorization": f"Bearer {token_of(alice_kubeconfig)}"}
    assert http.get(url, headers=headers).status_code == 200
    emu.delete_object("ServiceAccount", "gpupaas-access", ns)
    emu.create({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "gpupaas-access"}}, namespace=ns)
    emu.requests.reset()

    assert http.get(url, headers=headers).status_code == 200
    statuses = [r.status for r in emu.requests.records() if r.path.startswith(
        f"/api/v1/namespaces/{ns}/configmaps")]
    assert statuses == [401, 200]  # the stale token, then a fresh one
    assert any("/serviceaccounts/gpupaas-access/token" in r.path
               for r in emu.requests.records())

    # Not one token per request, whatever a client does: within RENEW_EVERY_S the refusal
    # is the answer.
    emu.delete_object("ServiceAccount", "gpupaas-access", ns)
    emu.create({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "gpupaas-access"}}, namespace=ns)
    emu.requests.reset()
    assert http.get(url, headers=headers).status_code == 401
    assert not [r for r in emu.requests.records() if "/token" in r.path]
