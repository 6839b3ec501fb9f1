"""What only a real kube-apiserver proves: no host hijack (a tenant with `admin` in its
namespace cannot create an Ingress for another tenant's notebook host: the portal's
ValidatingAdmissionPolicy refuses it), LimitRange defaults that never refuse a user's pod,
404s told apart, and reconcile on lists whose items carry no kind.

Needs the envtest binaries (etcd, kube-apiserver) in KUBEBUILDER_ASSETS; skips without them.
The small control plane here is only what admission needs; the shared real-server fixture of
the backend suite can replace it."""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from clusters.models import Cluster
from instances.models import ComputeProfile

from .conftest import wait_for, workspace_of
from .kube_fixtures import launch, provision

ASSETS = os.environ.get("KUBEBUILDER_ASSETS", "")
pytestmark = pytest.mark.skipif(
    not (ASSETS and (Path(ASSETS) / "kube-apiserver").exists()),
    reason="no real API server: set KUBEBUILDER_ASSETS to the envtest binaries",
)
ADMIN_TOKEN = "portal-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    root = tmp_path_factory.mktemp("apiserver")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "sa.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (root / "tokens.csv").write_text(f'{ADMIN_TOKEN},portal,portal,"system:masters"\n')
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    logs = (root / "etcd.log").open("w"), (root / "apiserver.log").open("w")
    etcd = subprocess.Popen(
        [f"{ASSETS}/etcd", f"--data-dir={root / 'etcd'}", f"--listen-client-urls={etcd_url}",
         f"--advertise-client-urls={etcd_url}",
         f"--listen-peer-urls=http://127.0.0.1:{peer_port}"],
        stdout=logs[0], stderr=subprocess.STDOUT)
    server = subprocess.Popen(
        [f"{ASSETS}/kube-apiserver", f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
         f"--secure-port={api_port}", f"--cert-dir={root / 'certs'}",
         f"--token-auth-file={root / 'tokens.csv'}", "--authorization-mode=RBAC",
         "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
         "ResourceQuota,PodSecurity,ValidatingAdmissionPolicy",
         "--service-cluster-ip-range=10.96.0.0/24",
         "--service-account-issuer=https://kubernetes.default.svc",
         f"--service-account-key-file={root / 'sa.key'}",
         f"--service-account-signing-key-file={root / 'sa.key'}"],
        stdout=logs[1], stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{api_port}"
    (root / "kubeconfig").write_text(yaml.safe_dump(kubeconfig(url)))
    # Only the controllers admission depends on: the aggregated `admin` ClusterRole the
    # tenants hold, quota usage (quota admission refuses pods until it is computed) and the
    # `default` ServiceAccount (the ServiceAccount admission plugin requires it); and the
    # EndpointSlice controller, to show it labels slices like their Service; Deployments and
    # ReplicaSets, so pods are created (and refused) as in production, and the scheduler.
    controllers = subprocess.Popen(
        [f"{ASSETS}/kube-controller-manager", f"--kubeconfig={root / 'kubeconfig'}",
         "--controllers=clusterrole-aggregation,resourcequota,serviceaccount,endpointslice,"
         "deployment,replicaset,persistentvolume-binder",
         "--leader-elect=false",
         "--bind-address=127.0.0.1", f"--secure-port={free_port()}"],
        stdout=logs[1], stderr=subprocess.STDOUT)
    scheduler = subprocess.Popen(
        [f"{ASSETS}/kube-scheduler", f"--kubeconfig={root / 'kubeconfig'}",
         f"--authentication-kubeconfig={root / 'kubeconfig'}",
         f"--authorization-kubeconfig={root / 'kubeconfig'}", "--leader-elect=false",
         "--bind-address=127.0.0.1", f"--secure-port={free_port()}"],
        stdout=logs[1], stderr=subprocess.STDOUT)
    http = urllib3.PoolManager(cert_reqs="CERT_NONE")
    urllib3.disable_warnings()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = http.request("GET", f"{url}/readyz",
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                      timeout=2)
                if answer.status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            assert server.poll() is None, (root / "apiserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (root / "apiserver.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        for process in (scheduler, controllers, server, etcd):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def kubeconfig(url: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "real",
        "clusters": [{"name": "real", "cluster": {"server": url,
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "portal", "user": {"token": ADMIN_TOKEN}}],
        "contexts": [{"name": "real", "context": {"cluster": "real", "user": "portal"}}],
    }


def client_as(url: str, user: str | None = None) -> k8s.ApiClient:
    configuration = k8s.Configuration(host=url, api_key={"authorization": f"Bearer {ADMIN_TOKEN}"})
    configuration.verify_ssl = False
    api = k8s.ApiClient(configuration)
    if user:
        api.set_default_header("Impersonate-User", user)
    return api


@pytest.fixture
def real_cluster(apiserver, db, settings, tmp_path) -> Cluster:
    settings.PORTAL_ID = "real-test"
    settings.KUBE_RETRY_BASE_S = 0.01
    cluster = Cluster(name="real", display_name="Real API server", backend="kubernetes",
                      ingress_domain="apps.example.com")
    cluster.set_kubeconfig(yaml.safe_dump(kubeconfig(apiserver)))
    cluster.save()
    return cluster


def ingress(host: str) -> dict:
    return {"metadata": {"generateName": "grab-"}, "spec": {"rules": [{"host": host, "http": {
        "paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {
            "name": "mine", "port": {"number": 80}}}}]}}]}}


