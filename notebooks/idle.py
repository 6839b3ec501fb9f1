"""Idle stop, GPU-aware: a running instance whose size has an idle policy is stopped once
nobody and nothing has used it for the policy's minutes, after a warning.

Used means a notebook's kernel or terminal was active (Jupyter's own `last_activity`, read
without counting as activity), a kernel is busy now, or one of its GPUs is busier than the
threshold. So an unattended training run (a busy GPU, or a busy kernel) is never stopped,
and a tab left open on a stalled kernel does not keep a GPU. Where the cluster gives no GPU
reading (simulated GPUs; a Kubernetes cluster with no Prometheus URL, or no DCGM exporter),
activity alone decides, and the page says so. Jupyter is asked through the backend: on
the local machine at its port, on Kubernetes through the API server's service proxy.
Locally each look is a sample (the GPU counts as used at the moment of a check); from
Prometheus it is the busiest reading since the last look.

Every decision (warned, stopped, kept running) is an audit row with the figures it used, so
it is in the instance's timeline."""

import datetime
import logging
import smtplib
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from clusters.backends import BackendError, get_backend
from clusters.models import Cluster
from instances import services as instance_services
from instances.models import ComputeProfile, Instance
from workspaces.models import AuditAction
from workspaces.services import record_audit

from .models import Notebook
from .services import notebook_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """One look at an instance: its notebooks' activity and its GPUs' utilisation."""

    last_activity: datetime.datetime | None  # the latest of its notebooks' kernels/terminals
    busy_kernels: int
    gpu_percent: float | None  # the busiest GPU now; None: no reading
    notebooks: int
    unreachable: int = 0  # running notebooks that did not answer: their activity is unknown
    gpu_unread: bool = False  # the cluster has a GPU reading that failed: use is unknown

    def words(self, threshold: int) -> str:
        gpu = ("the GPU reading failed, so it counts as used" if self.gpu_unread
               else "no GPU reading, so activity alone decides" if self.gpu_percent is None
               else f"GPU {self.gpu_percent:.0f} % (idle under {threshold} %)")
        kernels = (f"{self.busy_kernels} kernel{'s' if self.busy_kernels != 1 else ''} busy"
                   if self.busy_kernels else "no kernel busy")
        missed = (f"; {self.unreachable} notebook{'s' if self.unreachable != 1 else ''} did "
                  "not answer, so it counts as used" if self.unreachable else "")
        return f"{gpu}; {kernels}{missed}"


def read(instance: Instance) -> Reading:
    """Ask each running notebook of the instance, and the cluster for its GPUs."""
    last, busy, count, missed = None, 0, 0, 0
    backend = get_backend(instance.cluster)
    for notebook in Notebook.objects.filter(instance=instance, status=Notebook.Status.RUNNING
                                            ).select_related("instance", "profile"):
        spec = notebook_spec(notebook)
        try:
            # Asked so that the asking does not count as activity.
            status = backend.jupyter_api(spec, "/api/status")
            kernels = backend.jupyter_api(spec, "/api/kernels?no_track_activity=1")
        except BackendError as exc:
            log.info("idle check could not reach %s: %s %s", notebook.key, exc, exc.detail)
            missed += 1
            continue
        count += 1
        seen = parse_datetime(str(status.get("last_activity") or "")) if isinstance(
            status, dict) else None
        if seen is not None and (last is None or seen > last):
            last = seen
        busy += sum(1 for k in kernels if isinstance(k, dict)
                    and k.get("execution_state") == "busy") if isinstance(kernels, list) else 0
    gpu, unread = None, False
    # Local instances hold slots (gpu_indices); a Kubernetes namespace holds its quota.
    if (instance.gpu_indices or instance.profile.gpus) and not instance.gpu_simulated:
        try:
            gpu = backend.gpu_utilisation(
                instance_services.instance_spec(instance), tuple(instance.gpu_indices))
        except BackendError as exc:
            log.info("idle check could not read the GPUs of %s: %s", instance.key, exc.detail)
            unread = True  # a training run may be busy on them: never stopped on a guess
    return Reading(last_activity=last, busy_kernels=busy, gpu_percent=gpu, notebooks=count,
                   unreachable=missed, gpu_unread=unread)


