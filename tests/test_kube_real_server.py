"""What only a real kube-apiserver proves: no host hijack (a tenant with `admin` in its
namespace cannot create an Ingress for another tenant's notebook host: the portal's
ValidatingAdmissionPolicy refuses it), LimitRange defaults that never refuse a user's pod,
404s told apart, reconcile on lists whose items carry no kind, and the real scheduler's and
controllers' refusals said in words.

On the session's control plane (fixture `real_kube`, tests/kit/envtest.py), with the portal
connecting as its ServiceAccount bound to the RBAC docs/kubernetes.md documents, never as
admin; tenants are played by impersonating the instance's access ServiceAccount (who the
portal's proxy forwards as), set-up by the admin credential. Skips without
the envtest binaries in KUBEBUILDER_ASSETS."""

import time
from dataclasses import replace

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from clusters.backends import get_backend
from instances import services
from instances.models import ComputeProfile
from notebooks import services as notebook_services
from notebooks.models import NotebookProfile

from .conftest import wait_for, workspace_of
from .kit import envtest
from .kube_fixtures import launch, provision


@pytest.fixture
def emu(real):
    """The cluster fixtures of tests/kube_fixtures.py, on the real server only."""
    return real


@pytest.fixture
def real_cluster(cluster):
    cluster.ingress_domain = "apps.example.com"
    cluster.display_name = "Real API server"
    cluster.save()
    return cluster


def client_as(real, user: str | None = None) -> k8s.ApiClient:
    """The admin credential, or a tenant played by impersonating `user` with it."""
    api = k8s.ApiClient(real.client_configuration())
    if user:
        api.set_default_header("Impersonate-User", user)
    return api


def tenant_of(namespace: str) -> str:
    """Whom the portal's proxy forwards an instance's users as."""
    return f"system:serviceaccount:{namespace}:gpupaas-access"


def ingress(host: str) -> dict:
    return {"metadata": {"generateName": "grab-"}, "spec": {"rules": [{"host": host, "http": {
        "paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {
            "name": "mine", "port": {"number": 80}}}}]}}]}}


def test_a_tenant_cannot_claim_another_tenants_notebook_host(real, real_cluster, alice, bob,
                                                             settings):
    profile = ComputeProfile.objects.create(
        name="ns-1", display_name="ns 1", kind="namespace", cluster=real_cluster, gpus=1,
        cpu=4, memory_gib=16, storage_gib=50, published=True)
    mallory = provision(launch(alice, profile, name="mine"))
    victim = provision(launch(bob, profile, name="theirs"))
    assert mallory.status == victim.status == "running", mallory.status_message
    ns = f"alice-mine-{mallory.pk}"
    as_alice = k8s.NetworkingV1Api(client_as(real, tenant_of(ns)))
    rbac = k8s.RbacAuthorizationV1Api(client_as(real))
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
    assert "gpupaas-ingress-hosts" in body
    for host in ("portal.apps.example.com", f"x-i{mallory.pk}.apps.example.com.evil.com"):
        with pytest.raises(ApiException):
            as_alice.create_namespaced_ingress(ns, ingress(host))


@pytest.fixture
def real_profile(real_cluster) -> ComputeProfile:
    return ComputeProfile.objects.create(
        name="ns-2", display_name="ns 2", kind="namespace", cluster=real_cluster, gpus=0,
        cpu=8, memory_gib=16, storage_gib=50, published=True)


