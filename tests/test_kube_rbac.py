"""The portal's RBAC, as docs/kubernetes.md documents it, checked by a real API server's own
authorizer and admission: what it may not do (a hostile tenant who steals the portal's token
gains little), and that every permission its three roles grant is one it uses."""

import base64
import re

import pytest
import yaml
from kubernetes import client as k8s

from clusters.backends import get_backend
from clusters.backends.kubernetes.credentials import token_claims
from instances import services
from instances.models import Instance
from notebooks import idle
from notebooks import services as notebook_services
from notebooks.models import Notebook, NotebookProfile, Service, ServiceProfile

from .conftest import wait_for, workspace_of
from .kit import envtest, kubeemu
from .kit import inner as inner_kit
from .kube_fixtures import admin_api, launch, namespace_of, provision
from .test_kube_backend import delete_until_gone
from .test_kube_clusters import deleted

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
# Served only with Flux, Cluster API and CAAPH installed (ENVTEST_CRDS on the real server).
UPSTREAM_GROUPS = {"helm.toolkit.fluxcd.io", "source.toolkit.fluxcd.io", "cluster.x-k8s.io",
                   "addons.cluster.x-k8s.io"}


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


def used(records, capi_namespace: str) -> dict[str, set[Triple]]:
    """The triples of every request the server authorized, by where RBAC looks for them:
    `cluster` (no namespace), `capi` (the Cluster API namespace), `managed` (the namespaces
    the portal made). Any answer but 401 and 403 means it authorized the request (a 404 or
    409 comes after); a server-side apply answered 201 created the object, which RBAC
    checks as `create` too. The portal's own RoleBinding in a new namespace is created on
    its cluster-wide right (in a new namespace it holds none before), and so is the owner's,
    which an apply creates."""
    scopes: dict[str, set[Triple]] = {"cluster": set(), "managed": set(), "capi": set()}
    for record in records:
        if not record.resource or record.status is None or record.status in (401, 403):
            continue
        resource, _, subresource = record.resource.partition("/")
        plural, _, group = resource.partition(".")
        name = f"{plural}/{subresource}" if subresource else plural
        verbs = {record.verb} | ({"create"} if record.verb == "patch"
                                 and record.status == 201 else set())
        for verb in verbs:
            if record.namespace is None or (name, verb) == ("rolebindings", "create"):
                scope = "cluster"
            else:
                scope = "capi" if record.namespace == capi_namespace else "managed"
            scopes[scope].add((group, name, verb))
    return scopes


@pytest.fixture
def emu(kube):
    return kube


def polled_until(controller, instance: Instance, message: str) -> Instance:
    """Let the kit's controller act, then look as the provisioning chain does (status only,
    its objects already applied), until the instance's message starts with `message`."""
    def step():
        controller.reconcile()
        found = services.provision_instance(instance_id=instance.pk, applied=True)
        return found if found.status_message.startswith(message) else None

    return wait_for(step, timeout=90)


