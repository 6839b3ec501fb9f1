"""The verbs of notebooks: the only code that writes Notebook rows."""

import logging
import secrets
import smtplib
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from clusters.backends import (
    BackendError,
    NotebookSpec,
    NotebookState,
    TransientBackendError,
    get_backend,
)
from clusters.backends.local import environments, tenants
from clusters.crypto import decrypt, encrypt
from clusters.models import Cluster
from instances import lifecycle
from instances.models import Instance
from instances.services import instance_spec
from workspaces.models import AuditAction
from workspaces.services import lock_workspace, record_audit

from .models import Notebook, NotebookProfile
from .selectors import instance_capacity

log = logging.getLogger(__name__)
Status = Notebook.Status


def deploy_notebook(
    *,
    instance: Instance,
    name: str,
    profile: NotebookProfile,
    by: AbstractBaseUser,
    description: str = "",
    cpu: Decimal | None = None,
    memory_gib: int | None = None,
    gpus: int | None = None,
    ip_address: str | None = None,
) -> Notebook:
    """Record a notebook on a running instance and hand it to a worker; refuses with a
    ValidationError that says what is used and what is left."""
    from .tasks import advance_notebook_task

    cpu = profile.default_cpu if cpu is None else cpu
    memory_gib = profile.default_memory_gib if memory_gib is None else memory_gib
    with transaction.atomic():
        # The workspace lock serialises everything that counts capacity in this workspace.
        lock_workspace(workspace_id=instance.workspace_id)
        instance.refresh_from_db()
        if instance.status != Instance.Status.RUNNING:
            raise ValidationError({"instance": f"{instance.name} is not running."})
        if not profile.published:
            raise ValidationError({"profile": "This profile is not available."})
        cluster = instance.cluster
        if cluster.backend == Cluster.Backend.KUBERNETES and not cluster.ingress_domain.strip():
            raise ValidationError(
                f"Notebooks cannot run on {cluster} yet: it has no ingress domain for their "
                "addresses. Ask an administrator to set one.")
        if cpu <= 0 or memory_gib <= 0:
            raise ValidationError("A notebook needs some CPU and memory.")
        if instance.cluster.backend == Cluster.Backend.LOCAL:
            _check_local(instance=instance, profile=profile)
        live = Notebook.objects.filter(instance=instance).exclude(status=Status.DELETED)
        if live.filter(name=name).exists():
            raise ValidationError({"name": f"{instance.name} already has a notebook named {name}."})
        taken = {i for used in live.values_list("gpu_indices", flat=True) for i in used}
        free = [i for i in instance.gpu_indices if i not in taken]
        if gpus is None:
            # A notebook on a GPU instance gets GPUs unless asked not to: the profile's
            # count, else whatever of the instance's GPUs no other notebook holds.
            gpus = profile.default_gpus or len(free)
        refusal = instance_capacity(instance=instance).refusal(
            cpu=cpu, memory_gib=memory_gib, gpus=gpus)
        if refusal:
            raise ValidationError(refusal)
        try:
            with transaction.atomic():
                notebook = Notebook.objects.create(
                    instance=instance, name=name, description=description, profile=profile,
                    created_by=by, cpu=cpu, memory_gib=memory_gib, gpus=gpus,
                    gpu_indices=free[:gpus],
                    image=profile.gpu_image if gpus and profile.gpu_image else profile.image,
                    token_encrypted=encrypt(secrets.token_urlsafe(32)),
                    status_message="Waiting for a worker to deploy it.",
                )
        except IntegrityError as exc:
            raise ValidationError(
                {"name": f"{instance.name} already has a notebook named {name}."}) from exc
        record_audit(action=AuditAction.NOTEBOOK_DEPLOYING, obj=notebook, actor=by,
                     workspace=instance.workspace, ip_address=ip_address,
                     instance=instance.name, profile=profile.name)
        transaction.on_commit(lambda: advance_notebook_task.delay(notebook.pk))
    return notebook


def local_problem(profile: NotebookProfile) -> str:
    """Why the profile cannot run on this machine ("" when it can)."""
    return environments.problem(profile.name, profile.packages, profile.requires)


