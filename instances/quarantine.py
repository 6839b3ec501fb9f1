"""Instances on a cluster that the portal's database does not know: quarantined, never
deleted at once.

A database restored from an older backup forgets the instances launched since; a wrong
DATABASE_URL forgets them all. Their namespaces, sandboxes and volumes are users' work, so the
reconcile pass stops what it does not know (its GPUs are free), keeps every object and file,
and lists it for administrators (`QuarantinedInstance`). An administrator adopts it, which
brings its row back from what the backend recorded beside it (`InstanceSpec.record()`), or
deletes it; otherwise it goes when `ORPHAN_GRACE_DAYS` are over. A pass that finds more
unknown instances than it may quarantine at once (`hold_limit`) touches none of them and
raises the alarm instead: a log line at error level, the `gpupaas_orphans_held` gauge and a
banner in the admin.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from clusters.backends import BackendError, ClusterBackend, InstanceSpec, get_backend
from clusters.models import Cluster
from workspaces.models import AuditAction, Workspace
from workspaces.services import record_audit

from .models import ComputeProfile, Instance, QuarantinedInstance

log = logging.getLogger(__name__)
Outcome = QuarantinedInstance.Outcome


@dataclass
class Sweep:
    quarantined: int = 0
    deleted: int = 0
    held: int = 0  # unknown instances left alone because there were too many at once


def hold_limit(known: int) -> int:
    """How many unknown instances one pass may quarantine on a cluster where the database
    knows `known`: ORPHAN_HOLD_COUNT, or ORPHAN_HOLD_FRACTION of them where that is more."""
    return max(settings.ORPHAN_HOLD_COUNT, math.ceil(settings.ORPHAN_HOLD_FRACTION * known))


def sweep(cluster: Cluster, backend: ClusterBackend, on_cluster: set[str], live: set[str]) -> Sweep:
    """One pass over what `backend` has and the database does not (`on_cluster` was listed
    before `live` was read, so an instance launched in between is never taken for unknown).
    A pass that finds too many unknown at once does nothing else either: neither the grace
    period's deletions nor those decided earlier, which came from this same database."""
    result = Sweep()
    held = {q.key: q for q in QuarantinedInstance.objects.filter(cluster=cluster, outcome="")}
    unknown = on_cluster - live
    deleting = set(QuarantinedInstance.objects.filter(
        cluster=cluster, outcome=Outcome.DELETED, key__in=unknown).values_list("key", flat=True))
    new = sorted(unknown - held.keys() - deleting)
    limit = hold_limit(len(live))
    if len(new) > limit:
        _hold(cluster, len(new), limit)
        result.held = len(new)
        return result
    if cluster.orphans_held:
        Cluster.objects.filter(pk=cluster.pk).update(orphans_held="")
    for key, row in held.items():  # back in the database (restored by hand), or gone
        if key in live or key not in on_cluster:
            _close(row, Outcome.ADOPTED if key in live else Outcome.GONE, by=None)
    for key in sorted(deleting - held.keys()):  # a decided deletion goes on until it is done
        backend.delete_instance(key)
    _reserve_keys(new)
    for key in new:
        _quarantine(cluster, backend, key)
        result.quarantined += 1
    cutoff = timezone.now() - timezone.timedelta(days=settings.ORPHAN_GRACE_DAYS)
    for key, row in held.items():
        if key in unknown and row.found_at < cutoff:
            delete(row, by=None)
            result.deleted += 1
    return result


def _hold(cluster: Cluster, count: int, limit: int) -> None:
    message = (f"{count} instances on {cluster.name} are unknown to the portal's database, "
               f"more than the {limit} one pass may quarantine: nothing was touched. Check "
               "DATABASE_URL and any restore before anything else.")
    log.error("reconcile held back on cluster %s: %s", cluster.name, message)
    if cluster.orphans_held != message:
        Cluster.objects.filter(pk=cluster.pk).update(orphans_held=message)
        cluster.orphans_held = message
        record_audit(action=AuditAction.ORPHANS_HELD, obj=cluster, unknown=count, limit=limit)


def _quarantine(cluster: Cluster, backend: ClusterBackend, key: str) -> QuarantinedInstance:
    spec = backend.instance_record(key)
    action = backend.quarantine_instance(key)
    row = QuarantinedInstance.objects.create(
        cluster=cluster, key=key, record=asdict(spec) if spec else {}, action=action)
    log.warning("instance %s on %s is unknown to the database: quarantined (%s)",
                key, cluster.name, action)
    record_audit(action=AuditAction.INSTANCE_QUARANTINED, obj=row, key=key,
                 owner=row.owner, name=row.name, did=action)
    return row


