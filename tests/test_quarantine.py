"""What the reconcile pass does with an instance its database does not know (a restore from
an older backup, a row deleted by hand, a wrong DATABASE_URL): quarantine, never deletion at
once. On the local backend here; the Kubernetes side is in test_kube_backend."""

import io
import logging

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from clusters.backends.local import LocalBackend
from clusters.models import Cluster, GpuAllocation
from instances import quarantine, services
from instances.models import Instance, QuarantinedInstance
from workspaces.models import AuditEvent

from .conftest import running_instance, workspace_of

Status = Instance.Status


def forget(instance: Instance, *, rewind_ids: bool = False) -> None:
    """What a restore from a backup older than `instance` does: its row is gone and, with
    `rewind_ids`, the id sequence is back where the backup had it."""
    Instance.objects.filter(pk=instance.pk).delete()
    if rewind_ids:
        with connection.cursor() as cursor:
            cursor.execute("SELECT setval(pg_get_serial_sequence('instances_instance', 'id'), "
                           "%s, false)", [instance.pk])  # the next launch would get its id


def sandbox(instance: Instance):
    return LocalBackend(instance.cluster).sandbox(instance.key)


@pytest.fixture
def forgotten(alice, catalogue, sandbox_root):
    """alice's 2-GPU instance with a file of hers in its sandbox, then forgotten by the
    database (and its id sequence rewound) as a restore from an older backup does."""
    instance = running_instance(alice, catalogue[2], "train")
    work = sandbox(instance) / "results.csv"
    work.write_text("epoch,loss\n1,0.5\n")
    forget(instance, rewind_ids=True)
    return instance


def test_an_unknown_sandbox_is_stopped_and_kept_never_deleted(forgotten):
    summary = services.reconcile_instances()
    again = services.reconcile_instances()

    assert (summary.quarantined, again.quarantined, again.quarantine_deleted) == (1, 0, 0)
    assert (sandbox(forgotten) / "results.csv").read_text() == "epoch,loss\n1,0.5\n"
    assert not GpuAllocation.objects.filter(holder=forgotten.key).exists()  # GPUs are free
    row = QuarantinedInstance.objects.get(key=forgotten.key)
    assert (row.owner, row.name, row.outcome) == ("alice", "train", "")
    assert "sandbox" in row.action and "kept" in row.action
    assert AuditEvent.objects.filter(action="instance.quarantined",
                                     data__key=forgotten.key).count() == 1


def test_a_launch_after_a_restore_never_gets_a_quarantined_instances_key(
    forgotten, alice, catalogue
):
    services.reconcile_instances()

    newer = running_instance(alice, catalogue[1], "fresh")

    assert newer.pk > forgotten.pk  # the restored sequence would have handed out its id again
    assert not (sandbox(newer) / "results.csv").exists()
    assert (sandbox(forgotten) / "results.csv").exists()


def test_an_administrator_adopts_it_and_its_owner_starts_it_with_her_data(
    forgotten, alice, admin_user, client
):
    services.reconcile_instances()
    row = QuarantinedInstance.objects.get(key=forgotten.key)
    client.force_login(admin_user)

    page = client.post("/admin/instances/quarantinedinstance/",
                       {"action": "adopt", "_selected_action": [row.pk]}, follow=True)

    assert "1 instance adopted." in page.content.decode()
    adopted = Instance.objects.get(pk=forgotten.pk)
    assert (adopted.workspace, adopted.name, adopted.gpus) == (workspace_of(alice), "train", 2)
    assert adopted.status == Status.STOPPED
    assert services.start_instance(instance=adopted, by=alice)
    adopted = services.provision_instance(instance_id=adopted.pk)
    assert adopted.status == Status.RUNNING
    assert (sandbox(adopted) / "results.csv").read_text() == "epoch,loss\n1,0.5\n"
    assert GpuAllocation.objects.filter(holder=adopted.key).count() == 2
    row.refresh_from_db()
    assert (row.outcome, row.resolved_by) == ("adopted", admin_user)
    assert services.reconcile_instances().quarantined == 0


def test_adoption_is_refused_in_words_where_the_record_does_not_fit(
    forgotten, alice, catalogue, admin_user, client
):
    services.reconcile_instances()
    row = QuarantinedInstance.objects.get(key=forgotten.key)
    running_instance(alice, catalogue[1], "train")  # she reused the name meanwhile
    client.force_login(admin_user)

    page = client.post("/admin/instances/quarantinedinstance/",
                       {"action": "adopt", "_selected_action": [row.pk]}, follow=True)

    assert "alice already has an instance named train." in page.content.decode()
    row.refresh_from_db()
    assert row.outcome == ""
    assert not Instance.objects.filter(pk=forgotten.pk).exists()


def test_one_from_before_records_can_only_be_deleted(forgotten, admin_user):
    LocalBackend(forgotten.cluster)._record_path(forgotten.key).unlink()
    services.reconcile_instances()
    row = QuarantinedInstance.objects.get(key=forgotten.key)

    with pytest.raises(Exception, match="keeps no record of"):
        quarantine.adopt(row, by=admin_user)
    quarantine.delete(row, by=admin_user)

    assert not sandbox(forgotten).exists()
    row.refresh_from_db()
    assert row.outcome == "deleted"
    assert services.reconcile_instances().quarantined == 0  # gone, and not found again


