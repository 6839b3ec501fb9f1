"""The Kubernetes backend does what a real cluster needs (issue 14, "correct on a real
cluster"). Driven through the official client against the emulator, as the other backend
tests; the cluster-side actors (controllers, kubelet) are played through the API too, so the
same tests can run against a real API server."""

import contextlib
import html
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.utils import timezone
from kubernetes import client as k8s

from clusters.admin import ClusterForm
from clusters.backends import BackendError, get_backend
from clusters.backends.kubernetes.client import ClientSettings, KubeClient, api_client
from clusters.crypto import encrypt
from clusters.models import Cluster
from instances import services
from instances.models import Instance
from notebooks import services as notebook_services
from notebooks.models import Notebook

from .conftest import wait_for
from .kit import kubeemu
from .kit.inner import EmulatedInner
from .kube_fixtures import RESTRICTED, deploy_notebook, launch, namespace_of, provision

Status = Instance.Status
NbStatus = Notebook.Status


def advance(notebook: Notebook) -> Notebook:
    return notebook_services.advance_notebook(notebook_id=notebook.pk)


def raw_list(api, path: str) -> dict:
    """A list exactly as the server sends it, undecoded."""
    response = api.call_api(path, "GET", auth_settings=["BearerToken"],
                            _preload_content=False, _return_http_data_only=True)
    return json.loads(response.data)


class Scripted(BaseHTTPRequestHandler):
    """Answers every request with the next scripted (status, headers, body); the last one
    repeats. A real HTTP server for what the emulator does not play."""

    def _answer(self) -> None:
        script = self.server.script
        status, headers, body = script.pop(0) if len(script) > 1 else script[0]
        self.server.seen.append((time.monotonic(), self.command, self.path))
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    servers = []

    def start(*script) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
        server.script, server.seen = list(script), []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def kubeconfig_for(url: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    })


# --- reconcile on a real server ------------------------------------------------------------


def test_reconcile_works_although_list_items_carry_no_kind(emu, api, alice, profiles):
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    items = raw_list(api, "/api/v1/namespaces")["items"]
    assert items and all("kind" not in item for item in items)  # as a real server sends them
    k8s.CoreV1Api(api).delete_namespaced_resource_quota("instance-quota", ns)
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "orphan", "labels": {
        **namespace_of(emu, instance)["metadata"]["labels"], "gpupaas.io/instance": "inst-999"}}})

    summary = services.reconcile_instances()

    assert summary.errors == 0
    assert summary.quarantined == 1
    assert k8s.CoreV1Api(api).read_namespaced_resource_quota("instance-quota", ns)


def test_one_broken_cluster_never_stops_the_pass_for_the_others(
    emu, api, alice, profiles, scripted
):
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    k8s.CoreV1Api(api).delete_namespaced_resource_quota("instance-quota", ns)
    nonsense = scripted((200, {}, {"answer": "not a Kubernetes list"}))
    broken = Cluster(name="broken", display_name="A broken cluster", backend="kubernetes")
    broken.set_kubeconfig(kubeconfig_for(f"http://127.0.0.1:{nonsense.server_port}"))
    broken.save()  # sorts first

    summary = services.reconcile_instances()

    assert summary.errors == 1
    assert k8s.CoreV1Api(api).read_namespaced_resource_quota("instance-quota", ns)


# --- apply ---------------------------------------------------------------------------------


def test_each_object_is_one_server_side_apply_request(emu, api, alice, profiles, cluster):
    cluster.ingress_domain = "apps.example.com"
    cluster.save()
    instance = launch(alice, profiles["namespace"])
    emu.requests.reset()
    instance = provision(instance)
    assert instance.status == Status.RUNNING
    writes = [r for r in emu.requests.records() if r.method != "GET"]
    # namespace, quota, limits, 2 network policies, access account, owner binding: one
    # apply each, and no admission policy: those are the administrator's.
    assert len(writes) == 7
    assert all(r.method == "PATCH" and r.verb == "patch" for r in writes)
    assert not [r for r in writes if "/admissionregistration.k8s.io/" in r.path]
    assert not [r for r in emu.requests.records() if r.status == 409]


