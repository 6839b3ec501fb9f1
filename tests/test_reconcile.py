"""The periodic reconcile re-drives what is stuck, restores drift and quarantines orphans."""

import shutil

import pytest
from django.utils import timezone

from clusters.backends.local import LocalBackend
from clusters.models import GpuAllocation
from gpupaas.celery import app
from instances import services
from instances.models import Instance

from .conftest import workspace_of


@pytest.fixture
def eager_tasks():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def launch(alice, profile, name="train") -> Instance:
    return services.launch_instance(
        workspace=workspace_of(alice), name=name, profile=profile, by=alice
    )


def test_it_redrives_an_instance_stuck_in_pending(alice, catalogue, eager_tasks, settings):
    settings.RECONCILE_STUCK_AFTER_S = 60
    instance = launch(alice, catalogue[1])  # on_commit never fires inside a test transaction
    Instance.objects.filter(pk=instance.pk).update(
        status_changed_at=timezone.now() - timezone.timedelta(minutes=5)
    )

    summary = services.reconcile_instances()

    instance.refresh_from_db()
    assert summary.redriven == 1
    assert instance.status == Instance.Status.RUNNING


def test_it_leaves_a_fresh_pending_instance_to_its_task(alice, catalogue, eager_tasks):
    instance = launch(alice, catalogue[1])
    assert services.reconcile_instances().redriven == 0
    instance.refresh_from_db()
    assert instance.status == Instance.Status.PENDING


def test_it_finishes_a_deletion_that_was_interrupted(alice, catalogue, eager_tasks):
    instance = launch(alice, catalogue[1])
    services.provision_instance(instance_id=instance.pk)
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.DELETING,
        status_changed_at=timezone.now() - timezone.timedelta(minutes=5),
    )
    services.reconcile_instances()
    instance.refresh_from_db()
    assert instance.status == Instance.Status.DELETED
    assert not GpuAllocation.objects.exists()


def test_it_restores_a_running_instance_whose_sandbox_vanished(alice, catalogue, sandbox_root):
    instance = services.provision_instance(instance_id=launch(alice, catalogue[2]).pk)
    sandbox = sandbox_root / "local" / instance.key
    shutil.rmtree(sandbox)

    summary = services.reconcile_instances()

    assert summary.observed == 1
    assert (sandbox / "instance.json").exists()
    instance.refresh_from_db()
    assert instance.status == Instance.Status.RUNNING


def test_it_quarantines_what_nobody_owns_and_keeps_it(alice, catalogue, sandbox_root):
    instance = services.provision_instance(instance_id=launch(alice, catalogue[1]).pk)
    backend = LocalBackend(instance.cluster)
    orphan = services.instance_spec(instance)
    backend.ensure_instance(type(orphan)(**{**vars(orphan), "key": "inst-999999"}))
    assert GpuAllocation.objects.count() == 2

    summary = services.reconcile_instances()

    assert summary.quarantined == 1
    assert list(GpuAllocation.objects.values_list("holder", flat=True)) == [instance.key]
    assert (sandbox_root / "local" / "inst-999999").is_dir()  # see test_quarantine


def test_a_failed_instance_can_be_retried_from_the_admin(
    client, admin_user, alice, catalogue, eager_tasks, settings
):
    settings.LOCAL_GPU_SLOTS = 1
    instance = services.provision_instance(instance_id=launch(alice, catalogue[2]).pk)
    assert instance.status == Instance.Status.FAILED
    assert "this size needs 2, 1 of 1 are free" in instance.status_message

    settings.LOCAL_GPU_SLOTS = 8
    client.force_login(admin_user)
    client.post(
        "/admin/instances/instance/", {"action": "retry", "_selected_action": [instance.pk]}
    )
    instance.refresh_from_db()
    assert instance.status == Instance.Status.PENDING  # the worker picks it up after commit