def test_every_permission_the_documented_roles_grant_is_one_the_portal_uses(
    kube, cluster, profiles, alice, request
):
    """Drive every backend path (provision, poll, notebook, reconcile, drift, delete; each
    instance kind), note each request the portal makes, and compare with what the three
    documented roles grant: `gpupaas-portal` cluster-wide, `gpupaas-portal-manager` in the
    namespaces it manages, `gpupaas-portal-cluster-api` in the Cluster API namespace. Nothing
    granted goes unused. On the emulator the same requests are counted (it enforces no
    RBAC); the real server also refuses any request the roles do not allow. Without the
    upstream CRDs there (no ENVTEST_CRDS) the vcluster and dedicated paths are left out,
    and with them what only they use."""
    real = getattr(kube, "real", False)
    upstream = not real or bool(kube.server.crds)
    cluster.ingress_domain = "apps.example.com"
    cluster.save()
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 10, 100
    workspace.save()
    kube.add_hook(kubeemu.admit_ingresses)
    kube.add_hook(kubeemu.serve_endpoints)  # the real server's own controller does
    # The kit's Flux and Cluster API (its namespace made and, on the real server, the
    # portal's cluster-api role bound there, as docs/kubernetes.md has the administrator do).
    flux = request.getfixturevalue("flux") if upstream else None
    capi = request.getfixturevalue("capi") if upstream else None

    get_backend(cluster).check_connection()
    plain = provision(launch(alice, profiles["namespace"], name="plain"))
    get_backend(cluster).ensure_instance(services.instance_spec(plain))  # over what exists
    # What the Kubernetes proxy asks for its users: a token of the instance's access account.
    assert get_backend(cluster).access_token(services.instance_spec(plain))[0]
    ns = namespace_of(kube, plain)["metadata"]["name"]
    clusters = []
    if upstream:
        # A virtual cluster: Flux has not installed it yet (the events say why not), then
        # it runs.
        vc = provision(launch(alice, profiles["vcluster"], name="vc"))
        assert services.provision_instance(instance_id=vc.pk, applied=True).status_message \
            == "Installing the virtual cluster: waiting for Flux's helm-controller to " \
               "install the chart"
        clusters.append((flux, polled_until(flux, vc, "Ready: virtual cluster")))
        # A dedicated cluster whose workers join without GPUs at first (the add-on's release
        # says why), read until Cluster API and the GPU operator have it ready.
        gpu_inside = capi.kubeconfig
        cpu_only = inner_kit.EmulatedInner(gpu_nodes=False)
        try:
            cpu_only.add_node("cpu-1", "", 0)
            capi.kubeconfig, capi.addon_fail = cpu_only.kubeconfig, "driver: ErrImagePull"
            big = provision(launch(alice, profiles["dedicated"], name="big"))
            polled_until(capi, big, "Workers joined; waiting for GPU nodes (add-on gpu-operator")
            # Cluster API moves it to GPU workers: their kubeconfig replaces the old one.
            capi.kubeconfig, capi.addon_fail = gpu_inside, ""
            with admin_api(kube) as api:
                k8s.CoreV1Api(api).patch_namespaced_secret(
                    f"alice-big-{big.pk}-kubeconfig", cluster.capi_namespace,
                    {"data": {"value": base64.b64encode(gpu_inside.encode()).decode()}})
            clusters.append((capi, polled_until(capi, big, "Ready: dedicated cluster")))
        finally:
            cpu_only.close()
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
    # Idle stop asks its Jupyter through the API server's service proxy (no pod answers
    # here: the request is what counts).
    assert idle.read(Instance.objects.get(pk=plain.pk)).unreachable == 1
    services.reconcile_instances()
    notebook_services.reconcile_notebooks()
    kube.delete_object("ResourceQuota", "instance-quota", ns)
    services.reconcile_instances()  # restores it
    assert kube.get("ResourceQuota", "instance-quota", ns) is not None
    bindings = {b["metadata"]["name"] for b in kube.objects("RoleBinding", ns)}
    notebook_services.delete_notebook(notebook=notebook, by=alice)
    wait_for(lambda: notebook_services.teardown_notebook(notebook_id=notebook.pk).status
             == Notebook.Status.DELETED, timeout=60)
    if upstream:
        # A catalogue service on the namespace instance and on the dedicated cluster: its
        # release applied, followed, looked at by the reconcile pass, stopped and deleted.
        board = ServiceProfile.objects.create(
            name="board", display_name="Board", chart_repository="https://charts.example.com",
            chart="board", chart_version="1.0.0", values_template="gpus: ${gpus}\n",
            storage_gib=1)
        dedicated = [i for c, i in clusters if c is capi]
        for where in (plain, *dedicated):
            service = notebook_services.deploy_service(instance=where, name="svc",
                                                       profile=board, by=alice)
            wait_for(lambda pk=service.pk: (flux.reconcile(), notebook_services.advance_service(
                service_id=pk))[1].status == Service.Status.RUNNING, timeout=60)
            notebook_services.reconcile_notebooks()
            notebook_services.stop_service(service=service, by=alice)
            notebook_services.release(kind=Service.KIND, pk=service.pk)
            notebook_services.delete_service(service=service, by=alice)
            wait_for(lambda pk=service.pk: (flux.reconcile(), notebook_services.teardown_service(
                service_id=pk))[1].status == Service.Status.DELETED, timeout=60)
    delete_until_gone(plain, alice)
    for controller, instance in clusters:
        deleted(controller, instance, alice, timeout=90)

    cluster.refresh_from_db()
    scopes = used(kube.requests.records(), cluster.capi_namespace)
    roles = {name: documented_role(name) for name in (
        "gpupaas-portal", "gpupaas-portal-manager", "gpupaas-portal-cluster-api")}
    if not upstream:  # their kinds are not served here: nothing could use them
        roles = {name: {t for t in role if t[0] not in UPSTREAM_GROUPS}
                 for name, role in roles.items()}
    portal = roles["gpupaas-portal"]
    unused = portal - scopes["cluster"]
    assert unused == set(), f"gpupaas-portal grants what nothing uses: {sorted(unused)}"
    # In a namespace both roles apply: what the cluster-wide one allows is not needed again.
    for scope, name in (("managed", "gpupaas-portal-manager"),
                        ("capi", "gpupaas-portal-cluster-api")):
        needed = scopes[scope] - portal
        unused = roles[name] - needed
        assert unused == set(), f"{name} grants what nothing uses: {sorted(unused)}"
        if real:  # else the server would have refused the cycle
            assert needed <= roles[name], f"{name} lacks {sorted(needed - roles[name])}"
    if real:
        # `bind`: the owner's binding to admin and the portal's own to the manager role.
        assert bindings == {"owner-admin", "gpupaas-portal"}