def test_the_server_s_retry_after_is_honoured(scripted):
    busy = scripted(
        (429, {"Retry-After": "1"}, {"kind": "Status", "code": 429, "reason": "TooManyRequests"}),
        (200, {}, {"gitVersion": "v1.36.2"}),
    )
    config = yaml.safe_load(kubeconfig_for(f"http://127.0.0.1:{busy.server_port}"))
    kube = KubeClient(api_client(config), ClientSettings(cluster="busy", retry_base_s=0.01))

    assert kube.version()["gitVersion"] == "v1.36.2"
    (first, *_), (second, *_) = busy.seen
    assert second - first >= 0.95


# --- an ingress domain, and nothing half-written --------------------------------------------


def test_an_empty_ingress_domain_is_refused_before_anything_is_written(
    emu, alice, profiles, cluster, notebook_setup
):
    instance, profile = notebook_setup
    cluster.ingress_domain = ""
    cluster.save()
    instance.refresh_from_db()
    with pytest.raises(ValidationError, match="no ingress domain"):
        deploy_notebook(alice, instance, profile)

    # A notebook recorded before the domain was removed: the worker writes nothing either.
    spec_notebook = Notebook(instance=instance, name="late", profile=profile, cpu=1,
                             memory_gib=1, image="x", token_encrypted=encrypt("t"))
    emu.requests.reset()
    with pytest.raises(BackendError, match="has no ingress domain"):
        get_backend(cluster).ensure_notebook(notebook_services.notebook_spec(spec_notebook))
    assert [r for r in emu.requests.records() if r.method != "GET"] == []


def test_the_cluster_form_requires_an_ingress_domain_and_valid_sources(db):
    data = {"display_name": "GPU farm", "name": "gpu-farm", "backend": "kubernetes",
            "in_cluster": True, "ingress_domain": "", "ingress_class": "nginx",
            "ingress_namespace": "ingress-nginx", "gpu_resource_name": "nvidia.com/gpu",
            "gpu_model_label": "nvidia.com/gpu.product", "capi_namespace": "gpupaas-clusters",
            "ingress_from_namespaces": "team=edge\nnot a selector",
            "ingress_from_cidrs": "10.0.0.0/8\n10.0.0.300/32"}
    form = ClusterForm(data=data)
    assert not form.is_valid()
    assert "needs an ingress domain" in form.errors["ingress_domain"][0]
    assert form.errors["ingress_from_namespaces"] == [
        "“not a selector” is not a selector like team=ml,tier=ingress."]
    assert form.errors["ingress_from_cidrs"] == ["“10.0.0.300/32” is not a CIDR."]
    assert ClusterForm(data={**data, "ingress_domain": "apps.example.com",
                             "ingress_from_namespaces": "team=edge",
                             "ingress_from_cidrs": "10.0.0.0/8"}).is_valid()


def play_pod(api, ns: str, notebook: Notebook, name: str, status: dict) -> k8s.V1Pod:
    """The ReplicaSet's pod and what the kubelet or scheduler reports of it."""
    core = k8s.CoreV1Api(api)
    pod = core.create_namespaced_pod(ns, {
        "metadata": {"name": name, "labels": {"gpupaas.io/notebook": notebook.key}},
        "spec": {"containers": [{"name": "notebook", "image": notebook.image,
                                 "securityContext": RESTRICTED}]}})
    core.patch_namespaced_pod_status(name, ns, {"status": status})
    return pod