def test_a_users_pod_asking_more_than_the_default_without_limits_is_admitted(
    real, real_profile, alice
):
    instance = provision(launch(alice, real_profile, name="work"))
    ns = f"alice-work-{instance.pk}"
    core = k8s.CoreV1Api(client_as(real))
    wait_for(lambda: (core.read_namespaced_resource_quota("instance-quota", ns).status
                      or k8s.V1ResourceQuotaStatus()).hard, timeout=90)
    pod = k8s.CoreV1Api(client_as(real, tenant_of(ns))).create_namespaced_pod(ns, {
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


@pytest.fixture
def without_cluster_api(real):
    """Cluster API uninstalled for one test (the session's upstream Cluster CRD deleted), and
    installed again from the same file after it."""
    name = "clusters.cluster.x-k8s.io"
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    crd = next(doc for file in sorted(real.server.crds.rglob("*.yaml"))
               for doc in yaml.safe_load_all(file.read_text())
               if doc and doc.get("kind") == "CustomResourceDefinition"
               and doc["metadata"]["name"] == name)

    def gone() -> bool:
        try:
            real.plane.admin_request("GET", path)
        except envtest.AdminError as exc:
            return exc.status == 404
        return False

    # Clusters other tests left behind keep Cluster API's finalizer, which no controller
    # removes here: the CRD could never finish deleting, and every later create would be
    # refused. Released first, as Cluster API would once it had cleaned up.
    for item in real.plane.admin_request(
            "GET", "/apis/cluster.x-k8s.io/v1beta2/clusters").get("items") or []:
        meta = item["metadata"]
        real.plane.admin_request(
            "PATCH", f"/apis/cluster.x-k8s.io/v1beta2/namespaces/{meta['namespace']}/clusters/"
            f"{meta['name']}", {"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json")
    real.plane.admin_request("DELETE", path)
    try:
        wait_for(gone, timeout=90)
        yield
    finally:
        real.plane.apply_admin(crd)
        wait_for(lambda: _served(real, "/apis/cluster.x-k8s.io/v1beta2/clusters"), timeout=60)


def _served(real, path: str) -> bool:
    try:
        real.plane.admin_request("GET", path)
    except envtest.AdminError:
        return False
    return True


def test_on_a_real_server_reconcile_restores_drift_and_404s_are_told_apart(
    real, real_cluster, real_profile, alice, request
):
    instance = provision(launch(alice, real_profile, name="drift"))
    ns = f"alice-drift-{instance.pk}"
    core = k8s.CoreV1Api(client_as(real))
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
    if not real.server.crds:
        pytest.skip(envtest.CRDS_SKIP)
    # An earlier test's gpupaas-clusters may still be on its way out.
    wait_for(lambda: real.get("Namespace", "gpupaas-clusters") is None, timeout=90)
    first = provision(launch(alice, dedicated, name="big"))
    assert first.status_message == (
        "The namespace gpupaas-clusters is missing on Real API server; an administrator must "
        "create it.")

    # The namespace without the portal's binding there, then with it, as documented.
    admin = client_as(real)
    k8s.CoreV1Api(admin).create_namespace({"metadata": {"name": "gpupaas-clusters"}})
    unbound = provision(launch(alice, dedicated, name="unbound"))
    assert unbound.status_message == (
        "The portal may not manage Cluster API clusters in gpupaas-clusters on Real API "
        "server; an administrator must bind it to gpupaas-portal-cluster-api there.")
    k8s.RbacAuthorizationV1Api(admin).create_namespaced_role_binding("gpupaas-clusters", {
        "metadata": {"name": "gpupaas-portal"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "gpupaas-portal-cluster-api"},
        "subjects": [{"kind": "ServiceAccount", "name": envtest.PORTAL_ACCOUNT,
                      "namespace": envtest.PORTAL_NAMESPACE}]})
    request.getfixturevalue("without_cluster_api")
    # The server stops serving the kind a moment after its CRD is gone.
    wait_for(lambda: provision(launch(alice, dedicated, name=f"b{time.monotonic_ns()}"))
             .status_message.startswith("Cluster API"), timeout=90)
    second = provision(launch(alice, dedicated, name="big2"))
    assert second.status_message == (
        "Cluster API is not installed on Real API server; dedicated clusters need it.")


def written_by_portal(workload) -> tuple:
    """A workload as the portal wrote it, whatever its controller wrote into its status
    since: its spec's generation and when the portal's field manager last changed it."""
    return workload.metadata.generation, [
        (f.operation, f.time) for f in workload.metadata.managed_fields or []
        if f.manager == "gpupaas"]


@pytest.fixture
def minimal_profile(db) -> NotebookProfile:
    return NotebookProfile.objects.create(
        name="minimal", display_name="Minimal", image="quay.io/jupyter/minimal-notebook",
        default_cpu=1, default_memory_gib=2, storage_gib=5, published=True)


def test_a_notebooks_objects_are_accepted_and_applying_again_changes_nothing(
    real, real_cluster, real_profile, alice, minimal_profile, settings
):
    instance = provision(launch(alice, real_profile, name="nb"))
    notebook = notebook_services.deploy_notebook(instance=instance, name="explore",
                                                 profile=minimal_profile, by=alice, gpus=0)
    notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
    assert (notebook.status, notebook.step) == ("deploying", "created"), notebook.status_message
    ns, name = f"alice-nb-{instance.pk}", f"nb-explore-{notebook.pk}"
    api = client_as(real)
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)

    def versions() -> list:
        return [core.read_namespaced_secret(f"{name}-token", ns).metadata.resource_version,
                core.read_namespaced_service(name, ns).metadata.resource_version,
                k8s.NetworkingV1Api(api).read_namespaced_ingress(
                    name, ns).metadata.resource_version,
                # The controllers write its status meanwhile: what the portal owns.
                written_by_portal(apps.read_namespaced_deployment(name, ns))]

    before = versions()
    get_backend(real_cluster).ensure_notebook(notebook_services.notebook_spec(notebook))
    # Seen on 1.36.2: a PersistentVolumeClaim gets a new resourceVersion on an apply that
    # changes nothing in it, so it is left out; every other object stays as it was.
    # (Reconcile applies only what is missing, so this costs nothing in steady state.)
    assert versions() == before
    assert before[-1][1], "the Deployment has no fields of the portal's field manager"
    # The notebook reconcile finds a Service's slices by the portal's labels: the
    # controller copies the Service's labels onto them.
    selector = f"gpupaas.io/portal={settings.PORTAL_ID},kubernetes.io/service-name={name}"
    wait_for(lambda: k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector=selector).items, timeout=90)


# A virtual cluster's objects on a real server, with Flux's CRDs: tests/test_kube_clusters.py.


def test_scheduling_and_quota_refusals_are_said_in_words(real, real_cluster, alice,
                                                         minimal_profile):
    """The real scheduler and ReplicaSet controller refuse; the notebook says why. The
    session's GPU nodes offer NVIDIA-H200 and NVIDIA-A100, none NVIDIA-B200."""
    real.stand_ins.provide_volumes = False  # as on a cluster with no StorageClass
    profile = ComputeProfile.objects.create(
        name="b200", display_name="B200", kind="namespace", cluster=real_cluster, gpus=2,
        gpu_model="NVIDIA-B200", cpu=8, memory_gib=32, storage_gib=50, published=True)
    instance = provision(launch(alice, profile, name="h"))
    notebook = notebook_services.deploy_notebook(instance=instance, name="wants",
                                                 profile=minimal_profile, by=alice, gpus=1)
    notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
    backend = get_backend(real_cluster)
    spec = notebook_services.notebook_spec(notebook)

    def state_message() -> str:
        return backend.notebook_state(spec).message

    # The home volume's claim stays unbound, and the notebook says so.
    wait_for(lambda: state_message().startswith("Waiting for its home volume"), timeout=60)
    real.stand_ins.provide_volumes = True
    wait_for(lambda: state_message().startswith("Unschedulable"), timeout=60)
    assert state_message() == (
        "Unschedulable: no node of the cluster offers NVIDIA-B200 GPUs; waiting for one.")

    # More GPUs than the instance's quota (past the portal's own check): the ReplicaSet
    # cannot create the pod.
    greedy = replace(spec, key="nb-990", name="greedy", gpus=5)
    backend.ensure_notebook(greedy)
    wait_for(lambda: backend.notebook_state(greedy).phase == "failed", timeout=60)
    state = backend.notebook_state(greedy)
    assert state.message == "Quota exceeded: the notebook does not fit the instance's quota."
    assert "exceeded quota: instance-quota" in state.detail
