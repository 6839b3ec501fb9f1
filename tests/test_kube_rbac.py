"""The portal's RBAC, as docs/kubernetes.md documents it, checked by a real API server's own
authorizer and admission: what it may not do (a hostile tenant who steals the portal's token
gains little), and that every cluster-wide permission it keeps is one it uses."""

import base64
import re
from collections import defaultdict

import pytest
import yaml
from kubernetes import client as k8s

from clusters.backends import get_backend
from clusters.backends.kubernetes.credentials import token_claims
from instances import services
from instances.models import Instance
from notebooks import services as notebook_services
from notebooks.models import Notebook, NotebookProfile

from .conftest import wait_for, workspace_of
from .kit import controllers, envtest, kubeemu, targets
from .test_kube_backend import delete_until_gone, launch, namespace_of, provision

PORTAL = f"system:serviceaccount:{envtest.PORTAL_NAMESPACE}:{envtest.PORTAL_ACCOUNT}"


@pytest.fixture
def real(real_kube):
    target = targets.RealTarget(real_kube)
    yield target
    target.close()


def allowed(real, verb: str, resource: str, namespace: str = "", group: str = "",
            subresource: str = "", name: str = "") -> bool:
    """The real authorizer's answer for the portal's account (SubjectAccessReview, as
    `kubectl auth can-i --as` asks it)."""
    review = real.plane.admin_request(
        "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": PORTAL, "groups": ["system:serviceaccounts",
                                                 f"system:serviceaccounts:{envtest.PORTAL_NAMESPACE}",
                                                 "system:authenticated"],
                     "resourceAttributes": {"verb": verb, "resource": resource,
                                            "namespace": namespace, "group": group,
                                            "subresource": subresource, "name": name}}})
    return bool(review["status"].get("allowed"))


def test_the_portal_cannot_reach_into_kube_system_or_read_secrets_cluster_wide(real):
    assert not allowed(real, "get", "secrets", "kube-system")
    assert not allowed(real, "list", "secrets", "kube-system")
    assert not allowed(real, "list", "secrets")  # every namespace
    assert not allowed(real, "create", "pods", "kube-system", subresource="exec")
    assert not allowed(real, "create", "deployments", "kube-system", group="apps")
    assert not allowed(real, "create", "clusterrolebindings", group="rbac.authorization.k8s.io")
    assert not allowed(real, "bind", "clusterroles", group="rbac.authorization.k8s.io",
                       name="cluster-admin")
    # What it does hold there, RBAC cannot narrow by label: the admission policy does.
    assert allowed(real, "delete", "namespaces", name="kube-system")


def portal_api(real, tmp_path) -> k8s.ApiClient:
    from kubernetes import config

    configuration = k8s.Configuration()
    config.load_kube_config(str(real.kubeconfig(tmp_path / "portal")),
                            client_configuration=configuration)
    return k8s.ApiClient(configuration)


def test_with_a_stolen_portal_token_system_namespaces_and_cluster_admin_stay_out_of_reach(
    real, tmp_path
):
    api = portal_api(real, tmp_path)
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    binding = {"metadata": {"name": "steal"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "gpupaas-portal-manager"},
               "subjects": [{"kind": "ServiceAccount", "name": envtest.PORTAL_ACCOUNT,
                             "namespace": envtest.PORTAL_NAMESPACE}]}
    refusals = {
        "delete kube-system": lambda: core.delete_namespace("kube-system"),
        "relabel kube-system": lambda: core.patch_namespace(
            "kube-system", {"metadata": {"labels": {"app.kubernetes.io/managed-by": "gpupaas"}}}),
        "read a kube-system secret": lambda: core.list_namespaced_secret("kube-system"),
        "manage kube-system": lambda: rbac.create_namespaced_role_binding("kube-system", binding),
        "bind cluster-admin": lambda: rbac.create_namespaced_role_binding("default", {
            **binding, "roleRef": {**binding["roleRef"], "name": "cluster-admin"}}),
        "an unlabelled namespace": lambda: core.create_namespace({"metadata": {"name": "x"}}),
    }
    for what, attempt in refusals.items():
        with pytest.raises(k8s.ApiException) as refused:
            attempt()
            pytest.fail(f"the portal's token could {what}")
        assert refused.value.status == 403, what
    assert real.get("Namespace", "kube-system") is not None


