"""Thin Celery wrappers: take ids, call one service, own retries and polling."""

from celery import shared_task
from django.conf import settings

from instances.tasks import POLL, RETRY, drive

from . import idle, services
from .models import Notebook, Service


def booting_here(row: Notebook | Service) -> bool:
    """A local server that has started and will answer in a moment: worth a fast poll (on
    Kubernetes each look costs API requests, and a pod may wait minutes for its image)."""
    return row.step == "starting" and row.instance.cluster.backend == "local"


@shared_task(bind=True, **POLL)
def advance_notebook_task(self, notebook_id: int) -> str | None:
    # Still on its way: look again soon (the service fails it after its timeout).
    return drive(self, Notebook, notebook_id,
                 lambda: services.advance_notebook(notebook_id=notebook_id),
                 waiting=Notebook.Status.DEPLOYING, first=settings.NOTEBOOK_POLL_S,
                 cap=settings.NOTEBOOK_POLL_MAX_S, fast=booting_here)


@shared_task(bind=True, **POLL)
def teardown_notebook_task(self, notebook_id: int) -> str | None:
    return drive(self, Notebook, notebook_id,
                 lambda: services.teardown_notebook(notebook_id=notebook_id),
                 waiting=Notebook.Status.DELETING, first=settings.NOTEBOOK_POLL_S,
                 cap=settings.NOTEBOOK_POLL_MAX_S)


@shared_task(**RETRY)
def release_task(kind: str, pk: int) -> None:
    """A stopped notebook's or service's server stops (its GPU goes back)."""
    services.release(kind=kind, pk=pk)


@shared_task(acks_late=True)
def check_idle() -> dict[str, int]:
    return idle.check_idle()


@shared_task(acks_late=True)
def reconcile_notebooks() -> dict[str, int]:
    return services.reconcile_notebooks()


@shared_task(acks_late=True)
def rotate_notebook_tokens(instance_id: int, reason: str = "") -> int:
    """Sent by name from instances when someone loses access to an instance."""
    return services.rotate_notebook_tokens(instance_id=instance_id, reason=reason)


@shared_task(bind=True, **POLL)
def advance_service_task(self, service_id: int) -> str | None:
    return drive(self, Service, service_id,
                 lambda: services.advance_service(service_id=service_id),
                 waiting=Service.Status.DEPLOYING, first=settings.NOTEBOOK_POLL_S,
                 cap=settings.NOTEBOOK_POLL_MAX_S, fast=booting_here)


@shared_task(bind=True, **POLL)
def teardown_service_task(self, service_id: int) -> str | None:
    return drive(self, Service, service_id,
                 lambda: services.teardown_service(service_id=service_id),
                 waiting=Service.Status.DELETING, first=settings.NOTEBOOK_POLL_S,
                 cap=settings.NOTEBOOK_POLL_MAX_S)
