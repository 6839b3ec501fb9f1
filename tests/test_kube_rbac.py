"""The portal's RBAC, as docs/kubernetes.md documents it, checked by a real API server's own
authorizer and admission: what it may not do (a hostile tenant who steals the portal's token
gains little), and that every cluster-wide permission it keeps is one it uses."""

import base64
import re
import secrets

import pytest
import yaml
from kubernetes import client as k8s

from clusters.backends import get_backend
from clusters.backends.kubernetes.credentials import token_claims
from instances import services
from notebooks import services as notebook_services
from notebooks.models import Notebook, NotebookProfile

from .conftest import wait_for, workspace_of
from .kit import envtest, kubeemu
from .test_kube_backend import delete_until_gone, launch, namespace_of, provision

PORTAL = f"system:serviceaccount:{envtest.PORTAL_NAMESPACE}:{envtest.PORTAL_ACCOUNT}"


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


Triple = tuple[str, str, str]  # API group, resource[/subresource], verb


def granted(rules: list[dict]) -> set[Triple]:
    """What RBAC rules grant, one triple per group, resource and verb (rules restricted to
    named objects left out: `bind` is proved by the bindings the portal made)."""
    return {(group, resource, verb) for rule in rules if not rule.get("resourceNames")
            for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}


def documented_role(name: str) -> set[Triple]:
    [role] = [o for o in envtest.documented_rbac()
              if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name]
    return granted(role["rules"])


def used(records) -> tuple[set[Triple], set[Triple]]:
    """(cluster-wide, in namespaces): the triples of every request the server authorized.
    Any answer but 401 and 403 means it did (a 404 or 409 comes after authorization); a
    server-side apply answered 201 created the object, which RBAC checks as `create` too."""
    cluster_wide: set[Triple] = set()
    in_namespaces: set[Triple] = set()
    for record in records:
        if not record.resource or record.status is None or record.status in (401, 403):
            continue
        resource, _, subresource = record.resource.partition("/")
        plural, _, group = resource.partition(".")
        name = f"{plural}/{subresource}" if subresource else plural
        verbs = {record.verb} | ({"create"} if record.verb == "patch"
                                 and record.status == 201 else set())
        into = cluster_wide if record.namespace is None else in_namespaces
        into |= {(group, name, verb) for verb in verbs}
    return cluster_wide, in_namespaces


