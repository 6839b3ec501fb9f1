"""The Kubernetes backend over real HTTP, driven by the official client exactly as production
drives it (no mocks). Every test that takes `emu` runs twice: against the API emulator, and
against a real kube-apiserver with its controllers and scheduler when $KUBEBUILDER_ASSETS
names the envtest binaries (skipped otherwise). The portal connects through the kit's
counting, fault-injecting proxy; on the real server with the documented RBAC, never as
admin."""

import datetime
import json
import secrets
import shutil
import subprocess
import time
from collections import Counter

import pytest
from django.core.exceptions import ValidationError
from kubernetes import client as k8s

from clusters.backends import TransientBackendError, get_backend
from clusters.backends.kubernetes.status import explain_events
from instances import quarantine, services
from instances.models import Instance, QuarantinedInstance
from notebooks import services as notebook_services
from notebooks.models import Notebook

from .conftest import wait_for, workspace_of
from .kit import kubeemu, kubeproxy, targets
from .kube_fixtures import RESTRICTED, deploy_notebook, launch, namespace_of, provision
from .test_kube_clusters import HELM_RELEASE

Status = Instance.Status
NS_KINDS = ["ResourceQuota", "LimitRange", "NetworkPolicy", "RoleBinding"]


@pytest.fixture
def emu(kube):
    """The API server under test (see tests/kit/targets.py): emulator or real."""
    return kube


def backoff(timeout: float = 60.0):
    """Pauses for polling loops, growing from 50 ms to 1 s: a real namespace takes seconds to
    go (its controller empties it first); the emulator takes one pause."""
    deadline, pause = time.monotonic() + timeout, 0.05
    while time.monotonic() < deadline:
        yield
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)


def delete_until_gone(instance: Instance, user) -> Instance:
    services.delete_instance(instance=instance, by=user)
    for _ in backoff():
        instance = services.teardown_instance(instance_id=instance.pk)
        if instance.status == Status.DELETED:
            return instance
    raise AssertionError(f"{instance} still {instance.status}: {instance.status_message}")


def later(minutes: int) -> str:
    """An event time after anything the real scheduler has reported so far."""
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_namespace_instance_provisions_runs_and_deletes(emu, alice, profiles):
    instance = launch(alice, profiles["namespace"])
    emu.requests.reset()

    instance = provision(instance)

    assert instance.status == Status.RUNNING, instance.status_message
    assert emu.requests.total <= 10
    ns = namespace_of(emu, instance)["metadata"]["name"]
    assert ns == f"alice-train-{instance.pk}"
    assert instance.status_message == f"Ready: namespace {ns} with room for 2 GPUs."
    for kind in NS_KINDS:
        assert emu.objects(kind, ns), f"no {kind} in {ns}"
    quota = emu.get("ResourceQuota", "instance-quota", ns)
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "2"
    assert len(emu.objects("NetworkPolicy", ns)) == 2
    assert emu.objects("Secret", ns) == []  # no long-lived service account tokens

    instance = delete_until_gone(instance, alice)
    assert emu.objects("Namespace", label_selector=f"gpupaas.io/instance={instance.key}") == []
    assert emu.objects("ResourceQuota", ns) == []


def test_provisioning_twice_changes_nothing(emu, alice, profiles):
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    if emu.real:  # the quota controller writes the quota's status once, soon after creation
        wait_for(lambda: (emu.get("ResourceQuota", "instance-quota", ns).get("status") or {})
                 .get("used"))
    before = {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
              for o in emu.objects(namespace=ns)}

    state = get_backend(instance.cluster).ensure_instance(services.instance_spec(instance))

    after = {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
             for o in emu.objects(namespace=ns)}
    assert state.phase == "running"
    assert after == before


# Virtual and dedicated clusters (Flux, Cluster API): tests/test_kube_clusters.py.


