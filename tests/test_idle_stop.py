"""Idle stop judges by the GPUs and by Jupyter's own activity: a busy GPU or a busy kernel
keeps an instance, an idle one is warned (page and mail), then stopped; Keep running
postpones it by the policy's window. GPUs come from the kit's fake NVML (no GPU here);
kernels are real JupyterLab kernels."""

import datetime
import importlib.util
import json
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.core import mail
from django.utils import timezone
from websockets.sync.client import connect

from clusters.backends import get_backend
from clusters.backends.local.gpus import discover_nvidia_gpus
from instances.models import Instance
from notebooks import idle
from notebooks import services as notebook_services
from notebooks.models import Notebook
from workspaces.models import AuditEvent

from .conftest import running_instance, wait_for
from .test_notebooks_local import until

FAKE_NVML = Path(__file__).parent / "kit" / "fake_nvml" / "pynvml.py"
Status = Instance.Status


@pytest.fixture
def gpus(monkeypatch, tmp_path, settings):
    """Eight GPUs through the kit's fake NVML; call it with {index: percent} to load them."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    state = tmp_path / "nvml.json"

    def load(utilization: dict[int, int] | None = None) -> None:
        state.write_text(json.dumps({"names": ["NVIDIA H100 80GB HBM3"] * 8, "utilization": {
            str(i): v for i, v in (utilization or {}).items()}}))

    load()
    monkeypatch.setenv("FAKE_NVML_STATE", str(state))
    settings.LOCAL_USE_NVML = True
    discover_nvidia_gpus.cache_clear()
    yield load
    discover_nvidia_gpus.cache_clear()


def idle_since(instance: Instance, minutes: int) -> Instance:
    Instance.objects.filter(pk=instance.pk).update(
        last_active_at=timezone.now() - datetime.timedelta(minutes=minutes))
    return Instance.objects.select_related("profile", "cluster", "workspace__owner").get(
        pk=instance.pk)


def check(instance: Instance, at: datetime.datetime | None = None) -> str:
    instance = Instance.objects.select_related("profile", "cluster", "workspace__owner").get(
        pk=instance.pk)
    return idle.judge(instance, idle.read(instance), now=at or timezone.now())


def test_a_busy_gpu_keeps_an_unwatched_instance_and_an_idle_one_is_warned_then_stopped(
        gpus, alice, alice_client, catalogue):
    catalogue[2].idle_stop_minutes = 60
    catalogue[2].save()
    instance = running_instance(alice, catalogue[2], "train-a")
    assert not instance.gpu_simulated and instance.gpu_indices == [0, 1]

    # Training with no one watching: no notebook, no kernel, the GPU at 90 %.
    gpus({1: 90})
    instance = idle_since(instance, 120)
    assert check(instance) == "active"
    instance.refresh_from_db()
    assert timezone.now() - instance.last_active_at < datetime.timedelta(seconds=5)
    assert instance.idle_reading.startswith("GPU 90 % (idle under 5 %)")

    # The run ended: 3 % is idle. 56 minutes on: warned, on the page and by mail.
    gpus({1: 3})
    idle_since(instance, 56)
    assert check(instance) == "warned"
    assert mail.outbox[-1].subject == "train-a stops in 5 minutes unless you keep it running"
    assert "train-a has been idle for 56 minutes; it stops in 5 minutes" in mail.outbox[-1].body
    page = alice_client.get(f"/instances/{instance.pk}/").content.decode()
    assert "train-a has been idle for 56 minutes; it stops in 5 minutes" in page
    assert ">Keep running</button>" in page
    warned = AuditEvent.objects.get(action="instance.idle_warned", object_id=str(instance.pk))
    assert (warned.data["idle_minutes"], warned.data["gpu_percent"]) == (56, 3.0)
    assert check(instance) == "idle"  # warned once, not at every look
    assert len(mail.outbox) == 1

    # Keep running: the whole window again.
    alice_client.post(f"/instances/{instance.pk}/keep-running/")
    instance.refresh_from_db()
    assert instance.idle_warned_at is None
    assert "train-a has been idle" not in alice_client.get(
        f"/instances/{instance.pk}/").content.decode()
    assert AuditEvent.objects.filter(action="instance.kept_running", actor=alice).exists()

    idle_since(instance, 61)
    assert check(instance) == "warned"  # warned again, however long it has been
    assert check(instance, at=timezone.now() + datetime.timedelta(minutes=5)) == "stopped"
    instance.refresh_from_db()
    assert instance.status == Status.STOPPING
    assert instance.status_message == (
        "Stopping after 66 idle minutes (GPU 3 % (idle under 5 %); no kernel busy): its GPUs "
        "go back and its data is kept.")
    stopping = AuditEvent.objects.get(action="instance.stopping", object_id=str(instance.pk))
    assert stopping.actor is None and stopping.data["policy_minutes"] == 60


def test_without_a_policy_or_a_gpu_reading_nothing_is_stopped_by_the_gpu(alice, catalogue):
    instance = running_instance(alice, catalogue[1], "sim")
    assert instance.gpu_simulated
    idle_since(instance, 500)
    assert idle.check_idle() == {"active": 0, "idle": 0, "warned": 0, "stopped": 0}
    catalogue[1].idle_stop_minutes = 30
    catalogue[1].save()
    assert idle.check_idle()["warned"] == 1  # activity alone decides, and it is long gone
    later = timezone.now() + datetime.timedelta(minutes=5)
    assert idle.check_idle(now=later)["stopped"] == 1
    instance.refresh_from_db()
    assert "no GPU reading, so activity alone decides" in instance.status_message


def execute(notebook: Notebook, kernel_id: str, code: str) -> None:
    """Run code in a kernel as JupyterLab does: an execute_request on its channels."""
    url = notebook.url.replace("http://", "ws://").replace(
        "/lab", f"/api/kernels/{kernel_id}/channels")
    with connect(url, additional_headers={"Authorization": f"token {notebook.token}"}) as ws:
        ws.send(json.dumps({
            "header": {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request",
                       "username": "test", "session": uuid.uuid4().hex, "version": "5.3",
                       "date": timezone.now().isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False}}))


def test_a_real_kernel_busy_keeps_the_instance_and_its_last_activity_dates_the_idle_time(
        alice, alices_instance, minimal):
    profile = alices_instance.profile
    profile.idle_stop_minutes = 60
    profile.save()
    notebook = until(notebook_services.deploy_notebook(
        instance=alices_instance, name="explore", profile=minimal, by=alice), "running")
    spec = notebook_services.notebook_spec(notebook)
    assert get_backend(alices_instance.cluster).jupyter_api(spec, "/api/kernels") == []
    request = urllib.request.Request(
        notebook.url.replace("/lab", "/api/kernels"), method="POST", data=b"{}",
        headers={"Authorization": f"token {notebook.token}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        kernel_id = json.loads(answer.read())["id"]

    execute(notebook, kernel_id, "import time; time.sleep(20)")
    wait_for(lambda: idle.read(alices_instance).busy_kernels == 1, timeout=30)
    idle_since(alices_instance, 180)  # nothing printed for three hours: still busy
    assert check(alices_instance) == "active"

    wait_for(lambda: idle.read(alices_instance).busy_kernels == 0, timeout=40)
    reading = idle.read(alices_instance)
    assert timezone.now() - reading.last_activity < datetime.timedelta(seconds=60)
    assert reading.gpu_percent is None  # simulated GPUs: no reading
    # Jupyter's last activity, not the portal's looks, dates the idle time.
    later = reading.last_activity + datetime.timedelta(minutes=57)
    assert check(alices_instance, at=later) == "warned"
    assert check(alices_instance, at=later + datetime.timedelta(minutes=5)) == "stopped"
    notebook.refresh_from_db()
    assert notebook.status == Notebook.Status.STOPPED


def test_the_admin_form_refuses_idle_stop_where_it_cannot_judge(catalogue):
    from clusters.models import Cluster
    from instances.admin import ComputeProfileForm

    kube = Cluster.objects.create(name="k", display_name="K", backend="kubernetes",
                                  ingress_domain="apps.example.com")
    fields = {"name": "idle", "display_name": "Idle", "gpus": 1, "cpu": "4",
              "memory_gib": 16, "storage_gib": 100, "kind": "namespace", "gpus_per_node": 8,
              "idle_gpu_percent": 5, "sort_order": 0, "kubernetes_version": "v1.31.0"}
    on_kube = ComputeProfileForm(data={**fields, "cluster": kube.pk, "idle_stop_minutes": 60})
    assert on_kube.is_valid(), on_kube.errors  # a namespace stops
    virtual = ComputeProfileForm(data={**fields, "cluster": kube.pk, "idle_stop_minutes": 60,
                                       "kind": "vcluster"})
    assert virtual.errors["idle_stop_minutes"] == [
        "Idle stop needs an instance that can stop: on Kubernetes, the namespace kind. A "
        "virtual or dedicated cluster can only be deleted. Leave it empty."]
    local = catalogue[1].cluster
    too_short = ComputeProfileForm(data={**fields, "cluster": local.pk, "idle_stop_minutes": 3})
    assert too_short.errors["idle_stop_minutes"] == [
        "Use at least 10 minutes: its owner is warned 5 minutes before."]
    assert ComputeProfileForm(data={**fields, "cluster": local.pk,
                                    "idle_stop_minutes": 60}).is_valid()


def test_keep_running_pressed_during_a_look_is_not_undone_by_it(alice, catalogue):
    from instances import services

    catalogue[1].idle_stop_minutes = 30
    catalogue[1].save()
    instance = running_instance(alice, catalogue[1], "racy")
    stale = idle_since(instance, 200)  # what the look read: idle for 200 minutes
    reading = idle.read(stale)
    assert services.keep_running(instance=stale, by=alice)  # meanwhile, on the page

    assert idle.judge(stale, reading, now=timezone.now()) == "active"
    fresh = Instance.objects.get(pk=instance.pk)
    assert fresh.status == Status.RUNNING and fresh.idle_warned_at is None
    assert timezone.now() - fresh.last_active_at < datetime.timedelta(seconds=5)
