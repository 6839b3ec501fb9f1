"""Thin Celery wrappers: take ids, call one service, own retries and polling."""

from celery import shared_task
from django.conf import settings

from instances.tasks import POLL, done, poll_again, watch

from . import services
from .models import Notebook


@shared_task(bind=True, **POLL)
def advance_notebook_task(self, notebook_id: int) -> str | None:
    watch(self, Notebook, notebook_id)
    notebook = services.advance_notebook(notebook_id=notebook_id)
    if notebook is not None and notebook.status == Notebook.Status.DEPLOYING:
        # Still on its way: look again soon (the service fails it after its timeout).
        raise poll_again(self, Notebook, notebook_id, first=settings.NOTEBOOK_POLL_S,
                         cap=settings.NOTEBOOK_POLL_MAX_S)
    done(Notebook, notebook_id)
    return notebook.status if notebook else None


@shared_task(bind=True, **POLL)
def teardown_notebook_task(self, notebook_id: int) -> str | None:
    watch(self, Notebook, notebook_id)
    notebook = services.teardown_notebook(notebook_id=notebook_id)
    if notebook is not None and notebook.status == Notebook.Status.DELETING:
        raise poll_again(self, Notebook, notebook_id, first=settings.NOTEBOOK_POLL_S,
                         cap=settings.NOTEBOOK_POLL_MAX_S)
    done(Notebook, notebook_id)
    return notebook.status if notebook else None


@shared_task(acks_late=True)
def reconcile_notebooks() -> dict[str, int]:
    return services.reconcile_notebooks()


@shared_task(acks_late=True)
def rotate_notebook_tokens(instance_id: int, reason: str = "") -> int:
    """Sent by name from instances when someone loses access to an instance."""
    return services.rotate_notebook_tokens(instance_id=instance_id, reason=reason)
