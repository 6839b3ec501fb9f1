"""The one deployment lifecycle: what an instance, a notebook and (next) a catalogue service
share. A status machine on the row (`instances.models.Deployment`), moved only by
conditional UPDATEs that take the workspace's lock first and leave an audit row
(`transition`), progress notes within a status (`note`), and the polling lease that lets
the reconcile pass re-drive only rows no task chain watches (`hold_lease`,
`claim_unwatched`).

What differs per kind stays with the kind: its statuses, what "running" records, how its
workspace is found (`WORKSPACE`), and how a row is loaded with what its audit row needs."""

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models, transaction
from django.db.models import Q, QuerySet
from django.dispatch import Signal
from django.utils import timezone

from workspaces.models import AuditAction
from workspaces.services import lock_workspace, record_audit
from workspaces.usage import close_allocation, open_allocation

from .models import Deployment

Row = TypeVar("Row", bound=Deployment)

# Sent (sender: the model, row: the row as loaded, to: its new status) in the transaction
# that moved it, after its audit row: how what lives on an instance (notebooks, services,
# in an app above this one) follows it when it stops and starts.
transitioned = Signal()


def transition(
    model: type[Row], pk: int, *, from_: Iterable[str], to: str, message: str,
    detail: str = "", load: Callable[[int], Row], actor: AbstractBaseUser | None = None,
    ip_address: str | None = None, audit: dict[str, Any] | None = None, **fields: Any,
) -> Row | None:
    """Move the row to `to` only if it is still in one of `from_`; audit the change.

    A conditional UPDATE, so two workers (or a worker and a user) can never both win; the
    workspace's row is locked first, the one lock order of every write to a deployment.
    `load` reads the row back with what its audit row names; `audit` adds figures to that
    row. Reaching Running opens the row's usage record and leaving it closes it, at the
    same instant as the status change."""
    now = timezone.now()
    with transaction.atomic():
        lock_workspace(workspace_id=model.objects.values_list(model.WORKSPACE, flat=True)
                       .filter(pk=pk).first())
        updated = model.objects.filter(pk=pk, status__in=list(from_)).update(
            status=to, status_message=message[:500], status_detail=detail,
            status_changed_at=now, **fields,
        )
        if not updated:
            return None
        row = load(pk)
        if to == "running":
            open_allocation(row.allocation(), at=now)
        else:
            close_allocation(kind=model.KIND, object_id=pk, at=now)
        workspace = row
        for step in model.WORKSPACE.removesuffix("_id").split("__"):
            workspace = getattr(workspace, step)
        record_audit(action=AuditAction.status(model.KIND, to), obj=row, actor=actor,
                     workspace=workspace, ip_address=ip_address, message=message,
                     **(audit or {}))
        transitioned.send(sender=model, row=row, to=to)
    return row


def note(model: type[Deployment], pk: int, *, status: str, message: str,
         detail: str = "") -> None:
    """Progress within a status: a new message, no state change."""
    model.objects.filter(pk=pk, status=status).update(
        status_message=message[:500], status_detail=detail)


def hold_lease(*, model: type[models.Model], pk: int, seconds: float | None) -> None:
    """A task chain watching this row promises to look again within `seconds` (None: it
    stopped watching)."""
    until = None if seconds is None else timezone.now() + timezone.timedelta(seconds=seconds)
    model.objects.filter(pk=pk).update(poll_lease_until=until)


def claim_unwatched(queryset: QuerySet) -> list[int]:
    """The rows of `queryset` no live task chain watches, each claimed for the caller (one
    conditional UPDATE per row, so two reconcile passes never both claim one)."""
    now = timezone.now()
    free = Q(poll_lease_until__isnull=True) | Q(poll_lease_until__lt=now)
    until = now + timezone.timedelta(seconds=settings.POLL_LEASE_GRACE_S)
    return [pk for pk in queryset.filter(free).values_list("pk", flat=True)
            if queryset.model.objects.filter(free, pk=pk).update(poll_lease_until=until)]