def test_it_is_deleted_when_its_grace_period_is_over_and_not_before(forgotten, settings):
    settings.ORPHAN_GRACE_DAYS = 7
    services.reconcile_instances()
    row = QuarantinedInstance.objects.get(key=forgotten.key)
    QuarantinedInstance.objects.filter(pk=row.pk).update(
        found_at=timezone.now() - timezone.timedelta(days=6, hours=23))
    assert services.reconcile_instances().quarantine_deleted == 0
    assert sandbox(forgotten).exists()

    QuarantinedInstance.objects.filter(pk=row.pk).update(
        found_at=timezone.now() - timezone.timedelta(days=7, minutes=1))
    summary = services.reconcile_instances()

    assert summary.quarantine_deleted == 1
    assert not sandbox(forgotten).exists()
    event = AuditEvent.objects.get(action="instance.quarantine_deleted")
    assert event.actor is None and event.data["reason"] == "grace period over"


def test_a_pass_that_finds_too_many_at_once_touches_none_and_raises_the_alarm(
    alice, catalogue, sandbox_root, settings, caplog, admin_user, client
):
    settings.ORPHAN_HOLD_COUNT, settings.ORPHAN_HOLD_FRACTION = 2, 0.1
    kept = running_instance(alice, catalogue[1], "kept")
    # One quarantined long ago, its grace over by the time the alarm goes off.
    old = running_instance(alice, catalogue[1], "old")
    forget(old)
    assert services.reconcile_instances().quarantined == 1
    QuarantinedInstance.objects.filter(key=old.key).update(
        found_at=timezone.now() - timezone.timedelta(days=30))
    gone = [running_instance(alice, catalogue[1], f"gone-{n}") for n in range(3)]
    for instance in gone:
        forget(instance)

    with caplog.at_level(logging.ERROR, logger="instances.quarantine"):
        summary = services.reconcile_instances()

    assert (summary.held, summary.quarantined, summary.quarantine_deleted) == (3, 0, 0)
    assert list(QuarantinedInstance.objects.values_list("key", flat=True)) == [old.key]
    assert sandbox(old).exists()  # a held pass deletes nothing, not even what is overdue
    assert all(GpuAllocation.objects.filter(holder=i.key).exists() for i in gone)  # untouched
    assert "3 instances on local are unknown" in caplog.text
    cluster = Cluster.objects.get(pk=kept.cluster_id)
    assert "more than the 2 one pass may quarantine" in cluster.orphans_held
    client.force_login(admin_user)
    assert "Reconcile held back on" in client.get("/admin/").content.decode()
    assert "Reconcile held back on" in client.get("/admin/overview/").content.decode()

    settings.ORPHAN_HOLD_COUNT = 3  # the administrator checked: they are strays
    summary = services.reconcile_instances()
    assert (summary.quarantined, summary.quarantine_deleted) == (3, 1)
    assert not sandbox(old).exists()
    cluster.refresh_from_db()
    assert cluster.orphans_held == ""
    overview = client.get("/admin/overview/").content.decode()
    assert "Reconcile held back on" not in overview
    assert all(i.key in overview for i in gone)


def test_the_hold_limit_grows_with_the_instances_the_database_knows(settings):
    settings.ORPHAN_HOLD_COUNT, settings.ORPHAN_HOLD_FRACTION = 20, 0.1
    assert quarantine.hold_limit(0) == 20
    assert quarantine.hold_limit(500) == 50


def test_a_restore_from_an_older_backup_deletes_nothing(
    transactional_db, alice, catalogue, sandbox_root, admin_user, tmp_path
):
    """docs/operations.md's procedure, with the real pg_dump and pg_restore: the instance
    launched after the backup is quarantined with its files, adopted, and no later launch is
    given its key."""
    import subprocess

    older = running_instance(alice, catalogue[1], "older")
    database = connection.settings_dict
    where = ["-h", database["HOST"] or "127.0.0.1", "-p", str(database["PORT"] or 5432),
             "-U", database["USER"] or "postgres"]
    backup = tmp_path / "portal.dump"
    subprocess.run(["pg_dump", *where, "-Fc", "-f", str(backup), database["NAME"]], check=True)
    newer = running_instance(alice, catalogue[2], "newer")
    (sandbox(newer) / "model.pt").write_bytes(b"weights")
    connection.close()

    subprocess.run(["pg_restore", *where, "--clean", "--if-exists", "--single-transaction",
                    "-d", database["NAME"], str(backup)], check=True)

    assert list(Instance.objects.values_list("name", flat=True)) == ["older"]
    call_command("reconcile", stdout=(out := io.StringIO()))
    assert "quarantined=1 quarantine_deleted=0 held=0 errors=0" in out.getvalue()
    assert Instance.objects.get(pk=older.pk).status == Status.RUNNING
    assert (sandbox(newer) / "model.pt").read_bytes() == b"weights"
    adopted = quarantine.adopt(QuarantinedInstance.objects.get(key=newer.key), by=admin_user)
    assert (adopted.pk, adopted.name, adopted.status) == (newer.pk, "newer", Status.STOPPED)
    assert running_instance(alice, catalogue[1], "latest").pk > newer.pk
