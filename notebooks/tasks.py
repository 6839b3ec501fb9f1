"""Thin Celery wrappers: take ids, call one service, own retries."""

from celery import shared_task

from instances.tasks import RETRY

from . import services
from .models import Notebook


# Watching has no retry limit of its own (retry(max_retries=None) would mean the task's
# default, 8): the service settles the notebook, failing it after its deploy timeout, and a
# first environment build may take minutes.
@shared_task(bind=True, **{**RETRY, "max_retries": None})
def advance_notebook_task(self, notebook_id: int) -> str | None:
    notebook = services.advance_notebook(notebook_id=notebook_id)
    if notebook is not None and notebook.status == Notebook.Status.DEPLOYING:
        # Still on its way: look again soon.
        raise self.retry(countdown=1)
    return notebook.status if notebook else None


@shared_task(bind=True, **RETRY)
def teardown_notebook_task(self, notebook_id: int) -> str | None:
    notebook = services.teardown_notebook(notebook_id=notebook_id)
    if notebook is not None and notebook.status == Notebook.Status.DELETING:
        raise self.retry(countdown=2, max_retries=None)
    return notebook.status if notebook else None


@shared_task(acks_late=True)
def reconcile_notebooks() -> dict[str, int]:
    return services.reconcile_notebooks()



@shared_task(acks_late=True)
def rotate_notebook_tokens(instance_id: int, reason: str = "") -> int:
    """Sent by name from instances when someone loses access to an instance."""
    return services.rotate_notebook_tokens(instance_id=instance_id, reason=reason)
