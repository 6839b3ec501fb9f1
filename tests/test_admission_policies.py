"""The administrator's admission policies, from the attacker's side: a stolen portal token and
a hostile tenant, each attempt refused, and what the portal itself writes admitted.

The policies are evaluated exactly as shipped (docs/kubernetes.md's block, which
tests/test_deploy_manifests.py holds equal to deploy/kubernetes and to policies.py) by the
kit's CEL evaluator (tests/kit/admission.py). The same attempts go to a real kube-apiserver
in tests/test_kube_attacks.py where KUBEBUILDER_ASSETS is set.
"""

import pytest

from clusters.backends import InstanceSpec, NotebookSpec
from clusters.backends.kubernetes import manifests as m
from clusters.backends.kubernetes import policies

from .kit import envtest
from .kit.admission import Request, admit

PORTAL = "system:serviceaccount:gpupaas-system:gpupaas-portal"
CS = m.ClusterSettings(ingress_domain="apps.example.com")
PARAMS = {"gpupaas-system/gpupaas-cluster": policies.cluster_params(CS)}
SHIPPED = envtest.documented_policies()


def spec(**overrides) -> InstanceSpec:
    values = dict(key="inst-42", name="train", owner="alice", workspace="7", kind="namespace",
                  gpus=2, gpu_model="NVIDIA-H100", cpu=8.0, memory_gib=64, storage_gib=100)
    return InstanceSpec(**{**values, **overrides})


NAMESPACE = m.namespace(spec(), CS)
NS = NAMESPACE["metadata"]["name"]
KUBE_SYSTEM = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "kube-system", "labels": {
                   "kubernetes.io/metadata.name": "kube-system"}}}


def decide(request: Request, params=PARAMS):
    return admit(SHIPPED, request, params)


def as_portal(operation: str, resource: str, **kwargs) -> Request:
    group = "rbac.authorization.k8s.io" if resource == "rolebindings" else ""
    return Request(operation, resource, group=group, username=PORTAL, **kwargs)


def relabelled(**labels) -> dict:
    ns = {**NAMESPACE, "metadata": {**NAMESPACE["metadata"]}}
    ns["metadata"]["labels"] = {**NAMESPACE["metadata"]["labels"], **labels}
    ns["metadata"]["labels"] = {k: v for k, v in ns["metadata"]["labels"].items() if v}
    return ns


def binding(role: str, subjects: list[dict], namespace: str = NS) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "x", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": subjects}


PORTAL_SA = {"kind": "ServiceAccount", "name": "gpupaas-portal", "namespace": "gpupaas-system"}


# --- what the portal writes is admitted ------------------------------------------------------


def test_the_portals_own_objects_are_admitted():
    assert decide(as_portal("CREATE", "namespaces", object=NAMESPACE)).allowed
    assert decide(as_portal("UPDATE", "namespaces", object=NAMESPACE,
                            old_object=NAMESPACE)).allowed
    assert decide(as_portal("DELETE", "namespaces", old_object=NAMESPACE)).allowed
    for obj in (m.portal_role_binding(spec(), CS, account=("gpupaas-system", "gpupaas-portal")),
                m.owner_role_binding(spec(), CS)):
        assert decide(as_portal("CREATE", "rolebindings", object=obj,
                                namespace=NAMESPACE)).allowed, obj


# --- a stolen portal token -----------------------------------------------------------------


@pytest.mark.parametrize("attempt", [
    "a namespace without managed-by", "a managed namespace that is privileged",
    "relabel its namespace privileged", "strip managed-by from its namespace",
    "lower the Pod Security version", "relabel kube-system as managed", "delete kube-system",
    "a namespace without a host tag", "change its namespace's host tag",
])
def test_the_portal_cannot_escape_its_namespaces(attempt):
    request = {
        "a namespace without managed-by": as_portal(
            "CREATE", "namespaces", object=relabelled(**{"app.kubernetes.io/managed-by": ""})),
        "a managed namespace that is privileged": as_portal(
            "CREATE", "namespaces",
            object=relabelled(**{"pod-security.kubernetes.io/enforce": "privileged"})),
        "relabel its namespace privileged": as_portal(
            "UPDATE", "namespaces", old_object=NAMESPACE,
            object=relabelled(**{"pod-security.kubernetes.io/enforce": "privileged"})),
        "strip managed-by from its namespace": as_portal(
            "UPDATE", "namespaces", old_object=NAMESPACE,
            object=relabelled(**{"app.kubernetes.io/managed-by": ""})),
        "lower the Pod Security version": as_portal(
            "UPDATE", "namespaces", old_object=NAMESPACE,
            object=relabelled(**{"pod-security.kubernetes.io/enforce-version": "v1.0"})),
        "relabel kube-system as managed": as_portal(
            "UPDATE", "namespaces", old_object=KUBE_SYSTEM,
            object={**KUBE_SYSTEM, "metadata": {**KUBE_SYSTEM["metadata"], "labels": {
                **NAMESPACE["metadata"]["labels"]}}}),
        "delete kube-system": as_portal("DELETE", "namespaces", old_object=KUBE_SYSTEM),
        "a namespace without a host tag": as_portal(
            "CREATE", "namespaces", object=relabelled(**{"gpupaas.io/host-tag": ""})),
        "change its namespace's host tag": as_portal(
            "UPDATE", "namespaces", old_object=NAMESPACE,
            object=relabelled(**{"gpupaas.io/host-tag": "i43"})),
    }[attempt]
    decision = decide(request)
    assert not decision.allowed
    assert any("the portal" in message for message in decision.messages), decision.messages