def _check_local(*, instance: Instance, profile: NotebookProfile) -> None:
    problem = local_problem(profile)
    if problem:
        raise ValidationError(
            {"profile": f"{profile.display_name} is unavailable on this machine: {problem}"})
    if tenants.isolated() or settings.LOCAL_SINGLE_USER_SHARED:
        return
    # One OS user for everyone: another workspace's notebooks could read this one's files.
    others = Notebook.objects.filter(instance__cluster__backend=Cluster.Backend.LOCAL).exclude(
        status=Status.DELETED).exclude(instance__workspace_id=instance.workspace_id)
    if others.exists():
        raise ValidationError(
            "Single-user mode: local notebooks all run as the portal's OS user, so this "
            "machine serves one workspace at a time, and another one is using it. An "
            "administrator can allow sharing (LOCAL_SINGLE_USER_SHARED=true).")


def delete_notebook(
    *, notebook: Notebook, by: AbstractBaseUser, ip_address: str | None = None
) -> Notebook:
    from .tasks import teardown_notebook_task

    with transaction.atomic():
        changed = _transition(
            notebook.pk, from_=[Status.DEPLOYING, Status.RUNNING, Status.FAILED],
            to=Status.DELETING, message="Deleting: stopping the server.", actor=by,
            ip_address=ip_address,
        )
        if changed:
            transaction.on_commit(lambda: teardown_notebook_task.delay(notebook.pk))
    notebook.refresh_from_db()
    return notebook


