"""The verbs of what runs on an instance, notebooks and catalogue services: the only code
that writes their rows. Both go one way (deploying, running, failed, deleting, deleted)
through the same functions; only what the backend is given differs (`spec_for`)."""

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
from django.db.models import F, Q
from django.utils import timezone

from clusters.backends import (
    BackendError,
    NotebookSpec,
    NotebookState,
    ServiceSpec,
    TransientBackendError,
    get_backend,
)
from clusters.backends.base import Workload
from clusters.backends.local import environments, tenants
from clusters.crypto import decrypt, encrypt
from clusters.models import Cluster
from gpupaas.formats import gpus_phrase
from instances import lifecycle
from instances.models import Deployment, Instance
from instances.services import instance_spec
from workspaces.models import AuditAction
from workspaces.services import lock_workspace, record_audit
from workspaces.tokens import new_token

from .models import Notebook, NotebookProfile, Service, ServiceKey, ServiceProfile
from .selectors import held_gpu_slots, instance_capacity

log = logging.getLogger(__name__)
Status = Notebook.Status


def _admit(*, model: type[Deployment], instance: Instance, name: str, cpu: Decimal,
           memory_gib: int, gpus: int | None, default_gpus: int, what: str
           ) -> tuple[int, list[int]]:
    """The checks every deployment onto an instance passes, under the workspace's lock (the
    caller's transaction holds it from here to the insert): the instance runs, the name is
    free, and it fits the room its notebooks and services leave. Returns the GPU count (by
    default: `default_gpus`, else every GPU of the instance nothing holds) and the slots."""
    lock_workspace(workspace_id=instance.workspace_id)
    instance.refresh_from_db()
    if instance.status != Instance.Status.RUNNING:
        raise ValidationError({"instance": f"{instance.name} is not running."})
    if cpu <= 0 or memory_gib <= 0:
        raise ValidationError(f"A {what} needs some CPU and memory.")
    if model.objects.filter(instance=instance, name=name).exclude(
            status=Status.DELETED).exists():
        raise ValidationError({"name": f"{instance.name} already has a {what} named {name}."})
    taken = {i for used in held_gpu_slots(instance) for i in used}
    free = [i for i in instance.gpu_indices if i not in taken]
    if gpus is None:
        # A deployment on a GPU instance gets GPUs unless asked not to: the profile's
        # count, else whatever of the instance's GPUs nothing else holds.
        gpus = default_gpus or len(free)
    refusal = instance_capacity(instance=instance).refusal(
        cpu=cpu, memory_gib=memory_gib, gpus=gpus, what=what)
    if refusal:
        raise ValidationError(refusal)
    return gpus, free[:gpus]


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
        if not profile.published:
            raise ValidationError({"profile": "This profile is not available."})
        cluster = instance.cluster
        if cluster.backend == Cluster.Backend.KUBERNETES and not cluster.ingress_domain.strip():
            raise ValidationError(
                f"Notebooks cannot run on {cluster} yet: it has no ingress domain for their "
                "addresses. Ask an administrator to set one.")
        gpus, slots = _admit(model=Notebook, instance=instance, name=name, cpu=cpu,
                             memory_gib=memory_gib, gpus=gpus,
                             default_gpus=profile.default_gpus, what="notebook")
        if instance.cluster.backend == Cluster.Backend.LOCAL:
            _check_local(instance=instance, problem=local_problem(profile),
                         profile=profile.display_name)
        try:
            with transaction.atomic():
                notebook = Notebook.objects.create(
                    instance=instance, name=name, description=description, profile=profile,
                    created_by=by, cpu=cpu, memory_gib=memory_gib, gpus=gpus,
                    gpu_indices=slots,
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


def deploy_service(
    *,
    instance: Instance,
    name: str,
    profile: ServiceProfile,
    by: AbstractBaseUser,
    description: str = "",
    cpu: Decimal | None = None,
    memory_gib: int | None = None,
    gpus: int | None = None,
    model: str = "",
    ip_address: str | None = None,
) -> Service:
    """Record a catalogue service on a running instance and hand it to a worker; refuses as
    deploy_notebook does, and where the profile cannot run on the instance's cluster."""
    from .tasks import advance_service_task

    cpu = profile.default_cpu if cpu is None else cpu
    memory_gib = profile.default_memory_gib if memory_gib is None else memory_gib
    if gpus is not None and gpus > profile.max_gpus:
        raise ValidationError({"gpus": f"{profile.display_name} takes at most "
                                       f"{gpus_phrase(profile.max_gpus)}."})
    choices = profile.model_choices
    if choices and not model:
        model = choices[0]
    if model and model not in choices:
        raise ValidationError({"model": f"{profile.display_name} serves one of: "
                                        f"{', '.join(choices) or 'no model to choose'}."})
    with transaction.atomic():
        if not profile.published:
            raise ValidationError({"profile": "This service is not available."})
        problem = service_problem(profile, instance.cluster)
        if problem:
            raise ValidationError({"profile": f"{profile.display_name} cannot run on "
                                              f"{instance.name}: {problem}"})
        # A service takes its profile's GPUs by default, never the instance's free ones.
        gpus, slots = _admit(model=Service, instance=instance, name=name, cpu=cpu,
                             memory_gib=memory_gib,
                             gpus=profile.default_gpus if gpus is None else gpus,
                             default_gpus=profile.default_gpus, what="service")
        if instance.cluster.backend == Cluster.Backend.LOCAL:
            _check_local(instance=instance, problem="", profile=profile.display_name)
        try:
            with transaction.atomic():
                service = Service.objects.create(
                    instance=instance, name=name, description=description, profile=profile,
                    created_by=by, cpu=cpu, memory_gib=memory_gib, gpus=gpus,
                    gpu_indices=slots, model=model,
                    status_message="Waiting for a worker to start it.")
        except IntegrityError as exc:
            raise ValidationError(
                {"name": f"{instance.name} already has a service named {name}."}) from exc
        record_audit(action=AuditAction.SERVICE_DEPLOYING, obj=service, actor=by,
                     workspace=instance.workspace, ip_address=ip_address,
                     instance=instance.name, profile=profile.name)
        transaction.on_commit(lambda: advance_service_task.delay(service.pk))
    return service


def service_problem(profile: ServiceProfile, cluster: Cluster) -> str:
    """Why the service cannot run on the cluster ("" when it can)."""
    if cluster.backend != Cluster.Backend.LOCAL:
        return "" if profile.chart else "it has no Helm chart for Kubernetes clusters."
    if not profile.local_command:
        return "it has no command for the local machine."
    return environments.problem(f"svc-{profile.name}", profile.packages, profile.requires,
                                jupyter=False)


def local_problem(profile: NotebookProfile) -> str:
    """Why the profile cannot run on this machine ("" when it can)."""
    return environments.problem(profile.name, profile.packages, profile.requires)


def _check_local(*, instance: Instance, problem: str, profile: str) -> None:
    if problem:
        raise ValidationError(
            {"profile": f"{profile} is unavailable on this machine: {problem}"})
    if tenants.isolated() or settings.LOCAL_SINGLE_USER_SHARED:
        return
    # One OS user for everyone: another workspace's notebooks could read this one's files.
    local = Q(instance__cluster__backend=Cluster.Backend.LOCAL)
    mine = Q(instance__workspace_id=instance.workspace_id)
    if any(model.objects.filter(local).exclude(status=Status.DELETED).exclude(mine).exists()
           for model in (Notebook, Service)):
        raise ValidationError(
            "Single-user mode: local notebooks and services all run as the portal's OS "
            "user, so this machine serves one workspace at a time, and another one is using "
            "it. An administrator can allow sharing (LOCAL_SINGLE_USER_SHARED=true).")


def _tasks(model: type[Deployment]) -> tuple[Any, Any]:
    """(advance, teardown) tasks of the kind."""
    from . import tasks

    if model is Service:
        return tasks.advance_service_task, tasks.teardown_service_task
    return tasks.advance_notebook_task, tasks.teardown_notebook_task


def _delete(row: Deployment, by: AbstractBaseUser, ip_address: str | None) -> Deployment:
    model = type(row)
    with transaction.atomic():
        changed = _transition(
            model, row.pk, from_=[Status.DEPLOYING, Status.RUNNING, Status.STOPPED,
                                  Status.FAILED],
            to=Status.DELETING, message="Deleting: stopping it.", actor=by,
            ip_address=ip_address,
        )
        if changed:
            transaction.on_commit(lambda: _tasks(model)[1].delay(row.pk))
    row.refresh_from_db()
    return row


def _deploy_again(row: Deployment, by: AbstractBaseUser, ip_address: str | None, *,
                  from_: str, message: str, refusal: str) -> bool:
    """Retry's and Start's body: a failed or stopped notebook or service keeps its share of
    the instance (its files, its GPU slots), so only the instance must still be running
    (else a ValidationError: `refusal` after its state)."""
    model = type(row)
    with transaction.atomic():
        if row.instance.status != Instance.Status.RUNNING:
            raise ValidationError(f"its instance {row.instance.name} is "
                                  f"{row.instance.status_label.lower()}{refusal}")
        # An empty step makes the worker apply everything again, as a first deploy does.
        changed = _transition(model, row.pk, from_=[from_], to=Status.DEPLOYING, step="",
                              message=message, actor=by, ip_address=ip_address)
        if changed:
            transaction.on_commit(lambda: _tasks(model)[0].delay(row.pk))
    return changed is not None


def _retry(row: Deployment, by: AbstractBaseUser, ip_address: str | None) -> bool:
    """Start a failed notebook or service again under its name."""
    return _deploy_again(row, by, ip_address, from_=Status.FAILED,
                         message="Retrying: waiting for a worker.", refusal=".")


def _stop(row: Deployment, by: AbstractBaseUser, ip_address: str | None) -> bool:
    """Stop one notebook or service and keep it: its server stops (a worker does it), its
    files and its share of the instance stay, and Start brings it back."""
    model = type(row)
    with transaction.atomic():
        changed = _transition(
            model, row.pk, from_=[Status.DEPLOYING, Status.RUNNING], to=Status.STOPPED,
            step="", stopped_with_instance=False, actor=by, ip_address=ip_address,
            message="Stopped: it holds no GPU and its files are kept. Start it to go on.")
        if changed:
            from .tasks import release_task

            transaction.on_commit(lambda: release_task.delay(model.KIND, row.pk))
    return changed is not None


def _start(row: Deployment, by: AbstractBaseUser, ip_address: str | None) -> bool:
    """Start a stopped notebook or service again, with its files and its share of the
    instance (kept while it was stopped), once its instance runs."""
    return _deploy_again(row, by, ip_address, from_=Status.STOPPED,
                         message="Starting: waiting for a worker.",
                         refusal="; it starts again with it.")


def release(*, kind: str, pk: int) -> None:
    """The worker's part of a stop: stop what of it still runs, if it is still stopped."""
    model = Service if kind == Service.KIND else Notebook
    row = _load(model, pk)
    if row is None or row.status != Status.STOPPED:
        return
    get_backend(row.instance.cluster).release_notebook(spec_for(row))


def stop_notebook(*, notebook: Notebook, by: AbstractBaseUser,
                  ip_address: str | None = None) -> bool:
    return _stop(notebook, by, ip_address)


def start_notebook(*, notebook: Notebook, by: AbstractBaseUser,
                   ip_address: str | None = None) -> bool:
    return _start(notebook, by, ip_address)


def stop_service(*, service: Service, by: AbstractBaseUser,
                 ip_address: str | None = None) -> bool:
    return _stop(service, by, ip_address)


def start_service(*, service: Service, by: AbstractBaseUser,
                  ip_address: str | None = None) -> bool:
    return _start(service, by, ip_address)


def delete_notebook(
    *, notebook: Notebook, by: AbstractBaseUser, ip_address: str | None = None
) -> Notebook:
    return _delete(notebook, by, ip_address)


def retry_notebook(
    *, notebook: Notebook, by: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    return _retry(notebook, by, ip_address)


def delete_service(
    *, service: Service, by: AbstractBaseUser, ip_address: str | None = None
) -> Service:
    return _delete(service, by, ip_address)


def retry_service(
    *, service: Service, by: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    return _retry(service, by, ip_address)


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


def issue_service_key(*, service: Service, by: AbstractBaseUser, name: str = "",
                      ip_address: str | None = None) -> tuple[ServiceKey, str]:
    """A key of the caller's to an API service on an instance the caller may use (checked
    by the caller): (its row, the key, shown once)."""
    if service.profile.exposure != ServiceProfile.Exposure.API:
        raise ValidationError(f"{service.name} is opened in a browser; it takes no keys.")
    if service.status in (Status.DELETING, Status.DELETED):
        raise ValidationError(f"{service.name} is {service.status_label.lower()}.")
    live = ServiceKey.objects.filter(service=service, user=by, revoked_at__isnull=True,
                                     expires_at__gt=timezone.now())
    if live.count() >= settings.SERVICE_KEYS_PER_USER:
        raise ValidationError(f"You have {settings.SERVICE_KEYS_PER_USER} live keys to "
                              f"{service.name}, the most there may be; revoke one first.")
    plain, digest, prefix = new_token(ServiceKey.PREFIX)
    row = ServiceKey.objects.create(
        service=service, user=by, name=name[:60], token_hash=digest, prefix=prefix,
        expires_at=timezone.now() + timezone.timedelta(days=settings.SERVICE_KEY_DAYS))
    record_audit(action=AuditAction.SERVICE_KEY_ISSUED, obj=service, actor=by,
                 workspace=service.instance.workspace, ip_address=ip_address,
                 key=prefix, name=row.name)
    return row, plain


def revoke_service_key(*, key: ServiceKey, by: AbstractBaseUser, reason: str = "revoked by "
                       "its user", ip_address: str | None = None) -> bool:
    """Revoke one key (its user's own; checked by the caller). Refused from the next
    request on, within APPS_DECISION_CACHE_S."""
    changed = ServiceKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason[:200])
    if changed:
        record_audit(action=AuditAction.SERVICE_KEY_REVOKED, obj=key.service, actor=by,
                     workspace=key.service.instance.workspace, ip_address=ip_address,
                     key=key.prefix)
    return bool(changed)


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


def service_spec(service: Service) -> ServiceSpec:
    profile = service.profile
    return ServiceSpec(
        key=service.key, name=service.name, instance=instance_spec(service.instance),
        cpu=float(service.cpu), memory_gib=service.memory_gib, gpus=service.gpus,
        gpu_indices=tuple(service.gpu_indices), profile=profile.name,
        packages=profile.packages, requires=profile.requires, command=profile.local_command,
        health_path=profile.health_path, chart_repository=profile.chart_repository,
        chart=profile.chart, chart_version=profile.chart_version,
        values_template=profile.values_template, service_name=profile.service_name,
        service_port=profile.service_port, storage_gib=profile.storage_gib,
        model=service.model,
        instance_kubeconfig=decrypt(service.instance.kubeconfig_encrypted),
    )


def spec_for(row: Deployment) -> Workload:
    return service_spec(row) if isinstance(row, Service) else notebook_spec(row)


def _load(model: type[Deployment], pk: int) -> Deployment | None:
    return (
        model.objects.select_related(
            "instance__workspace__owner", "instance__cluster", "instance__profile", "profile")
        .filter(pk=pk).first()
    )


def _transition(model: type[Deployment], pk: int, **change: Any) -> Deployment | None:
    """lifecycle.transition for a notebook or a service, read back with its instance."""
    return lifecycle.transition(model, pk, load=lambda pk: _load(model, pk), **change)


def _fail(row: Deployment, *, message: str, detail: str = "") -> Deployment:
    """Fail it and stop what of it still runs: a failed deployment holds no GPU."""
    failed = _transition(type(row), row.pk, from_=[Status.DEPLOYING, Status.RUNNING],
                         to=Status.FAILED, message=message, detail=detail)
    if failed is None:
        return row
    try:
        get_backend(failed.instance.cluster).release_notebook(spec_for(failed))
    except BackendError as exc:  # reconcile and deletion will try again
        log.warning("could not stop failed %s %s: %s", failed.KIND, failed.key, exc.detail)
    return failed


def _apply(row: Deployment, state: NotebookState) -> Deployment:
    model = type(row)
    if state.phase == "running":
        url = {"url": state.url} if model is Notebook else {}  # a service's is the portal's
        return _transition(
            model, row.pk, from_=[Status.DEPLOYING], to=Status.RUNNING, message=state.message,
            detail=state.detail, step=state.step, running_since=timezone.now(), **url,
        ) or row
    if state.phase in ("failed", "gone"):
        return _fail(row, message=state.message, detail=state.detail)
    model.objects.filter(pk=row.pk, status=row.status).update(
        step=state.step, status_message=state.message[:500], status_detail=state.detail)
    row.step, row.status_message = state.step, state.message[:500]
    return row


def _advance(model: type[Deployment], pk: int) -> Deployment | None:
    """Move a deploying notebook or service one step on: create it once, then watch it."""
    row = _load(model, pk)
    if row is None or row.status != Status.DEPLOYING:
        return row
    if row.instance.status != Instance.Status.RUNNING:
        # Never start (or restart) a server on an instance that is going or gone.
        return _follow_instance(row)
    timeout = timezone.timedelta(seconds=settings.NOTEBOOK_DEPLOY_TIMEOUT_S)
    # Building an environment the first time may take longer than any start; it ends by
    # itself (ready or failed), and the timeout counts from then.
    if (row.step and row.step != "preparing"
            and timezone.now() - row.status_changed_at > timeout):
        minutes = settings.NOTEBOOK_DEPLOY_TIMEOUT_S // 60
        return _fail(row, message=f"Not reachable after {minutes} minutes: "
                     f"{row.status_message}", detail=row.status_detail)
    backend = get_backend(row.instance.cluster)
    spec = spec_for(row)
    try:
        state = backend.notebook_state(spec) if row.step else None
        if state is None or state.phase == "gone":
            state = backend.ensure_notebook(spec)
    except TransientBackendError as exc:
        _apply(row, NotebookState("deploying", row.step, f"{exc.message} Retrying.",
                                  detail=exc.detail))
        raise
    except BackendError as exc:
        return _apply(row, NotebookState("failed", row.step, exc.message, detail=exc.detail))
    return _apply(row, state)


def advance_notebook(*, notebook_id: int) -> Notebook | None:
    return _advance(Notebook, notebook_id)


def advance_service(*, service_id: int) -> Service | None:
    return _advance(Service, service_id)


def _follow_instance(row: Deployment) -> Deployment:
    model = type(row)
    gone = {"url": ""} if model is Notebook else {}
    if row.instance.status in (Instance.Status.DELETING, Instance.Status.DELETED):
        return _transition(model, row.pk, from_=[s for s in Status if s != Status.DELETED],
                           to=Status.DELETED, message="Deleted with its instance.",
                           deleted_at=timezone.now(), **gone) or row
    return _transition(model, row.pk, from_=[Status.DEPLOYING], to=Status.FAILED,
                       message=f"Its instance is {row.instance.status_label.lower()}."
                       ) or row


def follow_instance_stop_and_start(sender: type, row: Any, to: str, **_: Any) -> None:
    """Notebooks and services stop with their instance (the backend stops their servers
    as it frees the instance's GPUs) and start again with it, in the transaction that moves
    the instance (`instances.lifecycle.transitioned`)."""
    if sender is not Instance or to not in (Instance.Status.STOPPING, Instance.Status.RUNNING):
        return
    # Started again, the instance may hold other GPU slots than before: each deployment
    # that comes back takes as many of the new ones as it had, never a slot it no longer
    # owns (on a real machine that would be another instance's GPU).
    free = list(row.gpu_indices)
    for model in (Notebook, Service):
        if to == Instance.Status.STOPPING:
            for pk in model.objects.filter(instance=row, status__in=[
                    Status.DEPLOYING, Status.RUNNING]).values_list("pk", flat=True):
                _transition(model, pk, from_=[Status.DEPLOYING, Status.RUNNING],
                            to=Status.STOPPED, step="", stopped_with_instance=True,
                            message=f"Stopped with {row.name}; it starts again with it.")
            continue
        # Every deployment that holds a share of the instance (stopped or failed ones
        # too) takes slots among the new ones; those stopped with it start again.
        for pk, had, status, with_instance in model.objects.filter(
                instance=row, status__in=[Status.STOPPED, Status.FAILED]).order_by(
                "pk").values_list("pk", "gpu_indices", "status", "stopped_with_instance"):
            slots, free = free[:len(had)], free[len(had):]
            if status == Status.STOPPED and with_instance:
                if _transition(model, pk, from_=[Status.STOPPED], to=Status.DEPLOYING, step="",
                               gpu_indices=slots, stopped_with_instance=False,
                               message=f"Starting again with {row.name}."):
                    transaction.on_commit(
                        lambda model=model, pk=pk: _tasks(model)[0].delay(pk))
            else:
                model.objects.filter(pk=pk, status=status).update(gpu_indices=slots)


def _teardown(model: type[Deployment], pk: int) -> Deployment | None:
    row = _load(model, pk)
    if row is None or row.status != Status.DELETING:
        return row
    state = get_backend(row.instance.cluster).delete_notebook(spec_for(row))
    if state.phase != "gone":
        return _apply(row, state)
    gone = {"url": ""} if model is Notebook else {}
    return _transition(model, pk, from_=[Status.DELETING], to=Status.DELETED,
                       message="Deleted.", deleted_at=timezone.now(), **gone)


def teardown_notebook(*, notebook_id: int) -> Notebook | None:
    return _teardown(Notebook, notebook_id)


def teardown_service(*, service_id: int) -> Service | None:
    return _teardown(Service, service_id)


def reconcile_notebooks() -> dict[str, int]:
    """Level-triggered, like the instances' pass, for notebooks and services alike: they
    follow their instance out, stuck ones are re-driven, and running ones that vanished or
    died are brought back."""
    summary = {"removed_with_instance": 0, "redriven": 0, "restored": 0, "tokens_rotated": 0,
               "orphans_stopped": 0}
    kinds = (Notebook, Service)
    for model in kinds:
        gone_with_instance = model.objects.exclude(status=Status.DELETED).filter(
            instance__status__in=[Instance.Status.DELETING, Instance.Status.DELETED]
        ).select_related("instance")
        for row in gone_with_instance:
            # The backend removes what runs on a deleted instance; the rows follow.
            if _follow_instance(row).status == Status.DELETED:
                summary["removed_with_instance"] += 1
    for instance_id in (
        Notebook.objects.exclude(status__in=[Status.DELETING, Status.DELETED])
        .filter(token_issued_at__lt=F("instance__access_revoked_at"))
        .values_list("instance_id", flat=True).distinct()
    ):
        summary["tokens_rotated"] += rotate_notebook_tokens(instance_id=instance_id)
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.RECONCILE_STUCK_AFTER_S)
    for model in kinds:
        advance_task, teardown_task = _tasks(model)
        stuck = model.objects.filter(status_changed_at__lt=cutoff)
        for pk in lifecycle.claim_unwatched(stuck.filter(status=Status.DEPLOYING)):
            advance_task.delay(pk)
            summary["redriven"] += 1
        for pk in lifecycle.claim_unwatched(stuck.filter(status=Status.DELETING)):
            teardown_task.delay(pk)
            summary["redriven"] += 1
    for cluster in Cluster.objects.all():
        try:
            summary["orphans_stopped"] += get_backend(cluster).stop_orphan_notebooks(
                lambda cluster=cluster: {row.key for model in kinds for row in model.objects
                                         .filter(instance__cluster=cluster)
                                         .exclude(status=Status.DELETED).only("pk")})
        except BackendError as exc:
            log.warning("orphan notebook sweep of %s failed: %s", cluster, exc.detail)
        running = [
            row for model in kinds for row in
            model.objects.filter(status=Status.RUNNING, instance__cluster=cluster,
                                 instance__status=Instance.Status.RUNNING)
            .select_related("instance__workspace__owner", "instance__cluster",
                            "instance__profile", "profile")
        ]
        if not running:
            continue
        try:
            states = get_backend(cluster).reconcile_notebooks([spec_for(r) for r in running])
        except BackendError as exc:
            log.warning("notebook reconcile of %s failed: %s", cluster, exc.detail)
            continue
        except Exception:  # whatever one cluster does, the others are still reconciled
            log.exception("notebook reconcile of %s failed", cluster)
            continue
        for row in running:
            state = states.get(row.key)
            if state is None or state.phase == "running":
                continue
            if state.phase == "deploying":  # restarted: watch it come back
                _transition(type(row), row.pk, from_=[Status.RUNNING], to=Status.DEPLOYING,
                            message=f"Restarting: {state.message}", step=state.step)
                _tasks(type(row))[0].delay(row.pk)
                summary["restored"] += 1
            else:
                _apply(row, state)
    return summary