@pytest.mark.parametrize("role,subjects,namespace", [
    ("admin", [PORTAL_SA], NAMESPACE),  # bind itself admin in its namespace
    ("cluster-admin", [PORTAL_SA], NAMESPACE),
    ("edit", [{"kind": "ServiceAccount", "name": "gpupaas-access", "namespace": NS}],
     NAMESPACE),
    ("admin", [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
     NAMESPACE),
    ("admin", [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                "name": "system:masters"}], NAMESPACE),
    ("gpupaas-portal-manager", [{"kind": "ServiceAccount", "name": "default",
                                 "namespace": NS}], NAMESPACE),
    ("gpupaas-portal-manager", [PORTAL_SA], KUBE_SYSTEM),
    ("admin", [{"kind": "ServiceAccount", "name": "x", "namespace": "kube-system"}],
     KUBE_SYSTEM),
])
def test_the_portal_binds_only_its_two_roles_to_their_two_subjects(role, subjects, namespace):
    obj = binding(role, subjects, namespace["metadata"]["name"])
    for operation in ("CREATE", "UPDATE"):
        decision = decide(as_portal(operation, "rolebindings", object=obj, old_object=obj,
                                    namespace=namespace))
        assert not decision.allowed, (role, subjects)


def test_the_policies_bind_only_the_portal_never_an_administrator():
    """An administrator (another identity) is not confined: the policy matches the portal."""
    request = Request("CREATE", "namespaces", username="kubernetes-admin",
                      object=relabelled(**{"app.kubernetes.io/managed-by": ""}))
    assert decide(request).allowed


# --- a hostile tenant --------------------------------------------------------------------------


def ingress(*hosts: str, default_backend: bool = False) -> dict:
    spec_: dict = {"rules": [{"host": h} for h in hosts]}
    if default_backend:
        spec_["defaultBackend"] = {"service": {"name": "x", "port": {"number": 80}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "x", "namespace": NS}, "spec": spec_}


def tenant(operation: str, resource: str, obj: dict, group: str = "") -> Request:
    return Request(operation, resource, group=group,
                   username=f"system:serviceaccount:{NS}:gpupaas-access", object=obj,
                   namespace=NAMESPACE)


def test_a_tenant_ingress_names_only_its_own_notebook_hosts():
    own = m.notebook_objects(NotebookSpec(key="nb-9", name="explore", instance=spec(),
                                          gpus=1, cpu=1.0, memory_gib=1, image="x",
                                          token="t", host_suffix="k3x9q0vz2a"), CS)
    [own_ingress] = [o for o in own if o["kind"] == "Ingress"]
    assert decide(tenant("CREATE", "ingresses", own_ingress, "networking.k8s.io")).allowed
    for hostile in (ingress("nb-x-i43.apps.example.com"),  # another instance's tag
                    ingress("portal.apps.example.com"), ingress("evil-i42.other.com"),
                    ingress("i42.apps.example.com.evil.com"),
                    ingress("nb-x-i42.apps.example.com", default_backend=True)):
        decision = decide(tenant("CREATE", "ingresses", hostile, "networking.k8s.io"))
        assert not decision.allowed, hostile
        assert "-i42.apps.example.com" in decision.messages[0]


def test_in_a_namespace_of_the_portal_without_a_tag_no_ingress_passes():
    untagged = relabelled(**{"gpupaas.io/host-tag": ""})
    request = Request("CREATE", "ingresses", group="networking.k8s.io", username=PORTAL,
                      object=ingress("portal.apps.example.com"), namespace=untagged)
    assert not decide(request).allowed


