"""A stolen portal token and a hostile tenant against a real kube-apiserver, each attempt
refused by the API server itself.

Real server only (KUBEBUILDER_ASSETS): the emulator authorizes every request and enforces no
admission policy, so it cannot judge any of this. The control plane of the session (fixture
`real_kube`) carries every RBAC and admission policy block of docs/kubernetes.md exactly as
shipped, and the policies' parameter (tests/kit/envtest.py, `portal_token`). The portal's
token is the one the portal itself holds. A tenant is the instance's access ServiceAccount,
with a token minted by TokenRequest: what the portal's proxy forwards a downloaded
kubeconfig's requests with. The same attempts run in CI against the policies' CEL
(tests/test_admission_policies.py); the exec-plugin kubeconfig is refused before anything
runs in CI too (tests/test_kube_clusters.py).
"""

import contextlib

import pytest
from kubernetes import client as k8s
from kubernetes import config
from kubernetes.client.rest import ApiException

from instances.models import ComputeProfile

from .kube_fixtures import launch, provision

PSA = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn", "audit")}
MANAGED = {"app.kubernetes.io/managed-by": "gpupaas"}
RESTRICTED = {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.fixture
def emu(real):
    """The cluster fixtures of tests/kube_fixtures.py, on the real server only."""
    return real


def client_with(real, tmp_path, token: str, name: str) -> k8s.ApiClient:
    path = real.plane.write_kubeconfig(tmp_path / f"{name}.yaml", token=token)
    return config.new_client_from_config(config_file=str(path))


@pytest.fixture
def stolen(real, tmp_path) -> k8s.ApiClient:
    """The portal's own ServiceAccount token, as an attacker who copied it holds it."""
    return client_with(real, tmp_path, real.server.token, "portal")


def refused(call, *args, **kwargs) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    assert caught.value.status in (401, 403, 422), caught.value
    return caught.value


def body(exc: ApiException) -> str:
    return exc.body.decode() if isinstance(exc.body, bytes) else (exc.body or "")


@pytest.fixture
def own_namespace(real, stolen):
    """A namespace the portal's token may make (labelled as its own, Pod Security
    restricted): the attacker's foothold."""
    core = k8s.CoreV1Api(stolen)
    core.create_namespace({"metadata": {"name": "foothold", "labels": {**MANAGED, **PSA}}})
    yield "foothold"
    with contextlib.suppress(ApiException):
        k8s.CoreV1Api(k8s.ApiClient(real.client_configuration())).delete_namespace("foothold")


# --- the portal's own token ----------------------------------------------------------------


def test_the_portal_token_cannot_impersonate_system_masters(stolen):
    stolen.set_default_header("Impersonate-User", "anyone")
    stolen.set_default_header("Impersonate-Group", "system:masters")
    exc = refused(k8s.CoreV1Api(stolen).list_namespaced_secret, "kube-system")
    assert "cannot impersonate" in body(exc)


def test_the_portal_token_cannot_make_itself_cluster_admin(stolen):
    binding = {"metadata": {"name": "x"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "cluster-admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "gpupaas-portal",
                             "namespace": "gpupaas-system"}]}
    refused(k8s.RbacAuthorizationV1Api(stolen).create_cluster_role_binding, binding)
    stolen.set_default_header("Impersonate-User", "anyone")
    stolen.set_default_header("Impersonate-Group", "system:masters")
    refused(k8s.RbacAuthorizationV1Api(stolen).create_cluster_role_binding, binding)


def test_the_portal_token_cannot_make_a_privileged_namespace(stolen):
    exc = refused(k8s.CoreV1Api(stolen).create_namespace, {"metadata": {
        "name": "escape", "labels": {**MANAGED,
                                     "pod-security.kubernetes.io/enforce": "privileged"}}})
    assert "Pod Security enforce=restricted" in body(exc)
    refused(k8s.CoreV1Api(stolen).create_namespace, {"metadata": {"name": "unlabelled"}})


def test_the_portal_token_cannot_relabel_or_release_its_namespace(stolen, own_namespace):
    core = k8s.CoreV1Api(stolen)
    for labels in ({"pod-security.kubernetes.io/enforce": "privileged"},
                   {"app.kubernetes.io/managed-by": None},
                   {"pod-security.kubernetes.io/enforce-version": "v1.0"}):
        exc = refused(core.patch_namespace, own_namespace, {"metadata": {"labels": labels}})
        assert "gpupaas-portal-confined" in body(exc)


def test_the_portal_token_cannot_touch_kube_system(stolen):
    core = k8s.CoreV1Api(stolen)
    refused(core.patch_namespace, "kube-system", {"metadata": {"labels": MANAGED}})
    refused(core.delete_namespace, "kube-system")
    refused(core.list_namespaced_secret, "kube-system")


