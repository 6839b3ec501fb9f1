"""Thin Celery wrappers: take ids, call one service, own retries and polling."""

import time
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from clusters.backends import TransientBackendError
from workspaces import usage

from . import lifecycle, services
from .models import Instance

RETRY = {
    "autoretry_for": (TransientBackendError,),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
    "reject_on_worker_lost": True,
}
# Tasks that watch something on its way up or down: they poll for as long as it takes
# (`max_retries=None` on the task; on `retry()` it would only mean "the task's default").
POLL = {**RETRY, "max_retries": None}


def watch(task: Task, model: type, pk: int) -> None:
    """Called first by a polling task: the chain is live, for at least one backed-off
    transient retry (POLL_LEASE_GRACE_S is longer than retry_backoff_max)."""
    lifecycle.hold_lease(model=model, pk=pk, seconds=settings.POLL_LEASE_GRACE_S)


def poll_again(task: Task, model: type, pk: int, *, first: float, cap: float,
               **kwargs: Any) -> Exception:
    """Look again later, backing off exponentially to the cap; the lease covers the wait.
    `kwargs` change the next look's arguments (a failed try is retried with its own)."""
    countdown = min(cap, first * 2 ** task.request.retries)
    lifecycle.hold_lease(model=model, pk=pk, seconds=countdown + settings.POLL_LEASE_GRACE_S)
    return task.retry(countdown=countdown,
                      kwargs={**(task.request.kwargs or {}), **kwargs} if kwargs else None)


def done(model: type, pk: int) -> None:
    lifecycle.hold_lease(model=model, pk=pk, seconds=None)


def drive(task: Task, model: type, pk: int, step: Callable[[], Any], *, waiting: str,
          first: float, cap: float, fast: Callable[[Any], bool] | None = None,
          **again: Any) -> str | None:
    """One look of a polling chain, for every kind of deployment: take the lease, run the
    service's `step`; while the row is still `waiting`, look again later (with `again` as
    the next look's arguments), else let go of the lease. Returns the status reached.

    While `fast(row)` says the end is a moment away (a local server booting), this worker
    looks again every FAST_POLL_INTERVAL_S, for FAST_POLL_S at most, instead of handing the
    row to a backed-off retry: it is seen running within a fraction of a second."""
    watch(task, model, pk)
    row = step()
    deadline = time.monotonic() + settings.FAST_POLL_S
    while (row is not None and row.status == waiting and fast is not None and fast(row)
           and time.monotonic() < deadline):
        time.sleep(settings.FAST_POLL_INTERVAL_S)
        row = step()
    if row is not None and row.status == waiting:
        raise poll_again(task, model, pk, first=first, cap=cap, **again)
    done(model, pk)
    return row.status if row else None


@shared_task(bind=True, **POLL)
def provision_instance_task(self, instance_id: int, applied: bool = False) -> str | None:
    # While the cluster brings it up, later looks read its status only (applied once per
    # chain; a chain the reconcile pass starts applies again).
    return drive(self, Instance, instance_id,
                 lambda: services.provision_instance(instance_id=instance_id, applied=applied),
                 waiting=Instance.Status.PROVISIONING, first=settings.INSTANCE_POLL_S,
                 cap=settings.INSTANCE_POLL_MAX_S, applied=True)


@shared_task(bind=True, **POLL)
def teardown_instance_task(self, instance_id: int) -> str | None:
    return drive(self, Instance, instance_id,
                 lambda: services.teardown_instance(instance_id=instance_id),
                 waiting=Instance.Status.DELETING, first=settings.INSTANCE_POLL_S,
                 cap=settings.INSTANCE_POLL_MAX_S)


@shared_task(bind=True, **POLL)
def halt_instance_task(self, instance_id: int) -> str | None:
    return drive(self, Instance, instance_id,
                 lambda: services.halt_instance(instance_id=instance_id),
                 waiting=Instance.Status.STOPPING, first=settings.INSTANCE_POLL_S,
                 cap=settings.INSTANCE_POLL_MAX_S)


@shared_task(acks_late=True)
def warn_budgets() -> int:
    return usage.warn_budgets()


@shared_task(acks_late=True)
def reconcile_instances() -> dict[str, int]:
    return vars(services.reconcile_instances())