def _minutes(delta: datetime.timedelta) -> int:
    return int(delta.total_seconds() // 60)


def judge(instance: Instance, reading: Reading, *, now: datetime.datetime) -> str:
    """Record the reading on the instance and act on it: 'active', 'idle', 'warned' or
    'stopped'."""
    profile = instance.profile
    window, threshold = profile.idle_stop_minutes, profile.idle_gpu_percent
    active_now = reading.busy_kernels > 0 or reading.unreachable > 0 or reading.gpu_unread or (
        reading.gpu_percent is not None and reading.gpu_percent >= threshold)
    last = max(filter(None, [instance.last_active_at or instance.running_since,
                             reading.last_activity])) if not active_now else now
    idle = _minutes(now - last)
    words = f"{reading.words(threshold)}; idle for {idle} minute{'s' if idle != 1 else ''}"
    fields = {"last_active_at": last, "idle_reading": words[:300]}
    if active_now or (instance.idle_warned_at and last > instance.idle_warned_at):
        fields["idle_warned_at"] = None  # used again since the warning: start over
    # Only over what was read: a Keep running (or a warning) that landed meanwhile wins,
    # and this look decides nothing.
    if not Instance.objects.filter(
            pk=instance.pk, status=Instance.Status.RUNNING,
            last_active_at=instance.last_active_at, idle_warned_at=instance.idle_warned_at,
    ).update(**fields):
        return "active"
    if window is None:
        return "active" if active_now else "idle"
    figures = {"idle_minutes": idle, "gpu_percent": reading.gpu_percent,
               "busy_kernels": reading.busy_kernels, "notebooks": reading.notebooks,
               "policy_minutes": window, "gpu_threshold": threshold}
    warned = None if "idle_warned_at" in fields else instance.idle_warned_at
    notice = datetime.timedelta(minutes=settings.IDLE_WARNING_MINUTES)
    if warned is None and idle >= window - settings.IDLE_WARNING_MINUTES:
        # Always warned first, however long it has been idle (the check may have been down).
        _warn(instance, idle=idle, left=max(window - idle, settings.IDLE_WARNING_MINUTES),
              figures=figures, now=now)
        return "warned"
    if warned is not None and idle >= window and now - warned >= notice:
        stopped = instance_services.stop_instance(
            instance=instance, by=None, audit=figures,
            reason=f"Stopping after {idle} idle minutes ({reading.words(threshold)}): its "
                   "GPUs go back and its data is kept.")
        return "stopped" if stopped else "idle"
    return "active" if active_now else "idle"


def _warn(instance: Instance, *, idle: int, left: int, figures: dict,
          now: datetime.datetime) -> None:
    with transaction.atomic():
        if not Instance.objects.filter(pk=instance.pk, status=Instance.Status.RUNNING,
                                       idle_warned_at__isnull=True).update(idle_warned_at=now):
            return
        record_audit(action=AuditAction.INSTANCE_IDLE_WARNED, obj=instance,
                     workspace=instance.workspace, message=_warning(instance, idle, left),
                     **figures)
    owner = instance.workspace.owner
    if not owner.email:
        return
    link = f"{settings.PORTAL_URL}{reverse('instances:detail', args=[instance.pk])}"
    try:
        send_mail(f"{instance.name} stops in {left} minutes unless you keep it running",
                  f"{_warning(instance, idle, left)}\n\nKeep it running: {link}\n",
                  settings.DEFAULT_FROM_EMAIL, [owner.email])
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not warn %s that %s is idle: %s", owner.email, instance.name, exc)


def _warning(instance: Instance, idle: int, left: int) -> str:
    return (f"{instance.name} has been idle for {idle} minutes; it stops in {left} "
            f"minute{'s' if left != 1 else ''} to free its GPUs. Its data is kept.")


def check_idle(*, now: datetime.datetime | None = None) -> dict[str, int]:
    """One pass over the running instances whose size has an idle policy (local ones, and
    Kubernetes namespaces: the only kinds that can stop)."""
    now = now or timezone.now()
    outcome: dict[str, int] = {"active": 0, "idle": 0, "warned": 0, "stopped": 0}
    running = Instance.objects.filter(
        status=Instance.Status.RUNNING, profile__idle_stop_minutes__isnull=False,
    ).exclude(cluster__backend=Cluster.Backend.KUBERNETES,
              profile__kind__in=[ComputeProfile.Kind.VCLUSTER, ComputeProfile.Kind.DEDICATED]
    ).select_related("profile", "cluster", "workspace__owner")
    for instance in running:
        try:
            outcome[judge(instance, read(instance), now=now)] += 1
        except Exception:  # one instance's trouble spoils no other's check
            log.exception("idle check of %s failed", instance.key)
    return outcome
