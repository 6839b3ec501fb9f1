"""The verbs of instances: the only code that writes Instance rows."""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
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
from workspaces import usage
from workspaces.models import AuditAction, Workspace
from workspaces.selectors import effective_quota, workspace_ids
from workspaces.services import changes, lock_workspace, record_audit

from . import lifecycle
from .models import (
    INSTANCE_NAME_MAX,
    ComputeProfile,
    Instance,
    instance_name_validator,
)
from .selectors import check_may_manage, launchable_profiles

log = logging.getLogger(__name__)
Status = Instance.Status


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _validate_launch(
    *, name: str, description: str, profile: ComputeProfile, by: AbstractBaseUser,
) -> None:
    """The rules of the launch itself: the name, the description and the size being open
    to the user."""
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
    if getattr(profile, "launchable_by", None) != by.pk \
            and not launchable_profiles(user=by).filter(pk=profile.pk).exists():
        errors.setdefault("profile", []).append("This size is not available to you.")
    if errors:
        raise ValidationError(errors)


def _holding(workspace: Workspace, *, named: str = "") -> tuple[list[tuple[str, int]], bool]:
    """What the workspace holds against its quota, as (name, GPUs) oldest first, and
    whether a live instance (any state but deleted) already has the name `named`: one
    query for both. Failed instances hold nothing: their GPUs went back when they failed;
    stopped ones hold an instance but no GPU."""
    wanted = Q(status__in=Instance.HOLDS_QUOTA) | Q(name=named) if named \
        else Q(status__in=Instance.HOLDS_QUOTA)
    rows = list(
        Instance.objects.filter(wanted, workspace=workspace).exclude(status=Status.DELETED)
        .order_by("created_at").values_list("name", "gpus", "status")
    )
    holding = [(n, gpus if status in Instance.HOLDS_GPUS else 0)
               for n, gpus, status in rows if status in Instance.HOLDS_QUOTA]
    return holding, bool(named) and any(n == named for n, _, _ in rows)


def _check_quota(*, workspace: Workspace, gpus: int,
                 holding: list[tuple[str, int]] | None = None) -> None:
    """Refuse what would pass the quota, naming the holders (read now unless given)."""
    if holding is None:
        holding, _ = _holding(workspace)
    quota = effective_quota(workspace=workspace)
    if len(holding) >= quota.max_instances:
        raise ValidationError({"profile": (
            f"Your quota is {_plural(quota.max_instances, 'instance')} and "
            f"{_in_use(len(holding), [existing for existing, _ in holding])}; "
            "delete one to launch another."
        )})
    used = sum(n for _, n in holding)
    if used + gpus > quota.max_gpus:
        holders = [existing for existing, n in holding if n]
        raise ValidationError({"profile": (
            f"Your quota is {_plural(quota.max_gpus, 'GPU')} and {_in_use(used, holders)}; "
            f"this size needs {gpus}."
        )})


def _check_budget(*, workspace: Workspace, by: AbstractBaseUser | None) -> None:
    """Refuse, with the figures, what a spent monthly GPU-hour budget no longer allows (the
    workspace's own, or the group the user's usage counts to). A budget is on what was used,
    which a launch does not change: two launches at its edge are judged alike."""
    for budget in usage.budgets(workspace=workspace, user=by):
        if budget.spent:
            raise ValidationError({"profile": budget.refusal})


def _in_use(n: int, holders: list[str]) -> str:
    """'6 are in use by train-a and train-b', as a person says it."""
    if not holders:
        return "none is in use" if n == 0 else f"{n} {'is' if n == 1 else 'are'} in use"
    listed = holders[0] if len(holders) == 1 else f"{', '.join(holders[:-1])} and {holders[-1]}"
    return f"{n} {'is' if n == 1 else 'are'} in use by {listed}"


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
    _validate_launch(name=name, description=description, profile=profile, by=by)
    # Without the lock first: a name in use, or a quota that the committed instances already
    # fill, is refused from what is read now, so a burst of launches on a full workspace
    # (the start of a class) is answered without queueing on the lock. The unique
    # constraint is what makes the name exact, and the check under the lock the quota.
    holding, name_taken = _holding(workspace, named=name)
    if name_taken:
        raise ValidationError({"name": f"You already have an instance named {name}."})
    _check_quota(workspace=workspace, gpus=profile.gpus, holding=holding)
    _check_budget(workspace=workspace, by=by)
    with transaction.atomic():
        # The workspace row lock serialises launches: concurrent ones can never pass quota.
        # Only what the quota needs happens under it (every launch of the workspace waits).
        workspace = lock_workspace(workspace_id=workspace.pk) or workspace
        _check_quota(workspace=workspace, gpus=profile.gpus)
        try:
            # No savepoint of its own: a clash rolls the whole launch back anyway.
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
            action=AuditAction.INSTANCE_LAUNCHED, obj=instance, actor=by, workspace=workspace,
            ip_address=ip_address, profile=profile.name, gpus=profile.gpus,
        )
        transaction.on_commit(lambda: provision_instance_task.delay(instance.pk))
    return instance


