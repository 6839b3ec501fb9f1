"""An instance's whole life through a real Celery worker on Redis and PostgreSQL."""

import pytest

from clusters.models import GpuAllocation
from instances import services
from instances.models import Instance
from workspaces.models import AuditEvent

from .conftest import wait_for, workspace_of

pytestmark = pytest.mark.django_db(transaction=True)


def status_of(instance: Instance) -> str:
    instance.refresh_from_db()
    return instance.status


def test_it_goes_from_pending_to_running_to_deleted(celery_worker_process, alice, catalogue):
    instance = services.launch_instance(
        workspace=workspace_of(alice), name="train-a", profile=catalogue[2], by=alice,
        ip_address="10.1.2.3",
    )
    assert instance.status == Instance.Status.PENDING

    wait_for(lambda: status_of(instance) == Instance.Status.RUNNING)
    assert len(instance.gpu_indices) == 2
    assert instance.gpu_simulated is True
    assert instance.running_since is not None
    assert "simulated GPUs" in instance.status_message
    sandbox = celery_worker_process["sandboxes"] / "local" / instance.key
    assert (sandbox / "instance.json").exists()
    assert GpuAllocation.objects.filter(holder=instance.key).count() == 2

    services.delete_instance(instance=instance, by=alice, ip_address="10.1.2.3")
    assert status_of(instance) in (Instance.Status.DELETING, Instance.Status.DELETED)
    wait_for(lambda: status_of(instance) == Instance.Status.DELETED)
    assert instance.deleted_at is not None
    assert not sandbox.exists()
    assert not GpuAllocation.objects.filter(holder=instance.key).exists()

    actions = list(
        AuditEvent.objects.filter(object_id=str(instance.pk))
        .order_by("created_at", "id")
        .values_list("action", flat=True)
    )
    assert actions == [
        "instance.launched", "instance.provisioning", "instance.running",
        "instance.deleting", "instance.deleted",
    ]
    launched = AuditEvent.objects.get(object_id=str(instance.pk), action="instance.launched")
    assert launched.actor == alice and launched.ip_address == "10.1.2.3"


def test_a_deleted_instance_frees_its_name_and_quota(celery_worker_process, alice, catalogue):
    workspace = workspace_of(alice)
    workspace.max_gpus = 8
    workspace.save()
    first = services.launch_instance(
        workspace=workspace, name="big", profile=catalogue[8], by=alice
    )
    wait_for(lambda: status_of(first) == Instance.Status.RUNNING)
    services.delete_instance(instance=first, by=alice)
    wait_for(lambda: status_of(first) == Instance.Status.DELETED)

    second = services.launch_instance(
        workspace=workspace, name="big", profile=catalogue[8], by=alice
    )
    wait_for(lambda: status_of(second) == Instance.Status.RUNNING)
    assert sorted(second.gpu_indices) == list(range(8))
