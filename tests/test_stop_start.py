"""Stop and start (#26): stopping gives the instance's GPUs back (quota, usage and the
cluster's slots) and keeps its data; starting checks the quota again and brings back the
notebooks that stopped with it. Locally with real JupyterLab servers, on the emulator with
the namespace's quota, the notebook's Deployment and a user's own GPU pod."""

import json
import urllib.request
from pathlib import Path

from django.conf import settings
from kubernetes import client as k8s

from clusters.backends.local import jupyter
from clusters.models import GpuAllocation
from instances import services
from instances.models import Instance
from instances.selectors import quota_usage
from notebooks import services as notebook_services
from notebooks.models import Notebook, NotebookProfile
from workspaces.models import AuditEvent, UsageRecord, Workspace

from .conftest import running_instance, workspace_of
from .kube_fixtures import RESTRICTED, deploy_notebook, namespace_of
from .test_notebooks_local import environ_of, get, port_is_free, port_of, until

Status = Instance.Status
NbStatus = Notebook.Status


def contents(notebook: Notebook, path: str, body: dict | None = None) -> dict:
    """Jupyter's contents API, as the notebook's user reaches it with the token."""
    url = notebook.url.replace("/lab", f"/api/contents/{path}")
    request = urllib.request.Request(
        url, method="PUT" if body else "GET", data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"token {notebook.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_a_stopped_instance_frees_its_gpus_keeps_the_notebooks_files_and_starts_again(
        alice, alices_instance, minimal):
    instance = alices_instance
    notebook = until(notebook_services.deploy_notebook(
        instance=instance, name="explore", profile=minimal, by=alice, gpus=2), NbStatus.RUNNING)
    contents(notebook, "results.txt", {"type": "file", "format": "text",
                                       "content": "epoch 12: loss 0.031"})
    port = port_of(notebook)
    # A second notebook its user stopped on its own: it stays stopped when the instance
    # comes back, until someone starts it.
    paused = until(notebook_services.deploy_notebook(
        instance=instance, name="paused", profile=minimal, by=alice, gpus=1), NbStatus.RUNNING)
    assert notebook_services.stop_notebook(notebook=paused, by=alice)
    notebook_services.release(kind="notebook", pk=paused.pk)  # the worker's part
    assert port_is_free(port_of(paused))

    assert services.stop_instance(instance=instance, by=alice)
    notebook.refresh_from_db()
    assert notebook.status == NbStatus.STOPPED  # in the same transaction as the instance
    assert notebook.status_message == "Stopped with train; it starts again with it."
    instance = services.halt_instance(instance_id=instance.pk)

    assert (instance.status, instance.gpu_indices) == (Status.STOPPED, [])
    assert not GpuAllocation.objects.filter(holder=instance.key).exists()
    assert port_is_free(port)  # its server is gone, not just marked
    usage = quota_usage(workspace=workspace_of(alice))
    assert (usage.gpus_used, usage.instances_used) == (0, 1)
    assert not UsageRecord.objects.filter(ended_at__isnull=True).exists()  # nothing counts
    assert list(AuditEvent.objects.filter(object_type="instances.instance",
                                          object_id=str(instance.pk)).values_list(
        "action", flat=True).order_by("id"))[-2:] == ["instance.stopping", "instance.stopped"]

    # Meanwhile someone else took the slots it had: it comes back on others.
    old_slots = list(alices_instance.gpu_indices)
    GpuAllocation.objects.bulk_create(GpuAllocation(cluster=instance.cluster, index=i,
                                                    holder="inst-elsewhere") for i in old_slots)
    assert services.start_instance(instance=instance, by=alice)
    instance = services.provision_instance(instance_id=instance.pk)
    assert instance.status == Status.RUNNING and len(instance.gpu_indices) == 4
    assert not set(instance.gpu_indices) & set(old_slots)
    notebook = Notebook.objects.get(pk=notebook.pk)
    assert (notebook.status, notebook.status_message) == (
        NbStatus.DEPLOYING, "Starting again with train.")
    notebook = until(notebook, NbStatus.RUNNING)
    assert len(notebook.gpu_indices) == 2 and set(notebook.gpu_indices) <= set(
        instance.gpu_indices)  # never a slot it no longer holds
    runtime = jupyter.read_runtime(
        Path(settings.LOCAL_SANDBOX_ROOT) / ".portal" / "local" / instance.key / notebook.key)
    assert environ_of(runtime["pid"])["CUDA_VISIBLE_DEVICES"] == ",".join(
        map(str, notebook.gpu_indices))
    assert contents(notebook, "results.txt")["content"] == "epoch 12: loss 0.031"
    assert get(notebook.url.replace("/lab", "/api/status"), notebook.token) == 200
    assert UsageRecord.objects.filter(kind="notebook", object_id=notebook.pk).count() == 2

    paused = Notebook.objects.get(pk=paused.pk)
    assert paused.status == NbStatus.STOPPED  # not started with the instance
    assert set(paused.gpu_indices) <= set(instance.gpu_indices) - set(notebook.gpu_indices)
    assert notebook_services.start_notebook(notebook=paused, by=alice)
    paused = until(Notebook.objects.get(pk=paused.pk), NbStatus.RUNNING)
    assert get(paused.url.replace("/lab", "/api/status"), paused.token) == 200

    port = port_of(notebook)
    services.delete_instance(instance=instance, by=alice)
    services.teardown_instance(instance_id=instance.pk)
    assert port_is_free(port)