def delete_instance(
    *, instance: Instance, by: AbstractBaseUser, ip_address: str | None = None
) -> Instance:
    """Mark the instance for deletion; a worker releases its resources, then it is history.
    Refused to a collaborator who can only use it."""
    from .tasks import teardown_instance_task

    check_may_manage(instance=instance, by=by, doing="delete it")
    with transaction.atomic():
        lock_workspace(workspace_id=instance.workspace_id)
        changed = _transition(
            instance.pk,
            from_=[Status.PENDING, Status.PROVISIONING, Status.RUNNING, Status.STOPPING,
                   Status.STOPPED, Status.FAILED],
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
    """Send a failed instance back to provisioning, under its own name. Its quota was freed
    when it failed, so it must fit again: refuses with a ValidationError if not."""
    from .tasks import provision_instance_task

    with transaction.atomic():
        lock_workspace(workspace_id=instance.workspace_id)
        instance.refresh_from_db()
        if instance.status != Status.FAILED:
            return False
        _check_quota(workspace=instance.workspace, gpus=instance.gpus)
        _check_budget(workspace=instance.workspace, by=by)
        changed = _transition(
            instance.pk, from_=[Status.FAILED], to=Status.PENDING,
            message="Retrying: waiting for a worker.", actor=by, ip_address=ip_address,
        )
        if changed:
            transaction.on_commit(lambda: provision_instance_task.delay(instance.pk))
    return changed is not None


def stop_instance(
    *, instance: Instance, by: AbstractBaseUser | None, ip_address: str | None = None,
    reason: str = "", audit: dict[str, Any] | None = None,
) -> bool:
    """Give a running instance's GPUs back and keep its data (the sandbox or namespace, its
    volumes, its notebooks' homes): a worker stops what runs on it. Its notebooks and
    services stop with it and start again with it. `by` None: the portal stopped it (idle
    stop), for `reason`, with the figures it used in the audit row (`audit`). Refuses with
    a ValidationError what cannot be stopped; False when it is not running (nothing to
    do)."""
    from .tasks import halt_instance_task

    if instance.can_stop:
        raise ValidationError(instance.can_stop)
    with transaction.atomic():
        changed = _transition(
            instance.pk, from_=[Status.RUNNING], to=Status.STOPPING,
            message=reason or "Stopping: giving its GPUs back, keeping its data.", actor=by,
            ip_address=ip_address, audit=audit,
        )
        if changed:
            transaction.on_commit(lambda: halt_instance_task.delay(instance.pk))
    return changed is not None


def keep_running(*, instance: Instance, by: AbstractBaseUser,
                 ip_address: str | None = None) -> bool:
    """Idle stop's warning answered: counted as used now, so it runs the policy's whole
    window again before anything is said. False when it is no longer running."""
    with transaction.atomic():
        lock_workspace(workspace_id=instance.workspace_id)
        if not Instance.objects.filter(pk=instance.pk, status=Status.RUNNING).update(
                last_active_at=timezone.now(), idle_warned_at=None):
            return False
        record_audit(action=AuditAction.INSTANCE_KEPT_RUNNING, obj=instance, actor=by,
                     workspace=instance.workspace, ip_address=ip_address,
                     message=f"Kept running for another {instance.profile.idle_stop_minutes} "
                             "minutes.")
    return True


def start_instance(
    *, instance: Instance, by: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    """Bring a stopped instance back, with its data and the notebooks and services that
    stopped with it. Its GPUs must fit the quota again: refuses with a ValidationError if
    not; False when it is not stopped."""
    from .tasks import provision_instance_task

    with transaction.atomic():
        lock_workspace(workspace_id=instance.workspace_id)
        instance.refresh_from_db()
        if instance.status != Status.STOPPED:
            return False
        holding, _ = _holding(instance.workspace)
        # It is among the holders already (as an instance, with no GPU): count it once.
        others = [(n, g) for n, g in holding if n != instance.name]
        _check_quota(workspace=instance.workspace, gpus=instance.gpus, holding=others)
        _check_budget(workspace=instance.workspace, by=by)
        changed = _transition(
            instance.pk, from_=[Status.STOPPED], to=Status.PENDING,
            message="Starting: waiting for a worker.", actor=by, ip_address=ip_address,
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
        profile=str(instance.profile_id),
        waiting_since=(instance.status_changed_at.timestamp()
                       if instance.status == Status.PROVISIONING and instance.status_changed_at
                       else 0.0),
    )


def _with_relations() -> QuerySet[Instance]:
    """Instances with what building their spec reads (owner, cluster, profile)."""
    return Instance.objects.select_related("workspace__owner", "cluster", "profile")


def _transition(instance_id: int, **change: Any) -> Instance | None:
    """lifecycle.transition for an instance, read back with its relations."""
    return lifecycle.transition(Instance, instance_id,
                                load=lambda pk: _with_relations().get(pk=pk), **change)


def _note(instance_id: int, *, status: str, message: str, detail: str = "") -> None:
    lifecycle.note(Instance, instance_id, status=status, message=message, detail=detail)


def _apply_state(instance: Instance, state: InstanceState) -> Instance:
    if state.phase == "running":
        now = timezone.now()
        running = _transition(
            instance.pk, from_=[Status.PROVISIONING], to=Status.RUNNING, message=state.message,
            detail=state.detail, running_since=now, last_active_at=now,
            idle_warned_at=None, idle_reading="",
            gpu_indices=list(state.gpu_indices), gpu_simulated=state.gpu_simulated,
            kubeconfig_encrypted=encrypt(state.kubeconfig),
        )
        return running or instance
    if state.phase in ("failed", "gone"):
        failed = _transition(
            instance.pk, from_=[Status.PROVISIONING, Status.RUNNING], to=Status.FAILED,
            message=state.message, detail=state.detail, gpu_indices=[],
        )
        if failed:
            _release(failed)
        return failed or instance
    _note(instance.pk, status=instance.status, message=state.message, detail=state.detail)
    instance.status_message, instance.status_detail = state.message[:500], state.detail
    return instance


def provision_instance(*, instance_id: int, applied: bool = False) -> Instance | None:
    """Ensure the instance exists on its cluster; returns it in its new state.

    `applied`: this provisioning attempt already applied the instance's objects, so only
    read how far the cluster got (polls cost status reads, not writes; drift is the
    reconcile pass's to restore). Raises TransientBackendError for the task to retry; any
    other backend refusal fails the instance with the reason in plain words.
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
        backend, spec = get_backend(instance.cluster), instance_spec(instance)
        state = backend.instance_state(spec) if applied else backend.ensure_instance(spec)
    except TransientBackendError as exc:
        _note(instance.pk, status=Status.PROVISIONING, message=f"{exc.message} Retrying.",
              detail=exc.detail)
        raise
    except BackendError as exc:
        failed = _transition(
            instance.pk, from_=[Status.PROVISIONING], to=Status.FAILED,
            message=exc.message, detail=exc.detail, gpu_indices=[],
        )
        if failed:
            _release(failed)
        return failed
    return _apply_state(instance, state)


def _release(instance: Instance) -> None:
    """A failed instance gives its GPUs back at once (the quota no longer counts it)."""
    try:
        get_backend(instance.cluster).release_instance(instance.key)
    except BackendError as exc:
        log.warning("releasing failed %s: %s", instance.key, exc.detail)


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


def halt_instance(*, instance_id: int) -> Instance | None:
    """Stop what runs on a stopping instance and free its GPUs; `stopped` once done. Raises
    TransientBackendError for the task to retry; a refusal leaves it running, with the
    reason."""
    instance = _with_relations().filter(pk=instance_id).first()
    if instance is None or instance.status != Status.STOPPING:
        return instance
    try:
        get_backend(instance.cluster).stop_instance(instance_spec(instance))
    except TransientBackendError as exc:
        _note(instance.pk, status=Status.STOPPING, message=f"{exc.message} Retrying.",
              detail=exc.detail)
        raise
    except BackendError as exc:
        return _transition(instance.pk, from_=[Status.STOPPING], to=Status.RUNNING,
                           message=f"Could not stop: {exc.message}", detail=exc.detail)
    return _transition(
        instance.pk, from_=[Status.STOPPING], to=Status.STOPPED, gpu_indices=[],
        message="Stopped: its GPUs are free and its data is kept. Start it to go on.",
    )


@dataclass
class ReconcileSummary:
    redriven: int = 0
    observed: int = 0
    quarantined: int = 0
    quarantine_deleted: int = 0
    held: int = 0
    errors: int = 0
    accounts_removed: int = 0


def reconcile_instances() -> ReconcileSummary:
    """Level-triggered: re-drive what is stuck, restore drift, quarantine what the database
    does not know (never delete it at once: see instances.quarantine)."""
    from . import quarantine
    from .tasks import halt_instance_task, provision_instance_task, teardown_instance_task

    summary = ReconcileSummary()
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.RECONCILE_STUCK_AFTER_S)
    stuck = Instance.objects.filter(status_changed_at__lt=cutoff)
    waiting = stuck.filter(status__in=[Status.PENDING, Status.PROVISIONING])
    for pk in lifecycle.claim_unwatched(waiting):
        provision_instance_task.delay(pk)
        summary.redriven += 1
    for pk in lifecycle.claim_unwatched(stuck.filter(status=Status.DELETING)):
        teardown_instance_task.delay(pk)
        summary.redriven += 1
    for pk in lifecycle.claim_unwatched(stuck.filter(status=Status.STOPPING)):
        halt_instance_task.delay(pk)
        summary.redriven += 1

    for cluster in Cluster.objects.all():
        try:
            backend = get_backend(cluster)
            running = list(
                _with_relations().filter(cluster=cluster, status=Status.RUNNING)
            )
            states = backend.reconcile_instances([instance_spec(i) for i in running])
            for instance in running:
                state = states.get(instance.key)
                # Still running as it was: nothing to write (at 10,000 instances, a
                # transaction each would be most of the pass). A failure always moves it.
                if state is not None and (state.phase in ("failed", "gone") or (
                        state.phase != "running" and (state.message[:500], state.detail)
                        != (instance.status_message, instance.status_detail))):
                    _apply_state(instance, state)
            summary.observed += len(running)
            # List first, then read which instances are live: an instance launched in
            # between is then already live, so it is never taken for unknown.
            on_cluster = backend.list_instance_keys()
            live = {
                f"inst-{pk}"
                for pk in Instance.objects.filter(cluster=cluster)
                .exclude(status=Status.DELETED)
                .values_list("pk", flat=True)
            }
            swept = quarantine.sweep(cluster, backend, on_cluster, live)
            summary.quarantined += swept.quarantined
            summary.quarantine_deleted += swept.deleted
            summary.held += swept.held
        except BackendError as exc:
            log.warning("reconcile of cluster %s failed: %s", cluster, exc.detail)
            summary.errors += 1
        except Exception:  # whatever one cluster does, the others are still reconciled
            log.exception("reconcile of cluster %s failed", cluster)
            summary.errors += 1
    summary.accounts_removed = len(_remove_stale_accounts())
    return summary


def _remove_stale_accounts() -> list[str]:
    """The local tenants' OS users whose workspace is gone and that nothing else keeps."""
    from clusters.backends.local import tenants

    try:
        if not tenants.isolated():
            return []
        return tenants.remove_stale_accounts(workspace_ids)
    except BackendError as exc:
        log.warning("the local OS users were not swept: %s", exc.message)
    except Exception:  # the pass's summary is still reported
        log.exception("the local OS users were not swept")
    return []


# --- the catalogue (the admin's writes) ---------------------------------------------------


def save_profile(*, profile: ComputeProfile, fields: Iterable[str],
                 by: AbstractBaseUser | None, ip_address: str | None = None) -> None:
    """Save a compute profile as the admin form set it, and audit what changed."""
    with transaction.atomic():
        old = ComputeProfile.objects.filter(pk=profile.pk).first() if profile.pk else None
        changed = changes(old, profile, fields)
        profile.save()
        if changed:
            record_audit(action=(AuditAction.PROFILE_ADDED if old is None
                                 else AuditAction.PROFILE_CHANGED),
                         obj=profile, actor=by, ip_address=ip_address, changes=changed)


def set_profiles_published(*, profiles: QuerySet[ComputeProfile], published: bool,
                           by: AbstractBaseUser | None, ip_address: str | None = None) -> int:
    """Publish or unpublish profiles (running instances keep running); one audit row per
    profile that changed. Returns how many changed."""
    with transaction.atomic():
        changed = list(profiles.select_for_update().exclude(published=published))
        ComputeProfile.objects.filter(pk__in=[p.pk for p in changed]).update(
            published=published)
        for profile in changed:
            record_audit(action=(AuditAction.PROFILE_PUBLISHED if published
                                 else AuditAction.PROFILE_UNPUBLISHED),
                         obj=profile, actor=by, ip_address=ip_address)
    return len(changed)