def test_without_the_clusters_parameter_every_tenant_ingress_is_refused():
    decision = decide(tenant("CREATE", "ingresses", ingress("nb-x-i42.apps.example.com"),
                             "networking.k8s.io"), params={})
    assert not decision.allowed and "no params" in decision.messages[0]


def pod(gpus: int = 1, model: str | None = None) -> dict:
    container = {"name": "c", "image": "x",
                 "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}}
    spec_: dict = {"containers": [container]}
    if model:
        spec_["nodeSelector"] = {"nvidia.com/gpu.product": model}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
            "spec": spec_}


def test_a_pod_that_asks_for_gpus_gets_the_instances_model_only():
    for attempt in (pod(model="NVIDIA-B200"), pod()):
        decision = decide(tenant("CREATE", "pods", attempt))
        assert not decision.allowed
        assert decision.messages == [
            "pods of this instance may use only NVIDIA-H100 GPUs: select them with "
            "nodeSelector nvidia.com/gpu.product: NVIDIA-H100"]
    assert decide(tenant("CREATE", "pods", pod(model="NVIDIA-H100"))).allowed
    assert decide(tenant("CREATE", "pods", pod(gpus=0))).allowed
    # The portal's own notebooks select the model, and are admitted.
    notebook = m.notebook_objects(NotebookSpec(key="nb-9", name="explore", instance=spec(),
                                               gpus=1, cpu=1.0, memory_gib=1, image="x",
                                               token="t"), CS)
    [deployment] = [o for o in notebook if o["kind"] == "Deployment"]
    template = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nb", "namespace": NS},
                "spec": deployment["spec"]["template"]["spec"]}
    assert decide(tenant("CREATE", "pods", template)).allowed


def test_an_instance_of_any_model_lets_its_pods_choose():
    anyone = m.namespace(spec(gpu_model=""), CS)
    request = Request("CREATE", "pods", username="x", object=pod(model="NVIDIA-B200"),
                      namespace=anyone)
    assert decide(request).allowed


ACCESS_TOKEN_SECRET = {
    "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
    "metadata": {"name": "forever", "namespace": NS,
                 "annotations": {"kubernetes.io/service-account.name": "gpupaas-access"}}}


def test_only_the_portal_holds_credentials_of_the_access_account():
    """A tenant with `admin` could otherwise keep the account after losing access: a token
    Secret that never expires, a long TokenRequest, a pod running as it."""
    attempts = {
        "a token Secret for it": tenant("CREATE", "secrets", ACCESS_TOKEN_SECRET),
        "a pod running as it": tenant("CREATE", "pods", {
            **pod(gpus=0), "spec": {**pod(gpus=0)["spec"],
                                    "serviceAccountName": "gpupaas-access"}}),
        "a pod running as it (the old field)": tenant("CREATE", "pods", {
            **pod(gpus=0), "spec": {**pod(gpus=0)["spec"], "serviceAccount": "gpupaas-access"}}),
    }
    token = Request("CREATE", "serviceaccounts", subresource="token", name="gpupaas-access",
                    username=f"system:serviceaccount:{NS}:gpupaas-access",
                    object={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                            "spec": {"expirationSeconds": 31536000}}, namespace=NAMESPACE)
    attempts["a token of it"] = token
    for what, request in attempts.items():
        decision = decide(request)
        assert not decision.allowed, what
        assert "gpupaas-access" in decision.messages[0], (what, decision.messages)
    # The portal itself mints them; tenants' own accounts and pods are theirs.
    assert decide(Request("CREATE", "serviceaccounts", subresource="token",
                          name="gpupaas-access", username=PORTAL, object=token.object,
                          namespace=NAMESPACE)).allowed
    own = {**ACCESS_TOKEN_SECRET, "metadata": {**ACCESS_TOKEN_SECRET["metadata"], "annotations": {
        "kubernetes.io/service-account.name": "my-ci"}}}
    assert decide(tenant("CREATE", "secrets", own)).allowed
    assert decide(tenant("CREATE", "pods", pod(gpus=0))).allowed
    # The cluster's administrators may.
    assert decide(Request("CREATE", "serviceaccounts", subresource="token",
                          name="gpupaas-access", username="kubernetes-admin",
                          groups=("system:masters", "system:authenticated"),
                          object=token.object, namespace=NAMESPACE)).allowed