def test_starting_checks_the_quota_again_and_says_why_not(alice_client, alice, catalogue):
    Workspace.objects.filter(owner=alice).update(max_gpus=4)
    first = running_instance(alice, catalogue[4], "first")
    services.stop_instance(instance=first, by=alice)
    services.halt_instance(instance_id=first.pk)
    running_instance(alice, catalogue[4], "second")  # its GPUs were free: it fits

    refused = alice_client.post(f"/instances/{first.pk}/start/", follow=True)
    assert "Cannot start first: Your quota is 4 GPUs and 4 are in use by second; this size " \
        "needs 4." in refused.content.decode()
    assert Instance.objects.get(pk=first.pk).status == Status.STOPPED

    api = alice_client.post(f"/api/v1/instances/{first.pk}/start")
    assert api.status_code == 422, api.content
    assert "4 are in use by second" in api.json()["detail"]
    again = alice_client.post(f"/api/v1/instances/{first.pk}/stop")
    assert (again.status_code, again.json()["detail"]) == (
        409, "first is stopped; there is nothing to stop.")


def test_another_users_instance_cannot_be_stopped_or_started(client, alice, catalogue):
    from .conftest import make_user

    instance = running_instance(alice, catalogue[1], "mine")
    client.force_login(make_user("mallory"))
    assert client.post(f"/instances/{instance.pk}/stop/").status_code == 404
    assert client.post(f"/api/v1/instances/{instance.pk}/stop").status_code == 404
    assert client.post(f"/api/v1/instances/{instance.pk}/start").status_code == 404
    assert Instance.objects.get(pk=instance.pk).status == Status.RUNNING
    notebook = Notebook.objects.create(
        instance=instance, name="theirs", profile=NotebookProfile.objects.create(
            name="p", display_name="P", image="p:1"), created_by=alice, image="p:1", cpu=1,
        memory_gib=1, status="running", token_encrypted="-")
    assert client.post(f"/notebooks/{notebook.pk}/stop/").status_code == 404
    assert client.post(f"/api/v1/notebooks/{notebook.pk}/stop").status_code == 404
    assert Notebook.objects.get(pk=notebook.pk).status == NbStatus.RUNNING


def test_a_notebook_on_a_stopped_instance_says_it_starts_with_it(alice_client, alice,
                                                                 catalogue):
    instance = running_instance(alice, catalogue[1], "box")
    notebook = Notebook.objects.create(
        instance=instance, name="nb", profile=NotebookProfile.objects.create(
            name="p", display_name="P", image="p:1"), created_by=alice, image="p:1", cpu=1,
        memory_gib=1, status="running", token_encrypted="-")
    services.stop_instance(instance=instance, by=alice)
    services.halt_instance(instance_id=instance.pk)
    page = alice_client.get(f"/notebooks/{notebook.pk}/").content.decode()
    assert "Stopped with box; it starts again with it." in page
    assert ">Start</button>" not in page  # it starts with its instance
    refused = alice_client.post(f"/api/v1/notebooks/{notebook.pk}/start")
    assert (refused.status_code, refused.json()["detail"]) == (
        422, "its instance box is stopped; it starts again with it.")


def test_a_virtual_cluster_is_not_stopped_and_the_page_offers_no_stop(
        alice_client, alice, catalogue):
    instance = running_instance(alice, catalogue[1], "vc")
    page = alice_client.get(f"/instances/{instance.pk}/").content.decode()
    assert ">Stop</button>" in page
    Instance.objects.filter(pk=instance.pk).update(kind="vcluster")
    refused = alice_client.post(f"/api/v1/instances/{instance.pk}/stop")
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "A virtual cluster cannot be stopped; delete it to free its GPUs.")
    assert ">Stop</button>" not in alice_client.get(f"/instances/{instance.pk}/").content.decode()


def test_a_namespace_instance_stops_its_gpu_pods_and_starts_its_notebook_again(
        emu, api, alice, notebook_setup):
    instance, profile = notebook_setup
    notebook = notebook_services.advance_notebook(
        notebook_id=deploy_notebook(alice, instance, profile).pk)
    ns = namespace_of(emu, instance)["metadata"]["name"]
    name = f"nb-explore-{notebook.pk}"
    core = k8s.CoreV1Api(api)
    for pod, gpus in (("trainer", {"nvidia.com/gpu": "1"}), ("dashboard", {})):
        core.create_namespaced_pod(ns, {"metadata": {"name": pod}, "spec": {"containers": [{
            "name": "main", "image": "python:3.12", "securityContext": RESTRICTED,
            "resources": {"requests": gpus, "limits": gpus}}]}})

    services.stop_instance(instance=instance, by=alice)
    instance = services.halt_instance(instance_id=instance.pk)

    assert instance.status == Status.STOPPED, instance.status_message
    quota = emu.get("ResourceQuota", "instance-quota", ns)
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "0"
    assert emu.get("Deployment", name, ns)["spec"]["replicas"] == 0
    assert emu.get("Pod", "trainer", ns) is None  # it held a GPU
    assert emu.get("Pod", "dashboard", ns) is not None  # the rest stays
    assert emu.get("PersistentVolumeClaim", f"{name}-home", ns) is not None  # and the files
    assert Notebook.objects.get(pk=notebook.pk).status == NbStatus.STOPPED

    services.start_instance(instance=instance, by=alice)
    instance = services.provision_instance(instance_id=instance.pk)
    assert instance.status == Status.RUNNING
    assert emu.get("ResourceQuota", "instance-quota", ns)["spec"]["hard"][
        "requests.nvidia.com/gpu"] == "2"
    notebook_services.advance_notebook(notebook_id=notebook.pk)
    assert emu.get("Deployment", name, ns)["spec"]["replicas"] == 1