def test_reconcile_restores_drift(emu, alice, profiles):
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    emu.delete_object("RoleBinding", "owner-admin", ns)
    emu.delete_object("NetworkPolicy", "default-deny-ingress", ns)
    emu.delete_object("ResourceQuota", "instance-quota", ns)

    services.reconcile_instances()

    assert emu.get("RoleBinding", "owner-admin", ns)["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpupaas-access", "namespace": ns}]
    assert emu.get("NetworkPolicy", "default-deny-ingress", ns) is not None
    assert emu.get("ResourceQuota", "instance-quota", ns) is not None
    instance.refresh_from_db()
    assert instance.status == Status.RUNNING


def test_a_reconcile_pass_costs_the_same_queries_at_two_and_at_six_running_instances(
    emu, alice, profiles
):
    """Instances still running as they were cost the pass no write: at 10,000 a transaction
    each was most of its time (bench/scale.py)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def pass_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert services.reconcile_instances().errors == 0
        return len(queries)

    workspace = workspace_of(alice)
    workspace.max_gpus, workspace.max_instances = 12, 6
    workspace.save()
    for n in range(2):
        provision(launch(alice, profiles["namespace"], name=f"few-{n}"))
    few = pass_queries()
    for n in range(4):
        provision(launch(alice, profiles["namespace"], name=f"more-{n}"))

    assert pass_queries() == few
    assert set(Instance.objects.values_list("status", flat=True)) == {Status.RUNNING}


def test_reconcile_marks_an_instance_whose_namespace_vanished(emu, alice, profiles):
    instance = provision(launch(alice, profiles["namespace"]))
    emu.delete_object("Namespace", namespace_of(emu, instance)["metadata"]["name"])

    services.reconcile_instances()

    instance.refresh_from_db()
    assert instance.status == Status.FAILED
    assert instance.status_message == "Its namespace was deleted outside the portal."


def test_reconcile_quarantines_orphans_it_labelled_and_touches_nothing_else(
    emu, api, alice, profiles
):
    instance = provision(launch(alice, profiles["namespace"]))
    core = k8s.CoreV1Api(api)
    labels = dict(namespace_of(emu, instance)["metadata"]["labels"])
    core.create_namespace({"metadata": {"name": "orphan",
                                        "labels": {**labels, "gpupaas.io/instance": "inst-999"}}})
    core.create_namespace({"metadata": {"name": "other-portal", "labels": {
        **labels, "gpupaas.io/portal": "someone-else", "gpupaas.io/instance": "inst-998"}}})
    core.create_namespace({"metadata": {"name": "unmanaged"}})

    summary = services.reconcile_instances()

    assert summary.quarantined == 1
    remaining = {n["metadata"]["name"]: n for n in emu.objects("Namespace")
                 if not n["metadata"].get("deletionTimestamp")}
    assert {"orphan", "other-portal", "unmanaged",
            namespace_of(emu, instance)["metadata"]["name"]} <= remaining.keys()
    marked = [name for name, ns in remaining.items()
              if "gpupaas.io/quarantined-at" in (ns["metadata"].get("annotations") or {})]
    assert marked == ["orphan"]
    row = QuarantinedInstance.objects.get()
    assert (row.key, row.record) == ("inst-999", {})  # made by hand: nothing recorded


def test_a_forgotten_namespace_instance_is_stopped_kept_and_adopted_with_its_notebook(
    emu, api, alice, admin_user, notebook_setup
):
    instance, profile = notebook_setup
    notebook = notebook_services.advance_notebook(
        notebook_id=deploy_notebook(alice, instance, profile).pk)
    ns = namespace_of(emu, instance)["metadata"]["name"]
    server = f"nb-explore-{notebook.pk}"
    k8s.CoreV1Api(api).create_namespaced_pod(ns, {"metadata": {"name": "trainer"}, "spec": {
        "containers": [{"name": "main", "image": "python:3.12", "securityContext": RESTRICTED,
                        "resources": {"requests": {"nvidia.com/gpu": "1"},
                                      "limits": {"nvidia.com/gpu": "1"}}}]}})
    Instance.objects.filter(pk=instance.pk).delete()  # a restore from an older backup

    assert services.reconcile_instances().quarantined == 1

    root = emu.get("Namespace", ns)
    assert "gpupaas.io/quarantined-at" in root["metadata"]["annotations"]
    assert [n["metadata"]["name"] for n in emu.objects(
        "Namespace", label_selector="gpupaas.io/quarantined=true")] == [ns]
    assert emu.get("ResourceQuota", "instance-quota", ns)["spec"]["hard"][
        "requests.nvidia.com/gpu"] == "0"
    assert emu.get("Deployment", server, ns)["spec"]["replicas"] == 0
    assert emu.get("Pod", "trainer", ns) is None  # it held a GPU
    assert emu.get("PersistentVolumeClaim", f"{server}-home", ns) is not None  # the files stay
    row = QuarantinedInstance.objects.get(key=instance.key)
    assert (row.owner, row.name, row.record["gpus"]) == ("alice", "train", 2)

    adopted = quarantine.adopt(row, by=admin_user)

    assert (adopted.pk, adopted.status) == (instance.pk, Status.STOPPED)
    assert "gpupaas.io/quarantined-at" not in (
        emu.get("Namespace", ns)["metadata"].get("annotations") or {})
    assert "gpupaas.io/quarantined" not in emu.get("Namespace", ns)["metadata"]["labels"]
    services.start_instance(instance=adopted, by=alice)
    adopted = services.provision_instance(instance_id=adopted.pk)
    assert adopted.status == Status.RUNNING, adopted.status_message
    assert emu.get("ResourceQuota", "instance-quota", ns)["spec"]["hard"][
        "requests.nvidia.com/gpu"] == "2"
    assert services.reconcile_instances().quarantined == 0


def test_a_reconcile_pass_costs_the_same_requests_at_3_and_12_instances(emu, alice, profiles):
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 100, 1000
    workspace.save()

    def requests_per_pass() -> int:
        emu.requests.reset()
        services.reconcile_instances()
        return emu.requests.total

    for i in range(3):
        provision(launch(alice, profiles["namespace"], name=f"a{i}", workspace=workspace))
    few = requests_per_pass()
    for i in range(9):
        provision(launch(alice, profiles["namespace"], name=f"b{i}", workspace=workspace))
    assert requests_per_pass() == few <= 14


def test_with_20_percent_faults_every_instance_converges_and_nothing_is_orphaned(
    emu, alice, profiles, settings
):
    settings.KUBE_REQUEST_TIMEOUT_S = 0.3
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 100, 1000
    workspace.save()
    instances = [launch(alice, profiles["namespace"], name=f"job-{i}", workspace=workspace)
                 for i in range(10)]
    emu.faults = kubeproxy.Faults(rate=0.2, kinds=("500", "timeout", "reset"), seed=7, delay=0.5)

    def drive(step, instance, done):
        for _ in backoff():  # what the worker's task retries do
            try:
                instance = step(instance_id=instance.pk)
            except TransientBackendError:
                continue
            if instance.status in done:
                return instance
        raise AssertionError(f"{instance} stuck in {instance.status}")

    settled = [drive(services.provision_instance, i, {Status.RUNNING, Status.FAILED})
               for i in instances]
    assert all(i.status_message for i in settled)
    assert emu.requests.faulted > 0
    for instance in settled[:5]:
        services.delete_instance(instance=instance, by=alice)
        drive(services.teardown_instance, instance, {Status.DELETED})

    emu.faults = None
    services.reconcile_instances()
    live = set(Instance.objects.exclude(status=Status.DELETED).values_list("pk", flat=True))
    mine = f"gpupaas.io/portal={settings.PORTAL_ID}"
    on_cluster = {n["metadata"]["labels"]["gpupaas.io/instance"]
                  for n in emu.objects("Namespace", label_selector=mine)
                  if not n["metadata"].get("deletionTimestamp")}
    assert on_cluster == {f"inst-{pk}" for pk in live}


def test_an_unreachable_cluster_is_said_in_words(alice, profiles, cluster, settings):
    settings.KUBE_RETRIES = 1
    cluster.set_kubeconfig(cluster.kubeconfig.replace(cluster.kubeconfig.split("server: ")[1]
                                                      .split()[0], "http://127.0.0.1:9"))
    cluster.save()
    instance = launch(alice, profiles["namespace"])
    with pytest.raises(TransientBackendError):
        provision(instance)
    instance.refresh_from_db()
    assert instance.status == Status.PROVISIONING
    assert instance.status_message.startswith(
        "The cluster Emulated cluster is not answering; the portal keeps trying.")


def test_stuck_workloads_are_explained_in_plain_words(upstream, api, alice, profiles):
    emu = upstream  # Flux is there; nothing plays it, so the chart's pods are what says why
    emu.auto_ready = False
    instance = provision(launch(alice, profiles["vcluster"], name="vc"))
    ns = namespace_of(emu, instance)["metadata"]["name"]

    def warn(reason: str, message: str, at: str) -> None:
        k8s.CoreV1Api(api).create_namespaced_event(ns, {
            "metadata": {"generateName": "vcluster-"},
            "involvedObject": {"kind": "Pod", "name": "vcluster-0", "namespace": ns},
            "type": "Warning", "reason": reason, "message": message,
            "lastTimestamp": at,
        })

    warn("FailedScheduling", "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
         later(minutes=1))
    instance = provision(instance)
    assert instance.status == Status.PROVISIONING
    assert instance.status_message.startswith(
        "Installing the virtual cluster: unschedulable: no free GPU of that model")

    warn("Failed", 'Failed to pull image "ghcr.io/loft-sh/vcluster-oss:0.20.0": not found',
         later(minutes=5))
    instance = provision(instance)
    assert instance.status == Status.FAILED
    assert instance.status_message == "Image pull failed: the cluster cannot download the image."
    assert "not found" in instance.status_detail


@pytest.fixture
def fast_polls(monkeypatch):
    """Polls every 0.05 s backing off to 0.4 s; set before the worker starts (it reads these
    from its environment)."""
    monkeypatch.setenv("INSTANCE_POLL_S", "0.05")
    monkeypatch.setenv("INSTANCE_POLL_MAX_S", "0.4")
    monkeypatch.setenv("KUBE_RETRY_BASE_S", "0.01")
    monkeypatch.setenv("PORTAL_ID", f"test-poll-{secrets.token_hex(3)}")


def test_a_stuck_instance_is_applied_once_then_polled_with_reads_only(
    fast_polls, celery_worker_process, upstream, alice, profiles
):
    emu = upstream  # Flux's kinds served; no Flux runs, so its release never gets ready
    emu.requests.reset()
    instance = launch(alice, profiles["vcluster"], name="stuck")
    ns = f"alice-stuck-{instance.pk}"

    def looks() -> list:
        return [r for r in emu.requests.records() if r.namespace == ns and r.verb == "get"
                and r.resource == "helmreleases.helm.toolkit.fluxcd.io"
                and r.name == "vcluster"]

    wait_for(lambda: len(looks()) >= 6, timeout=60)

    instance.refresh_from_db()
    assert instance.status == Status.PROVISIONING, instance.status_message
    records = emu.requests.records()
    first_look = next(i for i, r in enumerate(records) if r.verb == "get"
                      and r.resource == "helmreleases.helm.toolkit.fluxcd.io" and r.namespace == ns)
    writes = [r for r in records[:first_look] if r.method != "GET"]
    assert [(r.method, r.resource, r.name) for r in records[first_look:]
            if r.method != "GET"] == []
    # Each object was written once (a 403 retried while RBAC catches up aside).
    written = Counter((w.resource, w.namespace, w.name) for w in writes if not w.failed)
    assert written and set(written.values()) == {1}, written


def test_a_poll_that_finds_its_object_deleted_applies_the_instance_again(
    upstream, alice, profiles
):
    emu = upstream  # Flux's kinds served; no Flux runs, so the release never gets ready
    instance = provision(launch(alice, profiles["vcluster"], name="vc"))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    emu.requests.reset()
    assert services.provision_instance(instance_id=instance.pk, applied=True).status == (
        Status.PROVISIONING)
    assert emu.requests.count(method="GET") == emu.requests.total  # a read, nothing written

    emu.delete_object(HELM_RELEASE, "vcluster", ns)
    services.provision_instance(instance_id=instance.pk, applied=True)
    assert emu.get(HELM_RELEASE, "vcluster", ns) is not None


def test_quota_refusals_are_explained():
    events = [{"type": "Warning", "reason": "FailedCreate",
               "message": 'pods "x" is forbidden: exceeded quota: instance-quota'}]
    assert explain_events(events)[0].startswith("Quota exceeded")
    assert explain_events([{"type": "Normal", "reason": "Pulled", "message": "ok"}]) is None


def test_a_failed_scheduling_from_before_the_pod_was_scheduled_is_history():
    """The scheduler's FailedScheduling stays among the events after the pod is bound: once
    the pod is scheduled, it no longer reads "Unschedulable"; a later pull failure still
    speaks."""
    waited = {"type": "Warning", "reason": "FailedScheduling",
              "lastTimestamp": "2026-12-06T07:00:00Z",
              "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
    assert explain_events([waited])[0].startswith("Unschedulable")
    assert explain_events([waited], scheduled_at="2026-12-06T07:01:00Z") is None
    pull = {"type": "Warning", "reason": "Failed", "lastTimestamp": "2026-12-06T07:02:00Z",
            "message": 'Failed to pull image "x": not found'}
    assert explain_events([waited, pull], scheduled_at="2026-12-06T07:01:00Z")[0].startswith(
        "Image pull failed")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_real_kubectl_reads_back_the_instance(emu, alice, profiles, tmp_path):
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    config = emu.kubeconfig(tmp_path / "kubectl-config")
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(config), "get",
         "resourcequota,limitrange,networkpolicy,rolebinding", "-n", ns, "-o", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    found = {(o["kind"], o["metadata"]["name"]) for o in json.loads(out)["items"]}
    if emu.real:  # the portal's own rights in the namespace
        found.remove(("RoleBinding", "gpupaas-portal"))
    assert found == {
        ("ResourceQuota", "instance-quota"), ("LimitRange", "instance-defaults"),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", "allow-namespace-and-ingress"), ("RoleBinding", "owner-admin"),
    }


def test_test_connection_reports_version_and_gpus_by_model(emu, api, cluster):
    core = k8s.CoreV1Api(api)
    already = Counter(get_backend(cluster).inventory().devices)  # the real server's GPU nodes
    added = {"n1": ("NVIDIA-H200", "8"), "n2": ("NVIDIA-H200", "8"), "n3": ("NVIDIA-A100", "4"),
             "cpu": ("", "0")}
    for name, (model, count) in added.items():
        core.create_node({"metadata": {"name": name, "labels": (
            {"nvidia.com/gpu.product": model} if model else {})}})
        core.patch_node_status(name, {"status": {"allocatable": {"nvidia.com/gpu": count,
                                                                 "cpu": "64"}}})
    try:
        report = get_backend(cluster).check_connection()
    finally:
        for name in added:
            core.delete_node(name)
    assert report.startswith("Connected: Kubernetes v")
    expected = already + Counter({"NVIDIA-H200": 16, "NVIDIA-A100": 4})
    offered = ", ".join(f"{n} × {model}" for model, n in sorted(expected.items()))
    assert f"allocatable GPUs: {offered}." in report


def test_the_client_stays_under_its_request_rate():
    from clusters.backends.kubernetes.client import RateLimiter

    limiter = RateLimiter(qps=50, burst=5)
    started = time.monotonic()
    for _ in range(15):
        limiter.acquire()
    # 5 from the burst, the other 10 at 50 a second: at least 0.2 s.
    assert time.monotonic() - started >= 0.19


# --- notebooks on Kubernetes -------------------------------------------------------------------


def test_a_notebook_deploys_becomes_reachable_and_is_cleaned_up(emu, alice, notebook_setup):
    instance, profile = notebook_setup
    notebook = deploy_notebook(alice, instance, profile)
    emu.requests.reset()

    notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
    assert (notebook.status, notebook.step) == (Notebook.Status.DEPLOYING, "created")
    ns = namespace_of(emu, instance)["metadata"]["name"]
    name = f"nb-explore-{notebook.pk}"
    assert emu.get("Secret", f"{name}-token", ns)["data"]["token"]
    assert emu.get("Deployment", name, ns)["spec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["nvidia.com/gpu"] == "1"

    wait_for(lambda: (emu.get("Deployment", name, ns).get("status") or {}).get(
        "availableReplicas"))
    if isinstance(emu, targets.EmulatorTarget):
        notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
        assert notebook.status_message == (
            f"Waiting for the Service {name} to have a ready endpoint.")
        # The EndpointSlice controller publishes the ready pod: play it. No Ingress status
        # is needed (bare-metal ingress controllers never set one). The real server's own
        # controller does this by itself.
        k8s.DiscoveryV1Api(k8s.ApiClient(emu.client_configuration())
                           ).create_namespaced_endpoint_slice(ns, {
            "metadata": {"name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}]})
    notebook = wait_for(lambda: (n := notebook_services.advance_notebook(
        notebook_id=notebook.pk)).status == Notebook.Status.RUNNING and n, timeout=30)
    assert notebook.status == Notebook.Status.RUNNING
    host = f"{name}-{notebook.host_suffix}-i{instance.pk}.apps.example.com"
    assert notebook.url == f"http://{host}/lab"
    assert emu.requests.total <= 15  # apply 5, then looks of 3-4 requests

    notebook_services.delete_notebook(notebook=notebook, by=alice)
    for _ in backoff():  # a real server takes a moment to let the pods and volume go
        notebook = notebook_services.teardown_notebook(notebook_id=notebook.pk)
        if notebook.status == Notebook.Status.DELETED:
            break
    assert notebook.status == Notebook.Status.DELETED, notebook.status_message
    for kind in ("Deployment", "Service", "Ingress"):
        assert emu.get(kind, name, ns) is None
    assert emu.get("Secret", f"{name}-token", ns) is None


def test_a_notebook_whose_image_cannot_be_pulled_fails_in_words(emu, api, alice, notebook_setup):
    if not isinstance(emu, targets.EmulatorTarget):
        pytest.skip("plays the controllers' pod and events; on the real server see "
                    "test_a_notebook_whose_image_the_cluster_cannot_pull_fails_in_words")
    emu.auto_ready = False
    instance, profile = notebook_setup
    notebook = notebook_services.advance_notebook(
        notebook_id=deploy_notebook(alice, instance, profile).pk)
    ns, name = namespace_of(emu, instance)["metadata"]["name"], f"nb-explore-{notebook.pk}"
    core = k8s.CoreV1Api(api)
    # The ReplicaSet's pod, as the controllers would create it: play them.
    pod = core.create_namespaced_pod(ns, {
        "metadata": {"name": f"{name}-abc", "labels": {"gpupaas.io/notebook": notebook.key}},
        "spec": {"containers": [{"name": "notebook", "image": "x",
                                 "securityContext": RESTRICTED}]}})

    def event(reason: str, message: str, kind: str = "Normal") -> None:
        core.create_namespaced_event(ns, {
            "metadata": {"generateName": f"{name}-"}, "type": kind, "reason": reason,
            "message": message, "lastTimestamp": later(minutes=1),
            "involvedObject": {"kind": "Pod", "name": f"{name}-abc", "namespace": ns,
                               "uid": pod.metadata.uid}})

    event("Pulling", "Pulling image quay.io/jupyter/minimal-notebook")
    notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
    assert notebook.step == "pulling"
    assert notebook.status_message == "Pulling the image quay.io/jupyter/minimal-notebook."

    event("Failed", "Failed to pull image: manifest unknown", kind="Warning")
    notebook = notebook_services.advance_notebook(notebook_id=notebook.pk)
    assert notebook.status == Notebook.Status.FAILED
    assert notebook.status_message == "Image pull failed: the cluster cannot download the image."


def test_a_notebook_that_does_not_fit_the_instance_is_refused(alice, notebook_setup):
    instance, profile = notebook_setup  # 2 GPUs
    deploy_notebook(alice, instance, profile, name="one")
    deploy_notebook(alice, instance, profile, name="two")
    with pytest.raises(ValidationError, match="Does not fit: the instance has 8 CPU"):
        deploy_notebook(alice, instance, profile, name="three")


def test_reconcile_restores_a_deleted_service_or_ingress(emu, alice, notebook_setup):
    emu.add_hook(kubeemu.serve_endpoints)
    instance, profile = notebook_setup
    notebook = notebook_services.advance_notebook(
        notebook_id=deploy_notebook(alice, instance, profile).pk)
    ns, name = namespace_of(emu, instance)["metadata"]["name"], f"nb-explore-{notebook.pk}"
    wait_for(lambda: notebook_services.advance_notebook(notebook_id=notebook.pk).status
             == Notebook.Status.RUNNING)
    emu.delete_object("Service", name, ns)
    emu.delete_object("Ingress", name, ns)

    notebook_services.reconcile_notebooks()

    assert emu.get("Service", name, ns) is not None
    assert emu.get("Ingress", name, ns) is not None
    notebook.refresh_from_db()
    assert notebook.status == Notebook.Status.RUNNING


def test_a_notebook_whose_image_the_cluster_cannot_pull_fails_in_words(emu, alice,
                                                                        notebook_setup):
    if not emu.real:
        pytest.skip("the emulator runs no pods; the test above plays the kubelet's events")
    emu.stand_ins.failures["minimal-notebook"] = "ImagePull"  # the kubelet stand-in's answer
    instance, profile = notebook_setup
    notebook = notebook_services.advance_notebook(
        notebook_id=deploy_notebook(alice, instance, profile).pk)

    def failed():
        current = notebook_services.advance_notebook(notebook_id=notebook.pk)
        return current if current.status == Notebook.Status.FAILED else None

    notebook = wait_for(failed, timeout=60, interval=0.5)
    assert notebook.status_message == "Image pull failed: the cluster cannot download the image."


def test_an_instance_bound_the_old_way_is_rebound_to_its_access_account(emu, alice, profiles):
    """Instances an older portal made bound the users and groups it impersonated; the next
    reconcile pass binds `admin` to the access account instead (and makes the account)."""
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    emu.delete_object("ServiceAccount", "gpupaas-access", ns)
    emu.delete_object("RoleBinding", "owner-admin", ns)
    emu.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "owner-admin", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                              "name": f"test-portal:instance:{instance.key}"}]})

    services.reconcile_instances()

    assert emu.get("RoleBinding", "owner-admin", ns)["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpupaas-access", "namespace": ns}]
    assert emu.get("ServiceAccount", "gpupaas-access", ns) is not None