def test_every_permission_the_documented_roles_grant_is_one_the_portal_uses(
    kube, alice, settings, tmp_path
):
    """Drive every backend path (provision, poll, notebook, reconcile, drift, delete; each
    instance kind), note each request the portal makes, and compare with what the two
    documented roles grant: `gpupaas-portal` cluster-wide, `gpupaas-portal-manager` in the
    namespaces it manages. Nothing granted goes unused, except what RBAC's escalation check
    makes the portal hold: every permission of the vcluster Role it writes. On the emulator
    the same requests are counted (it enforces no RBAC); the real server also refuses any
    request the roles do not allow."""
    from clusters.backends.kubernetes import cluster_settings
    from clusters.backends.kubernetes import manifests as m
    from clusters.models import Cluster
    from instances.models import ComputeProfile, Instance

    settings.KUBE_RETRY_BASE_S = 0.01
    settings.PORTAL_ID = f"rbac-proof-{secrets.token_hex(3)}"
    cluster = Cluster(name="real", display_name="Real", backend="kubernetes",
                      ingress_domain="apps.example.com")
    cluster.set_kubeconfig(kube.kubeconfig(tmp_path / "kubeconfig").read_text())
    cluster.save()
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 10, 100
    workspace.save()
    profiles = {kind: ComputeProfile.objects.create(
        name=kind, display_name=kind, kind=kind, cluster=cluster, gpus=2, cpu=8, memory_gib=64,
        storage_gib=100, published=True, cluster_class="gpu-cluster",
        kubernetes_version="v1.31.0") for kind in ("namespace", "vcluster", "dedicated")}
    kube.add_hook(kubeemu.admit_ingresses)
    kube.add_hook(kubeemu.serve_endpoints)  # the real server's own controller does
    admin = k8s.ApiClient(kube.client_configuration())
    core = k8s.CoreV1Api(admin)
    # The Cluster API namespace, with the portal's manager role bound there as documented.
    core.create_namespace({"metadata": {"name": "gpupaas-clusters"}})
    k8s.RbacAuthorizationV1Api(admin).create_namespaced_role_binding("gpupaas-clusters", {
        "metadata": {"name": "gpupaas-portal"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "gpupaas-portal-manager"},
        "subjects": [{"kind": "ServiceAccount", "name": envtest.PORTAL_ACCOUNT,
                      "namespace": envtest.PORTAL_NAMESPACE}]})

    def poll(instance: Instance) -> Instance:
        return services.provision_instance(instance_id=instance.pk, applied=True)

    get_backend(cluster).check_connection()
    plain = provision(launch(alice, profiles["namespace"], name="plain"))
    get_backend(cluster).ensure_instance(services.instance_spec(plain))  # over what exists
    ns = namespace_of(kube, plain)["metadata"]["name"]
    # A virtual cluster: its control plane starting (the events say why not yet), then up
    # and waiting for the credentials vcluster writes.
    kube.auto_ready = False
    vc = provision(launch(alice, profiles["vcluster"], name="vc"))
    assert poll(vc).status == Instance.Status.PROVISIONING
    kube.auto_ready = True
    wait_for(lambda: poll(vc).status_message.startswith("Waiting for the virtual cluster's"),
             timeout=90)
    # A dedicated cluster, polled until Cluster API says it is ready.
    dedicated = provision(launch(alice, profiles["dedicated"], name="big"))
    assert poll(dedicated).status == Instance.Status.PROVISIONING, dedicated.status_message
    name = f"alice-big-{dedicated.pk}"
    k8s.CustomObjectsApi(admin).patch_namespaced_custom_object_status(
        "cluster.x-k8s.io", "v1beta1", "gpupaas-clusters", "clusters", name, {"status": {
            "conditions": [{"type": "Ready", "status": "True",
                            "lastTransitionTime": "2026-11-29T00:00:00Z"}]}})
    core.create_namespaced_secret("gpupaas-clusters", {
        "metadata": {"name": f"{name}-kubeconfig"},
        "data": {"value": base64.b64encode(b"apiVersion: v1\nkind: Config\n").decode()}})
    assert poll(dedicated).status == Instance.Status.RUNNING, dedicated.status_message
    # A notebook, watched while its pod cannot start yet, then until it runs.
    notebook_profile = NotebookProfile.objects.create(
        name="minimal", display_name="Minimal", image="quay.io/jupyter/minimal-notebook",
        default_cpu=2, default_memory_gib=4, published=True)
    kube.auto_ready = False
    notebook = notebook_services.deploy_notebook(instance=plain, name="nb",
                                                 profile=notebook_profile, by=alice, gpus=1)
    notebook_services.advance_notebook(notebook_id=notebook.pk)
    notebook_services.advance_notebook(notebook_id=notebook.pk)
    kube.auto_ready = True
    wait_for(lambda: notebook_services.advance_notebook(notebook_id=notebook.pk).status
             == Notebook.Status.RUNNING, timeout=90)
    services.reconcile_instances()
    notebook_services.reconcile_notebooks()
    kube.delete_object("ResourceQuota", "instance-quota", ns)
    services.reconcile_instances()  # restores it
    bindings = {b["metadata"]["name"] for b in kube.objects("RoleBinding", ns)}
    notebook_services.delete_notebook(notebook=notebook, by=alice)
    wait_for(lambda: notebook_services.teardown_notebook(notebook_id=notebook.pk).status
             == Notebook.Status.DELETED, timeout=60)
    for instance in (plain, vc, dedicated):
        delete_until_gone(instance, alice)

    cluster_wide, in_namespaces = used(kube.requests.records())
    portal_role = documented_role("gpupaas-portal")
    # The portal's own RoleBinding in a new namespace is created on its cluster-wide right,
    # before it holds any there.
    cluster_wide |= {t for t in in_namespaces if t == ("rbac.authorization.k8s.io",
                                                       "rolebindings", "create")}
    assert portal_role - cluster_wide == set(), "gpupaas-portal grants what nothing uses"

    manager = documented_role("gpupaas-portal-manager")
    needed = in_namespaces - portal_role  # what the cluster-wide role does not already allow
    [vcluster_role] = [o for o in m.vcluster_objects(
        services.instance_spec(vc), cluster_settings(cluster)) if o["kind"] == "Role"]
    escalation = granted(vcluster_role["rules"])
    assert escalation <= manager, "the manager role cannot grant the vcluster Role"
    assert manager - needed - escalation == set(), "gpupaas-portal-manager grants unused"
    if kube.real:
        assert needed <= manager  # else the server would have refused the cycle
        # `bind`: the owner's binding to admin and the portal's own to the manager role.
        assert bindings == {"owner-admin", "gpupaas-portal"}
