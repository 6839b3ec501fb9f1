"""The verbs of instances: the only code that writes Instance rows."""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from clusters.backends import (
    BackendError,
    InstanceSpec,
    InstanceState,
    TransientBackendError,
    get_backend,
)
from clusters.crypto import encrypt
from clusters.models import Cluster
from workspaces.models import Workspace
from workspaces.selectors import effective_quota
from workspaces.services import record_audit

from .models import INSTANCE_NAME_MAX, ComputeProfile, Instance, instance_name_validator
from .selectors import launchable_profiles

log = logging.getLogger(__name__)
Status = Instance.Status


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _validate_launch(
    *, workspace: Workspace, name: str, description: str, profile: ComputeProfile,
    by: AbstractBaseUser,
) -> None:
    """Every rule a launch must pass, checked under the workspace lock."""
    errors: dict[str, list[str]] = {}
    if not name:
        errors.setdefault("name", []).append("Give the instance a name.")
    elif len(name) > INSTANCE_NAME_MAX:
        errors.setdefault("name", []).append(
            f"Use at most {INSTANCE_NAME_MAX} characters ({len(name)} given)."
        )
    else:
        try:
            instance_name_validator(name)
        except ValidationError as exc:
            errors.setdefault("name", []).extend(exc.messages)
    if len(description) > 500:
        errors.setdefault("description", []).append(
            f"Use at most 500 characters ({len(description)} given)."
        )
    if not launchable_profiles(user=by).filter(pk=profile.pk).exists():
        errors.setdefault("profile", []).append("This size is not available to you.")
    if errors:
        raise ValidationError(errors)

    live = list(
        Instance.objects.filter(workspace=workspace)
        .exclude(status=Status.DELETED)
        .order_by("created_at")
        .values_list("name", "gpus")
    )
    if any(existing == name for existing, _ in live):
        raise ValidationError({"name": f"You already have an instance named {name}."})
    names = ", ".join(existing for existing, _ in live)
    quota = effective_quota(workspace=workspace)
    if len(live) >= quota.max_instances:
        raise ValidationError(
            f"quota {_plural(quota.max_instances, 'instance')}: "
            f"{len(live)} in use by {names}; delete one to launch another"
        )
    used = sum(gpus for _, gpus in live)
    if used + profile.gpus > quota.max_gpus:
        holders = ", ".join(existing for existing, gpus in live if gpus) or "nothing"
        raise ValidationError(
            f"quota {_plural(quota.max_gpus, 'GPU')}: {used} in use by {holders}; "
            f"this size needs {profile.gpus}"
        )


def launch_instance(
    *,
    workspace: Workspace,
    name: str,
    profile: ComputeProfile,
    by: AbstractBaseUser,
    description: str = "",
    ip_address: str | None = None,
) -> Instance:
    """Record a new instance and hand it to a worker; refuses with a ValidationError."""
    from .tasks import provision_instance_task

    name, description = name.strip(), description.strip()
    with transaction.atomic():
        # The workspace row lock serialises launches: concurrent ones can never pass quota.
        workspace = Workspace.objects.select_for_update().get(pk=workspace.pk)
        _validate_launch(
            workspace=workspace, name=name, description=description, profile=profile, by=by
        )
        try:
            with transaction.atomic():
                instance = Instance.objects.create(
                    workspace=workspace,
                    name=name,
                    description=description,
                    profile=profile,
                    launched_by=by,
                    cluster=profile.cluster,
                    kind=profile.kind,
                    gpus=profile.gpus,
                    gpu_model=profile.gpu_model,
                    cpu=profile.cpu,
                    memory_gib=profile.memory_gib,
                    storage_gib=profile.storage_gib,
                    status=Status.PENDING,
                    status_message="Waiting for a worker to start provisioning.",
                )
        except IntegrityError as exc:
            raise ValidationError({"name": f"You already have an instance named {name}."}) from exc
        record_audit(
            action="instance.launched", obj=instance, actor=by, workspace=workspace,
            ip_address=ip_address, profile=profile.name, gpus=profile.gpus,
        )
        transaction.on_commit(lambda: provision_instance_task.delay(instance.pk))
    return instance