def test_a_failed_notebook_keeps_no_gpu(emu, api, alice, notebook_setup):
    emu.auto_ready = False
    instance, profile = notebook_setup
    notebook = advance(deploy_notebook(alice, instance, profile))
    ns, name = namespace_of(emu, instance)["metadata"]["name"], f"nb-explore-{notebook.pk}"
    play_pod(api, ns, notebook, f"{name}-abc", {"containerStatuses": [{
        "name": "notebook", "image": notebook.image, "imageID": "", "ready": False,
        "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                                                 "message": "manifest unknown"}}}]})

    notebook = advance(notebook)

    assert notebook.status == NbStatus.FAILED
    assert notebook.status_message == "Image pull failed: the cluster cannot download the image."
    deployment = k8s.AppsV1Api(api).read_namespaced_deployment(name, ns)
    assert deployment.spec.replicas == 0


# --- 404s in words ---------------------------------------------------------------------------


def test_a_missing_cluster_api_and_a_missing_namespace_are_told_apart(
    emu, api, alice, profiles
):
    instance = provision(launch(alice, profiles["dedicated"], name="big"))
    assert instance.status == Status.FAILED
    assert instance.status_message == (
        "The namespace gpupaas-clusters is missing on Emulated cluster; an administrator must "
        "create it.")

    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "gpupaas-clusters"}})
    emu.store.catalog.remove("cluster.x-k8s.io", "clusters")  # Cluster API uninstalled
    instance = provision(launch(alice, profiles["dedicated"], name="big2"))
    assert instance.status == Status.FAILED
    assert instance.status_message == (
        "Cluster API is not installed on Emulated cluster; dedicated clusters need it.")


def test_a_notebook_whose_namespace_vanished_says_so(emu, api, alice, notebook_setup):
    instance, profile = notebook_setup
    ns = namespace_of(emu, instance)["metadata"]["name"]
    emu.delete_object("Namespace", ns)
    notebook = advance(deploy_notebook(alice, instance, profile))
    assert notebook.status == NbStatus.FAILED
    assert notebook.status_message == (
        f"The namespace {ns} is missing on Emulated cluster; an administrator must create it.")


def test_a_terminating_namespace_is_not_a_permission_problem(emu, api, alice, notebook_setup):
    instance, profile = notebook_setup
    ns = namespace_of(emu, instance)["metadata"]["name"]
    core = k8s.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "held", "finalizers": [
        "example.com/hold"]}})
    core.delete_namespace(ns)  # stays Terminating while the finalizer holds

    notebook = advance(deploy_notebook(alice, instance, profile))

    assert notebook.status == NbStatus.FAILED
    assert notebook.status_message == (
        "Its namespace is being deleted on the cluster; nothing new can be created there.")


# --- health is read --------------------------------------------------------------------------


# A dedicated cluster that turns unavailable: tests/test_kube_clusters.py.


def running_notebook(emu, alice, instance, profile, name="explore") -> Notebook:
    notebook = advance(deploy_notebook(alice, instance, profile, name=name))
    return wait_for(lambda: (n := advance(notebook)).status == NbStatus.RUNNING and n)


def test_a_notebook_with_no_available_replica_is_not_running(emu, api, alice, notebook_setup):
    emu.add_hook(kubeemu.serve_endpoints)
    instance, profile = notebook_setup
    notebook = running_notebook(emu, alice, instance, profile)
    ns, name = namespace_of(emu, instance)["metadata"]["name"], f"nb-explore-{notebook.pk}"
    emu.set_ready("Deployment", name, ns, ready=False)  # its pod died: the controller says so
    wait_for(lambda: not k8s.AppsV1Api(api).read_namespaced_deployment(
        name, ns).status.available_replicas)

    notebook_services.reconcile_notebooks()

    notebook.refresh_from_db()
    assert notebook.status == NbStatus.DEPLOYING
    assert notebook.status_message == "Restarting: Its server has no ready replica."


@pytest.mark.parametrize(("status", "phase", "message"), [
    ({"containerStatuses": [{"name": "notebook", "image": "x", "imageID": "", "ready": False,
                             "restartCount": 5,
                             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                             "lastState": {"terminated": {"exitCode": 137,
                                                          "reason": "OOMKilled"}}}]},
     NbStatus.FAILED, "JupyterLab keeps crashing (out of memory; restarted 5 times)."),
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]},
     NbStatus.DEPLOYING,
     "Unschedulable: no free H200 GPU on the cluster right now; waiting for one."),
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node "
                                 "affinity/selector."}]},
     NbStatus.DEPLOYING,
     "Unschedulable: no node of the cluster offers H200 GPUs; waiting for one."),
    # As kube-scheduler 1.36.2 words it when no StorageClass provides the home volume.
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/1 nodes are available: pod has unbound immediate "
                                 "PersistentVolumeClaims. not found"}]},
     NbStatus.DEPLOYING,
     "Waiting for its home volume: the cluster has not provided the volume claim yet (is "
     "there a default StorageClass, or one set for the cluster?)."),
])
def test_a_notebook_s_status_follows_its_pod(emu, api, alice, notebook_setup, profiles,
                                            status, phase, message):
    profiles["namespace"].gpu_model = "H200"
    profiles["namespace"].save()
    emu.auto_ready = False
    instance, profile = notebook_setup
    Instance.objects.filter(pk=instance.pk).update(gpu_model="H200")
    notebook = advance(deploy_notebook(alice, instance, profile))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    play_pod(api, ns, notebook, f"nb-explore-{notebook.pk}-abc", status)

    notebook = advance(notebook)

    assert (notebook.status, notebook.status_message) == (phase, message)


