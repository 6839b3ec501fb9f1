"""Thin Celery wrappers: take ids, call one service, own retries."""

from celery import shared_task

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


@shared_task(bind=True, **RETRY)
def provision_instance_task(self, instance_id: int) -> str | None:
    instance = services.provision_instance(instance_id=instance_id)
    if instance is not None and instance.status == Instance.Status.PROVISIONING:
        # The cluster is still bringing it up: look again shortly.
        raise self.retry(countdown=5, max_retries=None)
    return instance.status if instance else None


@shared_task(bind=True, **RETRY)
def teardown_instance_task(self, instance_id: int) -> str | None:
    instance = services.teardown_instance(instance_id=instance_id)
    if instance is not None and instance.status == Instance.Status.DELETING:
        raise self.retry(countdown=5, max_retries=None)
    return instance.status if instance else None


@shared_task(acks_late=True)
def reconcile_instances() -> dict[str, int]:
    return vars(services.reconcile_instances())