def test_a_tenant_cannot_claim_another_tenants_notebook_host(apiserver, real_cluster, alice,
                                                             bob):
    profile = ComputeProfile.objects.create(
        name="ns-1", display_name="ns 1", kind="namespace", cluster=real_cluster, gpus=1,
        cpu=4, memory_gib=16, storage_gib=50, published=True)
    mallory = provision(launch(alice, profile, name="mine"))
    victim = provision(launch(bob, profile, name="theirs"))
    assert mallory.status == victim.status == "running", mallory.status_message
    ns = f"alice-mine-{mallory.pk}"
    as_alice = k8s.NetworkingV1Api(client_as(apiserver, "alice"))
    rbac = k8s.RbacAuthorizationV1Api(client_as(apiserver))
    wait_for(lambda: any("ingresses" in (rule.resources or [])
                         for rule in rbac.read_cluster_role("admin").rules or []), timeout=90)

    # Her own notebook hosts are hers to route (once the policy is in force: it is read by
    # the server within a second or two).
    own = f"nb-x-1-abcdefghij-i{mallory.pk}.apps.example.com"
    as_alice.create_namespaced_ingress(ns, ingress(own))

    stolen = f"nb-x-9-abcdefghij-i{victim.pk}.apps.example.com"
    deadline = time.monotonic() + 20
    while True:
        try:
            as_alice.create_namespaced_ingress(ns, ingress(stolen))
        except ApiException as exc:
            refusal = exc
            break
        assert time.monotonic() < deadline, "the host of bob's notebooks was granted to alice"
        time.sleep(0.5)
    assert refusal.status in (403, 422)
    body = refusal.body.decode() if isinstance(refusal.body, bytes) else refusal.body
    assert "gpupaas-real-test-ingress-hosts" in body
    for host in ("portal.apps.example.com", f"x-i{mallory.pk}.apps.example.com.evil.com"):
        with pytest.raises(ApiException):
            as_alice.create_namespaced_ingress(ns, ingress(host))


@pytest.fixture
def real_profile(real_cluster) -> ComputeProfile:
    return ComputeProfile.objects.create(
        name="ns-2", display_name="ns 2", kind="namespace", cluster=real_cluster, gpus=0,
        cpu=8, memory_gib=16, storage_gib=50, published=True)