@pytest.mark.parametrize(("refusal", "message"), [
    ('pods "nb-x" is forbidden: violates PodSecurity "restricted:v1.31": privileged',
     "Refused by the cluster's Pod Security rules: the image or its settings need more "
     "privileges than the instance allows."),
    ('pods "nb-x" is forbidden: exceeded quota: instance-quota, requested: '
     'requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=2, limited: '
     'requests.nvidia.com/gpu=2',
     "Quota exceeded: the notebook does not fit the instance's quota."),
    ('pods "nb-x" is forbidden: maximum cpu usage per Container is 8, but limit is 16',
     "Too big for the instance: a container asks for more than the instance allows one "
     "container."),
])
def test_refusals_of_the_pod_are_said_in_words(emu, api, alice, notebook_setup, refusal,
                                               message):
    emu.auto_ready = False
    instance, profile = notebook_setup
    notebook = advance(deploy_notebook(alice, instance, profile))
    ns, name = namespace_of(emu, instance)["metadata"]["name"], f"nb-explore-{notebook.pk}"
    # The Deployment controller reports its ReplicaSet's FailedCreate: play it, once the
    # emulator's own rollout status is in (it would replace ours).
    wait_for(lambda: k8s.AppsV1Api(api).read_namespaced_deployment_status(
        name, ns).status.conditions)
    k8s.AppsV1Api(api).patch_namespaced_deployment_status(name, ns, {"status": {"conditions": [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": refusal}]}})

    notebook = advance(notebook)

    assert (notebook.status, notebook.status_message) == (NbStatus.FAILED, message)
    assert refusal in notebook.status_detail


def test_events_of_a_notebook_whose_name_starts_alike_are_not_its_own(
    emu, api, alice, notebook_setup
):
    emu.auto_ready = False
    instance, profile = notebook_setup
    notebook = advance(deploy_notebook(alice, instance, profile))
    ns, name = namespace_of(emu, instance)["metadata"]["name"], f"nb-explore-{notebook.pk}"
    play_pod(api, ns, notebook, f"{name}-abc", {})
    # Notebook `explore-<pk>` of the same instance would be named `<name>-<its id>`.
    k8s.CoreV1Api(api).create_namespaced_event(ns, {
        "metadata": {"generateName": "other-"}, "type": "Warning", "reason": "Failed",
        "message": "Failed to pull image: manifest unknown", "lastTimestamp":
        "2026-11-28T10:00:00Z", "involvedObject": {"kind": "Pod", "name": f"{name}-8-xyz",
                                                   "namespace": ns}})

    notebook = advance(notebook)

    assert notebook.status == NbStatus.DEPLOYING
    assert notebook.status_message == "Starting JupyterLab."


# --- ingress, placement, storage ------------------------------------------------------------


def test_notebook_hosts_are_unguessable_and_carry_the_namespaces_tag(
    emu, api, alice, notebook_setup
):
    emu.add_hook(kubeemu.serve_endpoints)
    instance, profile = notebook_setup
    one = running_notebook(emu, alice, instance, profile, name="one")
    two = running_notebook(emu, alice, instance, profile, name="two")
    assert one.host_suffix != two.host_suffix and len(one.host_suffix) == 10
    assert one.url == (f"http://nb-one-{one.pk}-{one.host_suffix}-i{instance.pk}"
                       ".apps.example.com/lab")
    # The host rule is the administrator's policy: the portal wrote none.
    assert not k8s.AdmissionregistrationV1Api(api).list_validating_admission_policy().items
    ns = k8s.CoreV1Api(api).read_namespace(namespace_of(emu, instance)["metadata"]["name"])
    assert ns.metadata.labels["gpupaas.io/host-tag"] == f"i{instance.pk}"


def test_notebook_sources_gpu_model_and_home_volume_come_from_cluster_and_profiles(
    emu, api, alice, profiles, cluster, notebook_setup
):
    cluster.ingress_from_cidrs = "10.1.0.0/16\n"
    cluster.ingress_from_namespaces = "team=edge"
    cluster.storage_class = "fast-ssd"
    cluster.save()
    instance, profile = notebook_setup
    profile.storage_gib = 30
    profile.save()
    Instance.objects.filter(pk=instance.pk).update(gpu_model="NVIDIA-H200")
    instance.refresh_from_db()
    services.reconcile_instances()  # the cluster's settings reach existing instances
    ns = namespace_of(emu, instance)["metadata"]["name"]

    notebook = advance(deploy_notebook(alice, instance, profile))

    name = f"nb-explore-{notebook.pk}"
    pod = k8s.AppsV1Api(api).read_namespaced_deployment(name, ns).spec.template.spec
    assert pod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert [(t.key, t.operator) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists")]
    claim = k8s.CoreV1Api(api).read_namespaced_persistent_volume_claim(f"{name}-home", ns)
    assert claim.spec.resources.requests == {"storage": "30Gi"}
    assert claim.spec.storage_class_name == "fast-ssd"
    notebook_services.delete_notebook(notebook=notebook, by=alice)
    wait_for(lambda: notebook_services.teardown_notebook(notebook_id=notebook.pk).status
             == NbStatus.DELETED)
    assert emu.get("PersistentVolumeClaim", f"{name}-home", ns) is None


def test_new_instances_admit_the_clusters_notebook_sources(emu, api, alice, profiles, cluster):
    cluster.ingress_from_cidrs = "10.1.0.0/16"
    cluster.save()
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    allow = k8s.NetworkingV1Api(api).read_namespaced_network_policy(
        "allow-namespace-and-ingress", ns)
    assert [p.ip_block.cidr for p in allow.spec.ingress[0]._from if p.ip_block] == [
        "10.1.0.0/16"]


def test_test_connection_says_which_gpus_are_time_sliced_or_mig(emu, api, cluster):
    core = k8s.CoreV1Api(api)
    for name, labels, allocatable in (
        ("shared", {"nvidia.com/gpu.product": "NVIDIA-A100", "nvidia.com/gpu.replicas": "4"},
         {"nvidia.com/gpu": "8"}),
        ("mig", {"nvidia.com/gpu.product": "NVIDIA-H100", "nvidia.com/mig.strategy": "mixed"},
         {"nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "0"}),
    ):
        core.create_node({"metadata": {"name": name, "labels": labels}})
        core.patch_node_status(name, {"status": {"allocatable": allocatable}})

    report = get_backend(cluster).check_connection()

    assert "allocatable GPUs: 8 × NVIDIA-A100. NVIDIA-A100 is time-sliced: 2 GPUs shared 4 " \
        "ways. MIG slices: 7 × nvidia.com/mig-1g.10gb on NVIDIA-H100." in report


# --- polling, leases and cost ----------------------------------------------------------------


def test_a_reconcile_pass_starts_no_second_chain_for_watched_work(alice, profiles, settings):
    settings.RECONCILE_STUCK_AFTER_S = 60
    instance = launch(alice, profiles["namespace"])
    long_ago = timezone.now() - timezone.timedelta(minutes=5)
    Instance.objects.filter(pk=instance.pk).update(
        status_changed_at=long_ago, poll_lease_until=timezone.now() + timezone.timedelta(
            minutes=1))
    assert services.reconcile_instances().redriven == 0  # a live chain watches it

    Instance.objects.filter(pk=instance.pk).update(poll_lease_until=long_ago)
    assert services.reconcile_instances().redriven == 1  # its chain died: one new one
    assert services.reconcile_instances().redriven == 0  # ...which now holds the lease


@pytest.fixture
def fast_polls(monkeypatch):
    """Set before the worker starts: it reads these from its environment."""
    monkeypatch.setenv("INSTANCE_POLL_S", "0.02")
    monkeypatch.setenv("INSTANCE_POLL_MAX_S", "0.1")
    monkeypatch.setenv("PORTAL_ID", "test-portal")
    monkeypatch.setenv("KUBE_RETRY_BASE_S", "0.01")


def cluster_looks(emu, name: str) -> int:
    """How many times the portal looked at the Cluster API Cluster `name`: the one apply that
    starts a provisioning, then a status read per poll."""
    return sum(1 for r in emu.requests.records() if r.method in ("PATCH", "GET")
               and r.resource.startswith("clusters") and r.name == name)


def test_a_long_wait_is_polled_past_eight_tries_and_completes(
    fast_polls, celery_worker_process, emu, capi, alice, profiles
):
    instance = launch(alice, profiles["dedicated"], name="slow")
    name = f"alice-slow-{instance.pk}"

    def looks() -> int:
        return cluster_looks(emu, name)

    wait_for(lambda: looks() >= 12, timeout=60)  # Celery's default would stop at 9
    capi.reconcile()  # Cluster API brings it up: control plane, GPU workers, kubeconfig

    wait_for(lambda: Instance.objects.get(pk=instance.pk).status == Status.RUNNING, timeout=60)
    # The chain ends and says so: its task lets the lease go just after the transition.
    assert wait_for(lambda: Instance.objects.get(pk=instance.pk).poll_lease_until is None,
                    timeout=10)


@pytest.fixture
def backed_off_polls(monkeypatch):
    monkeypatch.setenv("INSTANCE_POLL_S", "0.1")
    monkeypatch.setenv("INSTANCE_POLL_MAX_S", "1.6")
    monkeypatch.setenv("PORTAL_ID", "test-portal")


def test_polling_backs_off_to_its_cap(backed_off_polls, celery_worker_process, emu, capi,
                                      alice, profiles):
    instance = launch(alice, profiles["dedicated"], name="slow")
    name = f"alice-slow-{instance.pk}"

    def looks() -> int:
        return cluster_looks(emu, name)

    wait_for(looks, timeout=30)
    time.sleep(6)
    # 0.1, 0.2, 0.4, 0.8, then 1.6 s apart: about 7 looks in 6 s, where a fixed 0.1 s
    # would have made dozens.
    assert 4 <= looks() <= 10


def test_reconciling_notebooks_inside_a_virtual_cluster_costs_lists_and_no_writes(
    emu, alice, profiles, cluster
):
    cluster.ingress_domain = "apps.example.com"
    cluster.save()
    from notebooks.models import NotebookProfile

    profile = NotebookProfile.objects.create(name="p", display_name="P", image="img",
                                             default_cpu=1, default_memory_gib=1)
    inner = EmulatedInner()  # the virtual cluster's own API server, over TLS
    try:
        instance = launch(alice, profiles["vcluster"], name="vc")
        Instance.objects.filter(pk=instance.pk).update(
            status=Status.RUNNING, kubeconfig_encrypted=encrypt(inner.kubeconfig))
        instance.refresh_from_db()
        notebooks = [advance(notebook_services.deploy_notebook(
            instance=instance, name=f"n{i}", profile=profile, by=alice, gpus=0))
            for i in range(3)]
        for notebook in notebooks:
            wait_for(lambda n=notebook: advance(n).status == NbStatus.RUNNING)

        inner.requests.reset()
        notebook_services.reconcile_notebooks()
        assert [r for r in inner.requests.records() if r.method != "GET"] == []
        lists = inner.requests.total
        # One per kind: claim, Service, Ingress, Deployment, EndpointSlices. Never Secrets
        # (the portal may not list them across namespaces); a token Secret comes back with its
        # Deployment.
        assert lists == 5

        inner.delete_object("Service", f"nb-n1-{notebooks[1].pk}", "notebooks")
        inner.requests.reset()
        notebook_services.reconcile_notebooks()
        writes = [r for r in inner.requests.records() if r.method != "GET"]
        assert [(w.method, w.name) for w in writes] == [
            ("PATCH", "notebooks"), ("PATCH", f"nb-n1-{notebooks[1].pk}")]
        assert inner.get("Service", f"nb-n1-{notebooks[1].pk}", "notebooks") is not None
    finally:
        inner.close()


def test_the_admin_applies_the_policies_and_test_connection_checks_them(
        client, admin_user, emu, api, tmp_path, settings):
    """Registering a cluster shows the exact YAML to apply (the policies and this cluster's
    parameter); Test connection says whether they are there and whether the parameter agrees
    with the portal's settings. The portal itself writes no admission policy."""
    settings.PORTAL_ID = "test-portal"
    client.force_login(admin_user)
    form = {
        "display_name": "GPU farm", "name": "gpu-farm", "backend": "kubernetes",
        "kubeconfig": emu.kubeconfig(tmp_path / "config").read_text(),
        "ingress_domain": "apps.example.com", "ingress_class": "nginx",
        "ingress_namespace": "ingress-nginx", "gpu_resource_name": "nvidia.com/gpu",
        "gpu_model_label": "nvidia.com/gpu.product", "capi_namespace": "gpupaas-clusters",
    }
    response = client.post("/admin/clusters/cluster/add/", form, follow=True)
    assert "GPU farm: Admission policies missing: gpupaas-portal-confined, " \
        "gpupaas-portal-confined (binding), gpupaas-ingress-hosts, gpupaas-ingress-hosts " \
        "(binding), gpupaas-gpu-model, gpupaas-gpu-model (binding)" in response.content.decode()
    cluster = Cluster.objects.get(name="gpu-farm")
    page = client.get(f"/admin/clusters/cluster/{cluster.pk}/change/").content.decode()
    shown = re.search(r'<pre class="policy-yaml">(.*?)</pre>', page, re.S).group(1)
    objects = list(yaml.safe_load_all(html.unescape(shown)))
    assert objects[-1]["data"]["ingressDomain"] == "apps.example.com"
    assert not k8s.AdmissionregistrationV1Api(api).list_validating_admission_policy().items

    emu.create({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "gpupaas-system"}})
    for obj in objects:  # the administrator: kubectl apply -f
        emu.create(obj)
    tested = client.post("/admin/clusters/cluster/", {
        "action": "test_connection", "_selected_action": [cluster.pk]}, follow=True)
    assert "Admission policies installed." in tested.content.decode()

    # A policy that enforces nothing is no policy: a binding gone, a rule loosened.
    admission = k8s.AdmissionregistrationV1Api(api)
    admission.delete_validating_admission_policy_binding("gpupaas-gpu-model")
    admission.patch_validating_admission_policy("gpupaas-portal-confined", {
        "spec": {"failurePolicy": "Ignore"}})
    tested = client.post("/admin/clusters/cluster/", {
        "action": "test_connection", "_selected_action": [cluster.pk]}, follow=True)
    assert ("Admission policies missing: gpupaas-gpu-model (binding); not as shipped: "
            "gpupaas-portal-confined;") in tested.content.decode()
    for obj in objects[:-1]:
        with contextlib.suppress(kubeemu.ApiError):  # the ones still there
            emu.create(obj)
    admission.patch_validating_admission_policy("gpupaas-portal-confined", {
        "spec": {"failurePolicy": "Fail"}})

    form["ingress_domain"] = "new.example.com"  # the domain changes in the portal only
    form["kubeconfig"] = ""
    client.post(f"/admin/clusters/cluster/{cluster.pk}/change/", form)
    tested = client.post("/admin/clusters/cluster/", {
        "action": "test_connection", "_selected_action": [cluster.pk]}, follow=True)
    assert ("The policies&#x27; parameter gpupaas-cluster differs from the portal: "
            "ingressDomain is &#x27;apps.example.com&#x27; on the cluster, "
            "&#x27;new.example.com&#x27; here.") in tested.content.decode()




def test_one_broken_cluster_never_stops_the_notebook_pass_for_the_others(
    emu, api, alice, notebook_setup, scripted
):
    emu.add_hook(kubeemu.serve_endpoints)
    instance, profile = notebook_setup
    notebook = running_notebook(emu, alice, instance, profile)
    ns, name = namespace_of(emu, instance)["metadata"]["name"], f"nb-explore-{notebook.pk}"
    nonsense = scripted((200, {}, {"answer": "not a Kubernetes list"}))
    broken = Cluster(name="broken", display_name="A broken cluster", backend="kubernetes",
                     ingress_domain="apps.example.com")
    broken.set_kubeconfig(kubeconfig_for(f"http://127.0.0.1:{nonsense.server_port}"))
    broken.save()  # sorts first
    there = launch(alice, profiles_on(broken), name="there")
    Instance.objects.filter(pk=there.pk).update(status=Status.RUNNING)
    there.refresh_from_db()
    stuck = deploy_notebook(alice, there, profile, name="far")
    Notebook.objects.filter(pk=stuck.pk).update(status=NbStatus.RUNNING)
    k8s.CoreV1Api(api).delete_namespaced_service(name, ns)

    notebook_services.reconcile_notebooks()

    assert k8s.CoreV1Api(api).read_namespaced_service(name, ns)


def profiles_on(cluster: Cluster):
    from instances.models import ComputeProfile

    return ComputeProfile.objects.create(
        name=f"on-{cluster.name}", display_name=f"on {cluster}", kind="namespace",
        cluster=cluster, gpus=1, cpu=8, memory_gib=64, storage_gib=100, published=True)


def test_a_notebook_server_whose_row_is_gone_gives_its_gpu_back(emu, api, alice, notebook_setup):
    """A Notebook row deleted outside the portal (by hand, a restore from an older backup):
    its Deployment is scaled to zero on the next pass, so the GPU it held is free; its
    objects stay for an administrator, and a live notebook beside it is untouched."""
    emu.add_hook(kubeemu.serve_endpoints)
    instance, profile = notebook_setup
    lost = running_notebook(emu, alice, instance, profile, name="lost")
    kept = running_notebook(emu, alice, instance, profile, name="kept")
    ns = namespace_of(emu, instance)["metadata"]["name"]
    Notebook.objects.filter(pk=lost.pk).delete()

    summary = notebook_services.reconcile_notebooks()

    assert summary["orphans_stopped"] == 1
    apps = k8s.AppsV1Api(api)
    assert apps.read_namespaced_deployment(f"nb-lost-{lost.pk}", ns).spec.replicas == 0
    assert apps.read_namespaced_deployment(f"nb-kept-{kept.pk}", ns).spec.replicas == 1
    assert notebook_services.reconcile_notebooks()["orphans_stopped"] == 0  # once


def test_a_refused_credential_and_a_crd_being_deleted_are_said_in_words(scripted):
    """A 401 on /version (a cluster that no longer takes the credential) is a BackendError in
    words, never a raw client exception; a kind whose CRD is being deleted says so, not that
    a role is missing."""
    refused = scripted((401, {}, {"kind": "Status", "code": 401, "reason": "Unauthorized",
                                  "message": "Unauthorized"}))
    kube = KubeClient(api_client(yaml.safe_load(kubeconfig_for(
        f"http://127.0.0.1:{refused.server_port}"))), ClientSettings(cluster="gone"))
    with pytest.raises(BackendError) as caught:
        kube.version()
    assert caught.value.message == "The cluster refused the portal's credentials or permissions."
    assert caught.value.detail.startswith("HTTP 401")

    terminating = scripted((405, {}, {
        "kind": "Status", "code": 405, "reason": "MethodNotAllowed",
        "message": "create not allowed while custom resource definition is terminating"}))
    kube = KubeClient(api_client(yaml.safe_load(kubeconfig_for(
        f"http://127.0.0.1:{terminating.server_port}"))), ClientSettings(cluster="farm"))
    with pytest.raises(BackendError) as caught:
        kube.apply({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
                    "metadata": {"name": "c", "namespace": "gpupaas-clusters"}})
    assert caught.value.message == (
        "The definition of Cluster (its CRD) is being deleted on farm: nothing of that kind "
        "can be created until an administrator installs it again.")
