"""Thin Celery wrappers: take ids, call one service, own retries and polling."""

from typing import Any

from celery import Task, shared_task
from django.conf import settings

from clusters.backends import TransientBackendError

from . import services
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
    services.hold_lease(model=model, pk=pk, seconds=settings.POLL_LEASE_GRACE_S)


def poll_again(task: Task, model: type, pk: int, *, first: float, cap: float,
               **kwargs: Any) -> Exception:
    """Look again later, backing off exponentially to the cap; the lease covers the wait.
    `kwargs` change the next look's arguments (a failed try is retried with its own)."""
    countdown = min(cap, first * 2 ** task.request.retries)
    services.hold_lease(model=model, pk=pk, seconds=countdown + settings.POLL_LEASE_GRACE_S)
    return task.retry(countdown=countdown,
                      kwargs={**(task.request.kwargs or {}), **kwargs} if kwargs else None)


def done(model: type, pk: int) -> None:
    services.hold_lease(model=model, pk=pk, seconds=None)


@shared_task(bind=True, **POLL)
def provision_instance_task(self, instance_id: int, applied: bool = False) -> str | None:
    watch(self, Instance, instance_id)
    instance = services.provision_instance(instance_id=instance_id, applied=applied)
    if instance is not None and instance.status == Instance.Status.PROVISIONING:
        # The cluster is still bringing it up: look again later, reading its status only
        # (applied once per chain; a chain the reconcile pass starts applies again).
        raise poll_again(self, Instance, instance_id, first=settings.INSTANCE_POLL_S,
                         cap=settings.INSTANCE_POLL_MAX_S, applied=True)
    done(Instance, instance_id)
    return instance.status if instance else None


@shared_task(bind=True, **POLL)
def teardown_instance_task(self, instance_id: int) -> str | None:
    watch(self, Instance, instance_id)
    instance = services.teardown_instance(instance_id=instance_id)
    if instance is not None and instance.status == Instance.Status.DELETING:
        raise poll_again(self, Instance, instance_id, first=settings.INSTANCE_POLL_S,
                         cap=settings.INSTANCE_POLL_MAX_S)
    done(Instance, instance_id)
    return instance.status if instance else None


@shared_task(acks_late=True)
def reconcile_instances() -> dict[str, int]:
    return vars(services.reconcile_instances())