def _reserve_keys(keys: list[str]) -> None:
    """Move the instances' id sequence past every quarantined key, so that no new launch is
    ever given one (a restored database's sequence is as old as its backup) and with it the
    namespace or sandbox of someone else's work."""
    numbers = [int(k[5:]) for k in keys if k.startswith("inst-") and k[5:].isdigit()]
    if not numbers or connection.vendor != "postgresql":
        return
    table = Instance._meta.db_table
    with connection.cursor() as cursor:  # never backwards: not below any id handed out
        cursor.execute(
            "SELECT setval(s, GREATEST(%s, COALESCE(pg_sequence_last_value(s), 0), "
            f"(SELECT COALESCE(MAX(id), 0) FROM {connection.ops.quote_name(table)}))) "
            "FROM pg_get_serial_sequence(%s, 'id') AS s", [max(numbers), table])


def _close(row: QuarantinedInstance, outcome: str, *, by: AbstractBaseUser | None) -> None:
    row.outcome, row.resolved_at, row.resolved_by = outcome, timezone.now(), by
    row.save(update_fields=["outcome", "resolved_at", "resolved_by"])


def _locked_open(row: QuarantinedInstance) -> QuarantinedInstance:
    row = QuarantinedInstance.objects.select_for_update().get(pk=row.pk)
    if row.outcome:
        raise ValidationError(f"{row.key} was already {row.get_outcome_display()}.")
    return row


def delete(row: QuarantinedInstance, *, by: AbstractBaseUser | None,
           ip_address: str | None = None) -> None:
    """Delete a quarantined instance from its cluster for good (an administrator's action, or
    its grace period's end). What the cluster still holds goes on being deleted by the
    following passes."""
    with transaction.atomic():
        row = _locked_open(row)
        _close(row, Outcome.DELETED, by=by)
        record_audit(action=AuditAction.INSTANCE_QUARANTINE_DELETED, obj=row, actor=by,
                     ip_address=ip_address, key=row.key, owner=row.owner,
                     reason="administrator" if by else "grace period over")
    try:
        get_backend(row.cluster).delete_instance(row.key)
    except BackendError as exc:  # the next pass goes on with it
        log.warning("deleting quarantined %s on %s: %s", row.key, row.cluster, exc.detail)


def adopt(row: QuarantinedInstance, *, by: AbstractBaseUser | None,
          ip_address: str | None = None) -> Instance:
    """Bring a quarantined instance's row back from what its cluster recorded, with its key,
    so that its owner finds it again with its data. One that can stop comes back stopped (as
    quarantine left it: its owner starts it); a virtual or dedicated cluster is provisioned
    again, which finds its objects in place. Refuses in words (ValidationError) where the
    record does not fit the database any more."""
    from .tasks import provision_instance_task

    with transaction.atomic():
        row = _locked_open(row)
        spec = InstanceSpec.from_record(json.dumps(row.record)) if row.record else None
        if spec is None or spec.key != row.key:
            raise ValidationError(f"The cluster keeps no record of {row.key} (it was made "
                                  "before the portal wrote them): it can only be deleted.")
        workspace = (Workspace.objects.select_related("owner")
                     .filter(pk=int(spec.workspace)).first() if spec.workspace.isdigit()
                     else None)
        if workspace is None or workspace.owner.get_username() != spec.owner:
            raise ValidationError(f"{row.key} belongs to {spec.owner}'s workspace "
                                  f"{spec.workspace}, which this database does not have.")
        profile = (ComputeProfile.objects.filter(pk=int(spec.profile)).first()
                   if spec.profile.isdigit() else None)
        if profile is None:
            raise ValidationError(f"The compute profile {row.key} was launched from is gone.")
        pk = int(row.key.removeprefix("inst-"))
        if Instance.objects.filter(pk=pk).exists():
            raise ValidationError(f"An instance with the key {row.key} exists already.")
        if workspace.instances.exclude(status=Instance.Status.DELETED).filter(
                name=spec.name).exists():
            raise ValidationError(f"{spec.owner} already has an instance named {spec.name}.")
        stoppable = spec.kind == ComputeProfile.Kind.NAMESPACE
        instance = Instance.objects.create(
            pk=pk, workspace=workspace, name=spec.name, profile=profile, cluster=row.cluster,
            kind=spec.kind, gpus=spec.gpus, gpu_model=spec.gpu_model, cpu=spec.cpu,
            memory_gib=spec.memory_gib, storage_gib=spec.storage_gib,
            status=Instance.Status.STOPPED if stoppable else Instance.Status.PENDING,
            status_message=("Adopted by an administrator after a restore: start it to go on."
                            if stoppable else "Adopted by an administrator: reconnecting."))
        _reserve_keys([row.key])
        _close(row, Outcome.ADOPTED, by=by)
        record_audit(action=AuditAction.INSTANCE_ADOPTED, obj=instance, actor=by,
                     workspace=workspace, ip_address=ip_address, key=row.key)
        if not stoppable:
            transaction.on_commit(lambda: provision_instance_task.delay(instance.pk))
    try:
        get_backend(row.cluster).release_quarantine(row.key)
    except BackendError as exc:  # only a mark; its start or provisioning does the rest
        log.warning("unmarking adopted %s on %s: %s", row.key, row.cluster, exc.detail)
    return instance