def delete_instance(
    *, instance: Instance, by: AbstractBaseUser, ip_address: str | None = None
) -> Instance:
    """Mark the instance for deletion; a worker releases its resources, then it is history."""
    from .tasks import teardown_instance_task

    with transaction.atomic():
        Workspace.objects.select_for_update().filter(pk=instance.workspace_id).first()
        changed = _transition(
            instance.pk,
            from_=[Status.PENDING, Status.PROVISIONING, Status.RUNNING, Status.FAILED],
            to=Status.DELETING,
            message="Deleting: releasing its resources.",
            actor=by,
            ip_address=ip_address,
        )
        if changed:
            transaction.on_commit(lambda: teardown_instance_task.delay(instance.pk))
    instance.refresh_from_db()
    return instance


def retry_instance(
    *, instance: Instance, by: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    """Send a failed instance back to provisioning (admin action). Its quota is still held."""
    from .tasks import provision_instance_task

    with transaction.atomic():
        changed = _transition(
            instance.pk, from_=[Status.FAILED], to=Status.PENDING,
            message="Retrying: waiting for a worker.", actor=by, ip_address=ip_address,
        )
        if changed:
            transaction.on_commit(lambda: provision_instance_task.delay(instance.pk))
    return changed is not None


# --- worker side ---------------------------------------------------------------------------


def instance_spec(instance: Instance) -> InstanceSpec:
    return InstanceSpec(
        key=instance.key,
        name=instance.name,
        owner=instance.workspace.owner.get_username(),
        workspace=str(instance.workspace_id),
        kind=instance.kind,
        gpus=instance.gpus,
        gpu_model=instance.gpu_model,
        cpu=float(instance.cpu),
        memory_gib=instance.memory_gib,
        storage_gib=instance.storage_gib,
        cluster_class=instance.profile.cluster_class,
        kubernetes_version=instance.profile.kubernetes_version,
        worker_class=instance.profile.worker_class,
        gpus_per_node=instance.profile.gpus_per_node,
    )


def _with_relations() -> QuerySet[Instance]:
    """Instances with what building their spec reads (owner, cluster, profile)."""
    return Instance.objects.select_related("workspace__owner", "cluster", "profile")


def _transition(
    instance_id: int,
    *,
    from_: Iterable[str],
    to: str,
    message: str,
    detail: str = "",
    actor: AbstractBaseUser | None = None,
    ip_address: str | None = None,
    **fields: Any,
) -> Instance | None:
    """Move the instance to `to` only if it is still in one of `from_`; audit the change.

    A conditional UPDATE, so two workers (or a worker and a user) can never both win.
    """
    with transaction.atomic():
        updated = Instance.objects.filter(pk=instance_id, status__in=list(from_)).update(
            status=to, status_message=message[:500], status_detail=detail,
            status_changed_at=timezone.now(), **fields,
        )
        if not updated:
            return None
        instance = _with_relations().get(pk=instance_id)
        record_audit(
            action=f"instance.{to}", obj=instance, actor=actor, workspace=instance.workspace,
            ip_address=ip_address, message=message,
        )
    return instance


def _note(instance_id: int, *, status: str, message: str, detail: str = "") -> None:
    """Progress within a state: a new message, no state change."""
    Instance.objects.filter(pk=instance_id, status=status).update(
        status_message=message[:500], status_detail=detail
    )


def _apply_state(instance: Instance, state: InstanceState) -> Instance:
    if state.phase == "running":
        running = _transition(
            instance.pk, from_=[Status.PROVISIONING], to=Status.RUNNING, message=state.message,
            detail=state.detail, running_since=timezone.now(),
            gpu_indices=list(state.gpu_indices), gpu_simulated=state.gpu_simulated,
            kubeconfig_encrypted=encrypt(state.kubeconfig),
        )
        return running or instance
    if state.phase in ("failed", "gone"):
        failed = _transition(
            instance.pk, from_=[Status.PROVISIONING, Status.RUNNING], to=Status.FAILED,
            message=state.message, detail=state.detail,
        )
        return failed or instance
    _note(instance.pk, status=instance.status, message=state.message, detail=state.detail)
    instance.status_message, instance.status_detail = state.message[:500], state.detail
    return instance


def provision_instance(*, instance_id: int) -> Instance | None:
    """Ensure the instance exists on its cluster; returns it in its new state.

    Raises TransientBackendError for the task to retry; any other backend refusal fails the
    instance with the reason in plain words.
    """
    instance = _with_relations().filter(pk=instance_id).first()
    if instance is None or instance.status not in (Status.PENDING, Status.PROVISIONING):
        return instance
    if instance.status == Status.PENDING:
        plural = "s" if instance.gpus != 1 else ""
        instance = _transition(
            instance.pk, from_=[Status.PENDING], to=Status.PROVISIONING,
            message=f"Provisioning on {instance.cluster}: reserving {instance.gpus} GPU{plural}.",
        )
        if instance is None:
            return None
    try:
        state = get_backend(instance.cluster).ensure_instance(instance_spec(instance))
    except TransientBackendError as exc:
        _note(instance.pk, status=Status.PROVISIONING, message=f"{exc.message} Retrying.",
              detail=exc.detail)
        raise
    except BackendError as exc:
        return _transition(
            instance.pk, from_=[Status.PROVISIONING], to=Status.FAILED,
            message=exc.message, detail=exc.detail,
        )
    return _apply_state(instance, state)


def teardown_instance(*, instance_id: int) -> Instance | None:
    """Remove the instance from its cluster; `deleted` once the cluster says it is gone."""
    instance = _with_relations().filter(pk=instance_id).first()
    if instance is None or instance.status != Status.DELETING:
        return instance
    state = get_backend(instance.cluster).delete_instance(instance.key, instance_spec(instance))
    if state.phase != "gone":
        _note(instance.pk, status=Status.DELETING, message=state.message, detail=state.detail)
        return instance
    return _transition(
        instance.pk, from_=[Status.DELETING], to=Status.DELETED,
        message="Deleted; its resources are released.", deleted_at=timezone.now(),
        gpu_indices=[],
    )


# --- polling leases --------------------------------------------------------------------------


def hold_lease(*, model: type[models.Model], pk: int, seconds: float | None) -> None:
    """A task chain watching this row promises to look again within `seconds` (None: it
    stopped watching). Works for instances and notebooks alike."""
    until = None if seconds is None else timezone.now() + timezone.timedelta(seconds=seconds)
    model.objects.filter(pk=pk).update(poll_lease_until=until)


def claim_unwatched(queryset: QuerySet) -> list[int]:
    """The rows of `queryset` no live task chain watches, each claimed for the caller (one
    conditional UPDATE per row, so two reconcile passes never both claim one)."""
    now = timezone.now()
    free = Q(poll_lease_until__isnull=True) | Q(poll_lease_until__lt=now)
    until = now + timezone.timedelta(seconds=settings.POLL_LEASE_GRACE_S)
    return [pk for pk in queryset.filter(free).values_list("pk", flat=True)
            if queryset.model.objects.filter(free, pk=pk).update(poll_lease_until=until)]


@dataclass
class ReconcileSummary:
    redriven: int = 0
    observed: int = 0
    orphans_removed: int = 0
    errors: int = 0


def reconcile_instances() -> ReconcileSummary:
    """Level-triggered: re-drive what is stuck, restore drift, remove what nobody owns."""
    from .tasks import provision_instance_task, teardown_instance_task

    summary = ReconcileSummary()
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.RECONCILE_STUCK_AFTER_S)
    stuck = Instance.objects.filter(status_changed_at__lt=cutoff)
    for pk in claim_unwatched(stuck.filter(status__in=[Status.PENDING, Status.PROVISIONING])):
        provision_instance_task.delay(pk)
        summary.redriven += 1
    for pk in claim_unwatched(stuck.filter(status=Status.DELETING)):
        teardown_instance_task.delay(pk)
        summary.redriven += 1

    for cluster in Cluster.objects.all():
        try:
            backend = get_backend(cluster)
            running = list(
                _with_relations().filter(cluster=cluster, status=Status.RUNNING)
            )
            states = backend.reconcile_instances([instance_spec(i) for i in running])
            for instance in running:
                if instance.key in states:
                    _apply_state(instance, states[instance.key])
            summary.observed += len(running)
            # List first, then read which instances are live: an instance launched in
            # between is then already live, so it is never mistaken for an orphan.
            on_cluster = backend.list_instance_keys()
            live = {
                f"inst-{pk}"
                for pk in Instance.objects.filter(cluster=cluster)
                .exclude(status=Status.DELETED)
                .values_list("pk", flat=True)
            }
            for key in sorted(on_cluster - live):
                backend.delete_instance(key)
                summary.orphans_removed += 1
        except BackendError as exc:
            log.warning("reconcile of cluster %s failed: %s", cluster, exc.detail)
            summary.errors += 1
        except Exception:  # whatever one cluster does, the others are still reconciled
            log.exception("reconcile of cluster %s failed", cluster)
            summary.errors += 1
    return summary