def test_a_users_pod_asking_more_than_the_default_without_limits_is_admitted(
    apiserver, real_profile, alice
):
    instance = provision(launch(alice, real_profile, name="work"))
    ns = f"alice-work-{instance.pk}"
    core = k8s.CoreV1Api(client_as(apiserver))
    wait_for(lambda: (core.read_namespaced_resource_quota("instance-quota", ns).status
                      or k8s.V1ResourceQuotaStatus()).hard, timeout=90)
    pod = k8s.CoreV1Api(client_as(apiserver, "alice")).create_namespaced_pod(ns, {
        "metadata": {"name": "big"},
        "spec": {"containers": [{
            "name": "train", "image": "python:3.12",
            "resources": {"requests": {"cpu": "4", "memory": "6Gi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}},
        }]},
    })
    assert pod.spec.containers[0].resources.limits == {"cpu": "8", "memory": "16Gi"}


def test_on_a_real_server_reconcile_restores_drift_and_404s_are_told_apart(
    apiserver, real_cluster, real_profile, alice
):
    from instances import services

    instance = provision(launch(alice, real_profile, name="drift"))
    ns = f"alice-drift-{instance.pk}"
    core = k8s.CoreV1Api(client_as(apiserver))
    core.delete_namespaced_resource_quota("instance-quota", ns)

    summary = services.reconcile_instances()

    assert summary.errors == 0
    assert core.read_namespaced_resource_quota("instance-quota", ns)
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 100, 100
    workspace.save()
    dedicated = ComputeProfile.objects.create(
        name="big", display_name="big", kind="dedicated", cluster=real_cluster, gpus=1,
        cpu=64, memory_gib=512, storage_gib=500, published=True, cluster_class="gpu")
    first = provision(launch(alice, dedicated, name="big"))
    assert first.status_message == ("Cluster API Add-on Provider Helm (CAAPH) is not installed "
                                    "on Real API server; dedicated clusters need it.")

    # Cluster API's and CAAPH's CRDs, reduced to what the portal writes: play their
    # installation (tests/test_kube_clusters.py loads the upstream ones).
    extensions = k8s.ApiextensionsV1Api(client_as(apiserver))
    for plural, kind, group, version in (
            ("clusters", "Cluster", "cluster.x-k8s.io", "v1beta2"),
            ("helmchartproxies", "HelmChartProxy", "addons.cluster.x-k8s.io", "v1alpha1")):
        extensions.create_custom_resource_definition({
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                               "listKind": f"{kind}List"},
                     "versions": [{"name": version, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "x-kubernetes-preserve-unknown-fields": True}}}]}})
        wait_for(lambda name=f"{plural}.{group}": any(
            c.type == "Established" and c.status == "True" for c in (
                extensions.read_custom_resource_definition(name).status.conditions or [])),
            timeout=90)
    wait_for(lambda: provision(launch(alice, dedicated, name=f"b{time.monotonic_ns()}"))
             .status_message.startswith("The namespace"), timeout=90)
    second = provision(launch(alice, dedicated, name="big2"))
    assert second.status_message == (
        "The namespace gpupaas-clusters is missing on Real API server; an administrator must "
        "create it.")


def test_a_notebooks_objects_are_accepted_and_applying_again_changes_nothing(
    apiserver, real_cluster, real_profile, alice
):
    from clusters.backends import get_backend
    from notebooks import services as notebook_services
    from notebooks.models import NotebookProfile

    instance = provision(launch(alice, real_profile, name="nb"))
    profile = NotebookProfile.objects.create(
        name="minimal", display_name="Minimal", image="quay.io/jupyter/minimal-notebook",
        default_cpu=2, default_memory_gib=4, storage_gib=5, published=True)
    notebook = notebook_services.deploy_notebook(instance=instance, name="explore",
                                                 profile=profile, by=alice, gpus=0)
    notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
    assert (notebook.status, notebook.step) == ("deploying", "created"), notebook.status_message
    ns, name = f"alice-nb-{instance.pk}", f"nb-explore-{notebook.pk}"
    api = client_as(apiserver)
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)

    def versions() -> list[str]:
        return [core.read_namespaced_secret(f"{name}-token", ns).metadata.resource_version,
                core.read_namespaced_persistent_volume_claim(
                    f"{name}-home", ns).metadata.resource_version,
                core.read_namespaced_service(name, ns).metadata.resource_version,
                k8s.NetworkingV1Api(api).read_namespaced_ingress(
                    name, ns).metadata.resource_version,
                apps.read_namespaced_deployment(name, ns).metadata.resource_version]

    before = versions()
    get_backend(real_cluster).ensure_notebook(notebook_services.notebook_spec(notebook))
    after = versions()
    # Seen on 1.36.2: a PersistentVolumeClaim gets a new resourceVersion on an apply that
    # changes nothing in it; every other object stays as it was. (Reconcile applies only
    # what is missing, so this costs nothing in steady state.)
    assert after[:1] + after[2:] == before[:1] + before[2:]
    managers = {m.manager for m in apps.read_namespaced_deployment(name, ns).metadata
                .managed_fields}
    assert "gpupaas" in managers
    state = get_backend(real_cluster).notebook_state(notebook_services.notebook_spec(notebook))
    assert state.phase == "deploying"
    # The notebook reconcile finds a Service's slices by the portal's labels: the
    # controller copies the Service's labels onto them (here a placeholder: no pods yet).
    selector = f"gpupaas.io/portal=real-test,kubernetes.io/service-name={name}"
    wait_for(lambda: k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector=selector).items, timeout=90)


