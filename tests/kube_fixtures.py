"""Fixtures and helpers shared by the Kubernetes backend tests: an emulated cluster driven by
the official client, a portal Cluster pointing at it, and one profile per instance kind.

tests/conftest.py imports the fixtures, so every test module sees them."""

import contextlib
import secrets

import pytest
from kubernetes import client as k8s

from clusters.models import Cluster
from instances import services
from instances.models import ComputeProfile, Instance
from notebooks import services as notebook_services
from notebooks.models import NotebookProfile

from .conftest import workspace_of
from .kit import controllers, envtest, inner, kubeemu, targets


@pytest.fixture
def emu():
    with kubeemu.start() as emulator:
        emulator.add_upstream_kinds()
        yield emulator


@pytest.fixture
def real(real_kube):
    """The session's real control plane as one test sees it (tests/kit/targets.py): the
    portal's ServiceAccount token through the counting proxy; what the test made is removed
    after it."""
    with targets.on_real_server(real_kube) as target:
        yield target


@pytest.fixture
def api(emu):
    with k8s.ApiClient(emu.client_configuration()) as api_client:
        yield api_client


@pytest.fixture
def cluster(emu, db, tmp_path, settings) -> Cluster:
    settings.KUBE_RETRY_BASE_S = 0.01
    # On the real server a portal id per test: namespaces of earlier tests may still be
    # terminating and must not count as this portal's orphans.
    real = isinstance(emu, targets.RealTarget)
    settings.PORTAL_ID = f"test-portal-{secrets.token_hex(3)}" if real else "test-portal"
    cluster = Cluster(name="emu", display_name="Emulated cluster", backend="kubernetes")
    cluster.set_kubeconfig(emu.kubeconfig(tmp_path / "kubeconfig").read_text())
    cluster.save()
    return cluster


@pytest.fixture
def profiles(cluster) -> dict[str, ComputeProfile]:
    def make(kind: str, gpus: int = 2) -> ComputeProfile:
        return ComputeProfile.objects.create(
            name=f"{kind}-{gpus}", display_name=f"{kind} {gpus}", kind=kind, cluster=cluster,
            gpus=gpus, cpu=8, memory_gib=64, storage_gib=100, published=True,
            cluster_class="gpu-cluster", kubernetes_version="v1.31.0",
        )

    return {kind: make(kind) for kind in ("namespace", "vcluster", "dedicated")}


def launch(user, profile, name="train", workspace=None) -> Instance:
    workspace = workspace or workspace_of(user)
    return services.launch_instance(workspace=workspace, name=name, profile=profile, by=user)


def provision(instance: Instance) -> Instance:
    return services.provision_instance(instance_id=instance.pk)


def namespace_of(emu, instance: Instance) -> dict:
    [ns] = emu.objects("Namespace", label_selector=f"gpupaas.io/instance={instance.key}")
    return ns


@pytest.fixture
def notebook_setup(emu, alice, profiles, cluster):
    cluster.ingress_domain = "apps.example.com"
    cluster.save()
    instance = provision(launch(alice, profiles["namespace"]))
    profile = NotebookProfile.objects.create(
        name="minimal", display_name="Minimal", image="quay.io/jupyter/minimal-notebook",
        default_cpu=2, default_memory_gib=4, published=True)
    return instance, profile


def deploy_notebook(alice, instance, profile, name="explore"):
    return notebook_services.deploy_notebook(instance=instance, name=name, profile=profile,
                                             by=alice, gpus=1)


# What Pod Security `restricted` asks of a container: pods the tests create must pass it,
# as the emulator and a real server both enforce it in the portal's namespaces.
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


# --- virtual and dedicated clusters: the controllers and the cluster inside ------------------


@pytest.fixture
def upstream(emu):
    """Flux, Cluster API and CAAPH are served: declared on the emulator, the upstream CRDs on
    the real server (skips there without ENVTEST_CRDS)."""
    if getattr(emu, "real", False) and not emu.server.crds:
        pytest.skip(envtest.CRDS_SKIP)
    return emu


@pytest.fixture
def inside(emu, request):
    """The cluster inside a virtual or dedicated instance: a second real control plane next
    to the real server, an emulator over TLS next to the emulator."""
    if getattr(emu, "real", False):
        yield request.getfixturevalue("real_inner").target
        return
    cluster = inner.EmulatedInner()
    try:
        yield cluster
    finally:
        cluster.close()


def admin_api(emu) -> k8s.ApiClient:
    return k8s.ApiClient(emu.client_configuration())


@pytest.fixture
def flux(upstream, inside, cluster, settings):
    """Flux's controllers (and vcluster's secret), played for this test's portal."""
    with admin_api(upstream) as api:
        yield controllers.Flux(api, inside.kubeconfig,
                               selector=f"gpupaas.io/portal={settings.PORTAL_ID}")


@pytest.fixture
def capi(upstream, inside, cluster, settings):
    """Cluster API's and CAAPH's controllers, played for this test's portal, with the Cluster
    API namespace made as docs/kubernetes.md has the administrator make it (on the real
    server a fresh one per test, since a namespace takes a while to go)."""
    if getattr(upstream, "real", False):
        cluster.capi_namespace = f"capi-{secrets.token_hex(3)}"
        cluster.save()
    ns = cluster.capi_namespace
    with admin_api(upstream) as api:
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
        if getattr(upstream, "real", False):
            k8s.RbacAuthorizationV1Api(api).create_namespaced_role_binding(ns, {
                "metadata": {"name": "gpupaas-portal"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "gpupaas-portal-cluster-api"},
                "subjects": [{"kind": "ServiceAccount", "name": envtest.PORTAL_ACCOUNT,
                              "namespace": envtest.PORTAL_NAMESPACE}]})
        yield controllers.ClusterApi(api, inside.kubeconfig,
                                     selector=f"gpupaas.io/portal={settings.PORTAL_ID}")
        # What the test left: its Clusters keep Cluster API's finalizer, which only the kit's
        # controller (stopped now) drops. Released, so that nothing later waits on them.
        custom = k8s.CustomObjectsApi(api)
        with contextlib.suppress(k8s.ApiException):  # a test that uninstalled Cluster API
            for item in custom.list_namespaced_custom_object(
                    "cluster.x-k8s.io", "v1beta2", ns, "clusters").get("items") or []:
                custom.patch_namespaced_custom_object(
                    "cluster.x-k8s.io", "v1beta2", ns, "clusters", item["metadata"]["name"],
                    {"metadata": {"finalizers": None}})