def test_the_portal_token_binds_only_its_two_roles(stolen, own_namespace):
    rbac = k8s.RbacAuthorizationV1Api(stolen)

    def binding(role: str, subject: dict) -> dict:
        return {"metadata": {"generateName": "x-"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role}, "subjects": [subject]}

    portal = {"kind": "ServiceAccount", "name": "gpupaas-portal",
              "namespace": "gpupaas-system"}
    for role, subject in (("admin", portal), ("cluster-admin", portal),
                          ("admin", {"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                     "name": "mallory"})):
        refused(rbac.create_namespaced_role_binding, own_namespace, binding(role, subject))
    # What it does for real is admitted: its manager role for itself.
    rbac.create_namespaced_role_binding(own_namespace, binding("gpupaas-portal-manager",
                                                               portal))


def test_the_portal_token_cannot_write_admission_policies(stolen):
    deny_all = {"metadata": {"name": "deny-every-pod"}, "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                "operations": ["CREATE"],
                                                "resources": ["pods"]}]},
        "validations": [{"expression": "false"}]}}
    refused(k8s.AdmissionregistrationV1Api(stolen).create_validating_admission_policy,
            deny_all, dry_run="All")
    refused(k8s.AdmissionregistrationV1Api(stolen).delete_validating_admission_policy,
            "gpupaas-portal-confined")


# --- a tenant --------------------------------------------------------------------------------


@pytest.fixture
def tenants(real, cluster, alice, bob, tmp_path):
    """Two running namespace instances on the real server, an H100 one for alice; for
    each, a client as its access account (what the proxy forwards with)."""
    cluster.ingress_domain = "apps.example.com"
    cluster.save()
    profile = ComputeProfile.objects.create(
        name="h100", display_name="H100", kind="namespace", cluster=cluster, gpus=1,
        gpu_model="NVIDIA-H100", cpu=4, memory_gib=16, storage_gib=50, published=True)
    mine = provision(launch(alice, profile, name="mine"))
    theirs = provision(launch(bob, profile, name="theirs"))
    assert mine.status == theirs.status == "running", mine.status_message
    clients = {}
    for who, instance in (("alice", mine), ("bob", theirs)):
        ns = f"{who}-{instance.name}-{instance.pk}"
        answer = real.plane.admin_request(
            "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/gpupaas-access/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 600}})
        clients[who] = (ns, client_with(real, tmp_path, answer["status"]["token"], who))
    return clients


def gpu_pod(model: str | None, *, privileged: bool = False) -> dict:
    context = {"privileged": True} if privileged else RESTRICTED
    spec: dict = {"containers": [{"name": "c", "image": "busybox", "securityContext": context,
                                  "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    if model:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": model}
    return {"metadata": {"generateName": "p-"}, "spec": spec}


def test_a_tenant_reaches_its_namespace_only(tenants):
    ns, api = tenants["alice"]
    other, _ = tenants["bob"]
    core = k8s.CoreV1Api(api)
    core.list_namespaced_pod(ns)
    refused(core.list_namespaced_pod, "kube-system")
    refused(core.list_namespaced_secret, other)
    # Nor can it write a virtual cluster's credentials anywhere but at home.
    refused(core.create_namespaced_secret, other, {"metadata": {"name": "vc-vcluster"},
                                                   "stringData": {"config": "x"}})


def test_a_tenant_gets_only_its_instances_gpu_model(tenants):
    ns, api = tenants["alice"]
    core = k8s.CoreV1Api(api)
    for model in ("NVIDIA-B200", None):
        exc = refused(core.create_namespaced_pod, ns, gpu_pod(model))
        assert "pods of this instance may use only NVIDIA-H100 GPUs" in body(exc)
    core.create_namespaced_pod(ns, gpu_pod("NVIDIA-H100"))


def test_a_tenant_cannot_run_a_privileged_pod_nor_escalate(tenants):
    ns, api = tenants["alice"]
    exc = refused(k8s.CoreV1Api(api).create_namespaced_pod, ns,
                  gpu_pod("NVIDIA-H100", privileged=True))
    assert "violates PodSecurity" in body(exc)
    refused(k8s.RbacAuthorizationV1Api(api).create_namespaced_role_binding, ns, {
        "metadata": {"name": "up"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "gpupaas-access", "namespace": ns}]})
    refused(k8s.CoreV1Api(api).patch_namespace, ns, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "privileged"}}})



def test_a_tenant_keeps_no_credential_of_the_access_account(tenants):
    """After losing access a user must hold nothing of the account the proxy acts as."""
    ns, api = tenants["alice"]
    core = k8s.CoreV1Api(api)
    exc = refused(core.create_namespaced_secret, ns, {
        "metadata": {"name": "forever", "annotations": {
            "kubernetes.io/service-account.name": "gpupaas-access"}},
        "type": "kubernetes.io/service-account-token"})
    assert "gpupaas-access-account" in body(exc)
    refused(core.create_namespaced_service_account_token, "gpupaas-access", ns, {
        "spec": {"expirationSeconds": 31536000}})
    pod = gpu_pod("NVIDIA-H100")
    pod["spec"]["serviceAccountName"] = "gpupaas-access"
    refused(core.create_namespaced_pod, ns, pod)