# A virtual cluster's objects on a real server, with Flux's CRDs: tests/test_kube_clusters.py.


def test_scheduling_and_quota_refusals_are_said_in_words(apiserver, real_cluster, alice):
    """The real scheduler and ReplicaSet controller refuse; the notebook says why."""
    from dataclasses import replace

    from clusters.backends import get_backend
    from notebooks import services as notebook_services
    from notebooks.models import NotebookProfile

    core = k8s.CoreV1Api(client_as(apiserver))
    core.create_node({"metadata": {"name": "gpu-a100", "labels": {
        "nvidia.com/gpu.product": "NVIDIA-A100"}}})
    core.patch_node_status("gpu-a100", {"status": {
        "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
        "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "played", "lastHeartbeatTime": "2026-11-29T00:00:00Z",
                        "lastTransitionTime": "2026-11-29T00:00:00Z"}]}})
    # A hand-made Node is tainted not-ready; this one plays a ready kubelet.
    core.patch_node("gpu-a100", {"spec": {"taints": []}})
    profile = ComputeProfile.objects.create(
        name="h200", display_name="H200", kind="namespace", cluster=real_cluster, gpus=2,
        gpu_model="NVIDIA-H200", cpu=8, memory_gib=32, storage_gib=50, published=True)
    instance = provision(launch(alice, profile, name="h"))
    notebooks = NotebookProfile.objects.create(
        name="minimal", display_name="Minimal", image="quay.io/jupyter/minimal-notebook",
        default_cpu=1, default_memory_gib=2, published=True)
    notebook = notebook_services.deploy_notebook(instance=instance, name="wants",
                                                 profile=notebooks, by=alice, gpus=1)
    notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
    backend = get_backend(real_cluster)
    spec = notebook_services.notebook_spec(notebook)

    def state_message() -> str:
        return backend.notebook_state(spec).message

    # No StorageClass here: the home volume's claim stays unbound, and the notebook says so.
    wait_for(lambda: state_message().startswith("Waiting for its home volume"), timeout=60)
    core.create_persistent_volume({"metadata": {"name": "home"}, "spec": {
        "capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
        "hostPath": {"path": "/tmp/home"},
        "claimRef": {"namespace": f"alice-h-{instance.pk}",
                     "name": f"nb-wants-{notebook.pk}-home"}}})
    wait_for(lambda: state_message().startswith("Unschedulable"), timeout=60)
    assert state_message() == (
        "Unschedulable: no node of the cluster offers NVIDIA-H200 GPUs; waiting for one.")

    # More GPUs than the instance's quota (past the portal's own check): the ReplicaSet
    # cannot create the pod.
    greedy = replace(spec, key="nb-990", name="greedy", gpus=5)
    backend.ensure_notebook(greedy)
    wait_for(lambda: backend.notebook_state(greedy).phase == "failed", timeout=60)
    state = backend.notebook_state(greedy)
    assert state.message == "Quota exceeded: the notebook does not fit the instance's quota."
    assert "exceeded quota: instance-quota" in state.detail