def retry_notebook(
    *, notebook: Notebook, by: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    """Start a failed notebook again under its name. A failed notebook keeps its share of the
    instance (its files, its GPU slots), so only the instance must still be running."""
    from .tasks import advance_notebook_task

    with transaction.atomic():
        if notebook.instance.status != Instance.Status.RUNNING:
            raise ValidationError(
                f"its instance {notebook.instance.name} is "
                f"{notebook.instance.status_label.lower()}.")
        # An empty step makes the worker apply everything again, as a first deploy does.
        changed = _transition(
            notebook.pk, from_=[Status.FAILED], to=Status.DEPLOYING, step="",
            message="Retrying: waiting for a worker.", actor=by, ip_address=ip_address)
        if changed:
            transaction.on_commit(lambda: advance_notebook_task.delay(notebook.pk))
    return changed is not None


def reveal_notebook_token(
    *, notebook: Notebook, by: AbstractBaseUser, ip_address: str | None = None
) -> str:
    """The notebook's token, for someone the caller found allowed on its instance; asked for
    explicitly (the API, not a listing), so the audit log says who saw it and when."""
    record_audit(action=AuditAction.NOTEBOOK_TOKEN_REVEALED, obj=notebook, actor=by,
                 workspace=notebook.instance.workspace, ip_address=ip_address,
                 instance=notebook.instance.name)
    return notebook.token


def rotate_notebook_tokens(*, instance_id: int, reason: str = "") -> int:
    """Give every live notebook whose token predates the instance's last access removal a
    new token, and restart the running ones with it: whoever lost access knew the old one.

    Level-triggered (the reconcile pass calls it too), so a lost message only delays it."""
    from .tasks import advance_notebook_task

    rotated, restarted = 0, []
    with transaction.atomic():
        instance = (Instance.objects.filter(pk=instance_id)
                    .select_related("workspace__owner").first())
        if instance is None or instance.access_revoked_at is None:
            return 0
        stale = (Notebook.objects.select_for_update()
                 .filter(instance=instance, token_issued_at__lt=instance.access_revoked_at)
                 .exclude(status__in=[Status.DELETING, Status.DELETED]))
        why = f" ({reason})" if reason else ""
        for notebook in stale:
            fields: dict[str, Any] = {"token_encrypted": encrypt(secrets.token_urlsafe(32)),
                                      "token_issued_at": timezone.now()}
            restart = notebook.status in (Status.RUNNING, Status.DEPLOYING)
            if restart:
                # An empty step makes the worker apply the objects again: the backend restarts
                # the server with the new token, and the old one is refused from then on.
                fields.update(status=Status.DEPLOYING, step="", status_changed_at=timezone.now(),
                              status_message=f"Restarting with a new token{why}.")
            Notebook.objects.filter(pk=notebook.pk).update(**fields)
            record_audit(action=AuditAction.NOTEBOOK_TOKEN_ROTATED, obj=notebook,
                         workspace=instance.workspace, reason=reason, restarted=restart)
            if restart:
                transaction.on_commit(
                    lambda pk=notebook.pk: advance_notebook_task.delay(pk))
            rotated += 1
            restarted.extend([notebook.name] if restart else [])
    if restarted:
        _tell_owner(instance, restarted, reason)
    return rotated


def _tell_owner(instance: Instance, names: list[str], reason: str) -> None:
    """Mail the owner that their notebooks restarted with new tokens, and why."""
    owner = instance.workspace.owner
    if not owner.email:
        return
    listed = ", ".join(names)
    body = (f"Your notebooks {listed} on the instance {instance.name} restarted with new "
            f"tokens{f' because {reason}' if reason else ''}: whoever lost access knew the "
            "old ones, which no longer work. Open them from the portal to get the new tokens.\n")
    try:
        send_mail(f"Notebooks on {instance.name} restarted with new tokens", body,
                  settings.DEFAULT_FROM_EMAIL, [owner.email])
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not tell %s about renewed tokens: %s", owner.email, exc)


# --- worker side ---------------------------------------------------------------------------


def notebook_spec(notebook: Notebook) -> NotebookSpec:
    instance = notebook.instance
    return NotebookSpec(
        key=notebook.key,
        name=notebook.name,
        instance=instance_spec(instance),
        image=notebook.image,
        cpu=float(notebook.cpu),
        memory_gib=notebook.memory_gib,
        gpus=notebook.gpus,
        token=notebook.token,
        gpu_indices=tuple(notebook.gpu_indices),
        instance_kubeconfig=decrypt(instance.kubeconfig_encrypted),
        profile=notebook.profile.name,
        packages=notebook.profile.packages,
        requires=notebook.profile.requires,
        storage_gib=notebook.profile.storage_gib,
        host_suffix=notebook.host_suffix,
    )


def _load(notebook_id: int) -> Notebook | None:
    return (
        Notebook.objects.select_related(
            "instance__workspace__owner", "instance__cluster", "instance__profile", "profile")
        .filter(pk=notebook_id).first()
    )


def _transition(notebook_id: int, **change: Any) -> Notebook | None:
    """lifecycle.transition for a notebook, read back with its instance."""
    return lifecycle.transition(Notebook, notebook_id, load=_load, **change)


def _fail(notebook: Notebook, *, message: str, detail: str = "") -> Notebook:
    """Fail the notebook and stop what of it still runs: a failed notebook holds no GPU."""
    failed = _transition(notebook.pk, from_=[Status.DEPLOYING, Status.RUNNING],
                         to=Status.FAILED, message=message, detail=detail)
    if failed is None:
        return notebook
    try:
        get_backend(failed.instance.cluster).release_notebook(notebook_spec(failed))
    except BackendError as exc:  # reconcile and deletion will try again
        log.warning("could not stop failed notebook %s: %s", failed.key, exc.detail)
    return failed


def _apply(notebook: Notebook, state: NotebookState) -> Notebook:
    if state.phase == "running":
        return _transition(
            notebook.pk, from_=[Status.DEPLOYING], to=Status.RUNNING, message=state.message,
            detail=state.detail, url=state.url, step=state.step, running_since=timezone.now(),
        ) or notebook
    if state.phase in ("failed", "gone"):
        return _fail(notebook, message=state.message, detail=state.detail)
    Notebook.objects.filter(pk=notebook.pk, status=notebook.status).update(
        step=state.step, status_message=state.message[:500], status_detail=state.detail)
    notebook.step, notebook.status_message = state.step, state.message[:500]
    return notebook


def advance_notebook(*, notebook_id: int) -> Notebook | None:
    """Move a deploying notebook one step on: create its objects once, then watch them."""
    notebook = _load(notebook_id)
    if notebook is None or notebook.status != Status.DEPLOYING:
        return notebook
    if notebook.instance.status != Instance.Status.RUNNING:
        # Never start (or restart) a server on an instance that is going or gone.
        return _follow_instance(notebook)
    timeout = timezone.timedelta(seconds=settings.NOTEBOOK_DEPLOY_TIMEOUT_S)
    # Building an environment the first time may take longer than any start; it ends by
    # itself (ready or failed), and the timeout counts from then.
    if (notebook.step and notebook.step != Notebook.Step.PREPARING
            and timezone.now() - notebook.status_changed_at > timeout):
        minutes = settings.NOTEBOOK_DEPLOY_TIMEOUT_S // 60
        return _fail(notebook, message=f"Not reachable after {minutes} minutes: "
                     f"{notebook.status_message}", detail=notebook.status_detail)
    backend = get_backend(notebook.instance.cluster)
    spec = notebook_spec(notebook)
    try:
        state = backend.notebook_state(spec) if notebook.step else None
        if state is None or state.phase == "gone":
            state = backend.ensure_notebook(spec)
    except TransientBackendError as exc:
        _apply(notebook, NotebookState("deploying", notebook.step, f"{exc.message} Retrying.",
                                       detail=exc.detail))
        raise
    except BackendError as exc:
        return _apply(notebook, NotebookState("failed", notebook.step, exc.message,
                                              detail=exc.detail))
    return _apply(notebook, state)


def _follow_instance(notebook: Notebook) -> Notebook:
    if notebook.instance.status in (Instance.Status.DELETING, Instance.Status.DELETED):
        return _transition(notebook.pk, from_=[s for s in Status if s != Status.DELETED],
                           to=Status.DELETED, message="Deleted with its instance.",
                           deleted_at=timezone.now(), url="") or notebook
    return _transition(notebook.pk, from_=[Status.DEPLOYING], to=Status.FAILED,
                       message=f"Its instance is {notebook.instance.status_label.lower()}."
                       ) or notebook


def teardown_notebook(*, notebook_id: int) -> Notebook | None:
    notebook = _load(notebook_id)
    if notebook is None or notebook.status != Status.DELETING:
        return notebook
    state = get_backend(notebook.instance.cluster).delete_notebook(notebook_spec(notebook))
    if state.phase != "gone":
        return _apply(notebook, state)
    return _transition(notebook.pk, from_=[Status.DELETING], to=Status.DELETED,
                       message="Deleted.", deleted_at=timezone.now(), url="")


def reconcile_notebooks() -> dict[str, int]:
    """Level-triggered, like the instances' pass: notebooks follow their instance out,
    stuck ones are re-driven, and running ones that vanished or died are brought back."""
    from .tasks import advance_notebook_task, teardown_notebook_task

    summary = {"removed_with_instance": 0, "redriven": 0, "restored": 0, "tokens_rotated": 0,
               "orphans_stopped": 0}
    gone_with_instance = Notebook.objects.exclude(status=Status.DELETED).filter(
        instance__status__in=[Instance.Status.DELETING, Instance.Status.DELETED]
    ).select_related("instance")
    for notebook in gone_with_instance:
        # The backend removes what runs on a deleted instance; the rows follow.
        if _follow_instance(notebook).status == Status.DELETED:
            summary["removed_with_instance"] += 1
    for instance_id in (
        Notebook.objects.exclude(status__in=[Status.DELETING, Status.DELETED])
        .filter(token_issued_at__lt=F("instance__access_revoked_at"))
        .values_list("instance_id", flat=True).distinct()
    ):
        summary["tokens_rotated"] += rotate_notebook_tokens(instance_id=instance_id)
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.RECONCILE_STUCK_AFTER_S)
    stuck = Notebook.objects.filter(status_changed_at__lt=cutoff)
    for pk in lifecycle.claim_unwatched(stuck.filter(status=Status.DEPLOYING)):
        advance_notebook_task.delay(pk)
        summary["redriven"] += 1
    for pk in lifecycle.claim_unwatched(stuck.filter(status=Status.DELETING)):
        teardown_notebook_task.delay(pk)
        summary["redriven"] += 1
    for cluster in Cluster.objects.all():
        try:
            summary["orphans_stopped"] += get_backend(cluster).stop_orphan_notebooks(
                lambda cluster=cluster: {n.key for n in Notebook.objects.filter(
                    instance__cluster=cluster).exclude(status=Status.DELETED).only("pk")})
        except BackendError as exc:
            log.warning("orphan notebook sweep of %s failed: %s", cluster, exc.detail)
        running = list(
            Notebook.objects.filter(status=Status.RUNNING, instance__cluster=cluster,
                                    instance__status=Instance.Status.RUNNING)
            .select_related("instance__workspace__owner", "instance__cluster",
                            "instance__profile", "profile")
        )
        if not running:
            continue
        try:
            states = get_backend(cluster).reconcile_notebooks([notebook_spec(n) for n in running])
        except BackendError as exc:
            log.warning("notebook reconcile of %s failed: %s", cluster, exc.detail)
            continue
        except Exception:  # whatever one cluster does, the others are still reconciled
            log.exception("notebook reconcile of %s failed", cluster)
            continue
        for notebook in running:
            state = states.get(notebook.key)
            if state is None or state.phase == "running":
                continue
            if state.phase == "deploying":  # restarted: watch it come back
                _transition(notebook.pk, from_=[Status.RUNNING], to=Status.DEPLOYING,
                            message=f"Restarting: {state.message}", step=state.step)
                advance_notebook_task.delay(notebook.pk)
                summary["restored"] += 1
            else:
                _apply(notebook, state)
    return summary