def test_test_connection_shows_the_tokens_expiry_and_no_missing_permission(
    real, db, settings, tmp_path
):
    from clusters.models import Cluster

    cluster = Cluster(name="real", display_name="Real", backend="kubernetes")
    cluster.set_kubeconfig(real.kubeconfig(tmp_path / "kubeconfig").read_text())
    cluster.save()

    report = get_backend(cluster).check_connection()

    # The session's token lasts a day from when the control plane started.
    assert re.search(r"Credential: expires in (2[0-3]|1[0-9]) hours", report), report
    assert "permissions: all that every profile kind needs." in report


def test_test_connection_names_what_a_weaker_token_lacks(real, db, tmp_path):
    from clusters.models import Cluster

    # A ServiceAccount with only the built-in `view` role, and a token Secret (no expiry).
    plane = real.plane
    plane.apply_admin({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": "viewer", "namespace": envtest.PORTAL_NAMESPACE}})
    plane.apply_admin({"apiVersion": "rbac.authorization.k8s.io/v1",
                       "kind": "ClusterRoleBinding", "metadata": {"name": "viewer"},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                   "kind": "ClusterRole", "name": "view"},
                       "subjects": [{"kind": "ServiceAccount", "name": "viewer",
                                     "namespace": envtest.PORTAL_NAMESPACE}]})
    plane.apply_admin({"apiVersion": "v1", "kind": "Secret", "type":
                       "kubernetes.io/service-account-token",
                       "metadata": {"name": "viewer-token", "namespace": envtest.PORTAL_NAMESPACE,
                                    "annotations": {
                                        "kubernetes.io/service-account.name": "viewer"}}})
    secret = wait_for(lambda: (plane.admin_request(
        "GET", f"/api/v1/namespaces/{envtest.PORTAL_NAMESPACE}/secrets/viewer-token")
        .get("data") or {}).get("token"))
    token = base64.b64decode(secret).decode()
    kubeconfig = yaml.safe_load(real.kubeconfig(tmp_path / "viewer").read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    cluster = Cluster(name="viewer", display_name="Viewer", backend="kubernetes")
    cluster.set_kubeconfig(yaml.safe_dump(kubeconfig))
    cluster.save()

    report = get_backend(cluster).check_connection()

    assert token_claims(token).expires_at is None
    assert "Credential: no expiry" in report
    assert "namespace profiles lack create namespaces, delete namespaces, list nodes" in report
    assert "bind clusterroles/gpupaas-portal-manager (rbac.authorization.k8s.io)" in report


def test_every_cluster_wide_permission_the_portal_keeps_is_one_it_uses(
    real, alice, settings, tmp_path, request
):
    """Drive every backend path on the real server, note each request the portal makes
    outside its own namespaces (where only the ClusterRole applies), and compare with what
    the documented ClusterRole grants: nothing granted goes unused. With the upstream CRDs
    (ENVTEST_CRDS) that includes a vcluster (Flux) and a dedicated cluster (Cluster API),
    brought up by the kit's controllers, and the Cluster API namespace's own role."""
    from clusters.models import Cluster
    from instances.models import ComputeProfile

    settings.KUBE_RETRY_BASE_S = 0.01
    settings.PORTAL_ID = "rbac-proof"
    upstream = bool(real.server.crds)
    cluster = Cluster(name="real", display_name="Real", backend="kubernetes",
                      ingress_domain="apps.example.com", capi_namespace="capi-rbac-proof")
    cluster.set_kubeconfig(real.kubeconfig(tmp_path / "kubeconfig").read_text())
    cluster.save()
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 10, 100
    workspace.save()
    profiles = {kind: ComputeProfile.objects.create(
        name=kind, display_name=kind, kind=kind, cluster=cluster, gpus=2, cpu=8, memory_gib=64,
        storage_gib=100, published=True, cluster_class="gpu-cluster",
        kubernetes_version="v1.31.0") for kind in ("namespace", "vcluster", "dedicated")}
    real.add_hook(kubeemu.admit_ingresses)

    get_backend(cluster).check_connection()
    plain = provision(launch(alice, profiles["namespace"], name="plain"))
    get_backend(cluster).ensure_instance(services.instance_spec(plain))  # over what exists
    clusters = []
    if upstream:
        inner = request.getfixturevalue("real_inner")
        admin = k8s.ApiClient(real.client_configuration())
        selector = "gpupaas.io/portal=rbac-proof"
        flux = controllers.Flux(admin, inner.kubeconfig, selector=selector)
        capi = controllers.ClusterApi(admin, inner.kubeconfig, selector=selector)
        # What docs/kubernetes.md has the administrator do on a management cluster.
        real.plane.apply_admin({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": "capi-rbac-proof"}})
        real.plane.apply_admin({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "gpupaas-portal", "namespace": "capi-rbac-proof"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "gpupaas-portal-cluster-api"},
            "subjects": [{"kind": "ServiceAccount", "name": envtest.PORTAL_ACCOUNT,
                          "namespace": envtest.PORTAL_NAMESPACE}]})
        for kind, controller in (("vcluster", flux), ("dedicated", capi)):
            made = provision(launch(alice, profiles[kind], name=kind[:3]))
            clusters.append((controller, wait_for(
                lambda m=made, c=controller: (c.reconcile(), provision(m))[1].status
                == Instance.Status.RUNNING and m, timeout=90)))
    notebook_profile = NotebookProfile.objects.create(
        name="minimal", display_name="Minimal", image="quay.io/jupyter/minimal-notebook",
        default_cpu=2, default_memory_gib=4, published=True)
    notebook = notebook_services.deploy_notebook(instance=plain, name="nb",
                                                 profile=notebook_profile, by=alice, gpus=1)
    wait_for(lambda: notebook_services.advance_notebook(notebook_id=notebook.pk).status
             == Notebook.Status.RUNNING)
    services.reconcile_instances()
    notebook_services.reconcile_notebooks()
    real.delete_object("ResourceQuota", "instance-quota", namespace_of(real, plain)
                       ["metadata"]["name"])
    services.reconcile_instances()  # restores it
    bindings = {b["metadata"]["name"] for b in real.objects(
        "RoleBinding", namespace_of(real, plain)["metadata"]["name"])}
    delete_until_gone(plain, alice)
    for controller, instance in clusters:
        services.delete_instance(instance=instance, by=alice)
        wait_for(lambda i=instance, c=controller: (c.reconcile(), services.teardown_instance(
            instance_id=i.pk))[1].status == Instance.Status.DELETED, timeout=90)

    used = defaultdict(set)
    for record in real.requests.records():
        if not record.resource or record.status is None or record.status >= 400:
            continue
        plural, _, group = record.resource.partition("/")[0].partition(".")
        cluster_wide = record.namespace is None or (
            plural == "rolebindings" and record.verb == "create")  # its own, before it holds any
        if cluster_wide:
            used[(group, plural)].add(record.verb)
            if record.verb == "patch" and record.status == 201:  # apply that created
                used[(group, plural)].add("create")
    granted = defaultdict(set)
    [role] = [o for o in envtest.documented_rbac() if o["metadata"]["name"] == "gpupaas-portal"
              and o["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        if rule["verbs"] == ["bind"]:
            continue  # proved by the RoleBindings to admin and the manager role it created
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted[(group, resource)] |= set(rule["verbs"])
    if not upstream:  # no Flux or Cluster API here: their kinds cannot be used
        granted = {key: verbs for key, verbs in granted.items() if key[0] not in (
            "helm.toolkit.fluxcd.io", "source.toolkit.fluxcd.io", "cluster.x-k8s.io")}
    unused = {key: sorted(verbs - used[key]) for key, verbs in granted.items()
              if verbs - used[key]}
    assert unused == {}, f"granted but never used: {unused}"
    # `bind`: the owner's binding to admin and the portal's own to the manager role existed.
    assert bindings == {"owner-admin", "gpupaas-portal"}
