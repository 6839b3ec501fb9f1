"""The one delete, retry, stop and start path of the pages, for every kind of deployment
(instances, notebooks, the catalogue's services). The kind's views find the row (or 404) and
name its verb; the verb is its service, called as `verb(<KIND>=row, by=…, ip_address=…)`."""

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from workspaces.services import client_ip

from .models import Deployment

Verb = Callable[..., Any]


def call(verb: Verb, request: HttpRequest, row: Deployment) -> Any:
    """The kind's service for this row, as the signed-in user from their address."""
    return verb(**{row.KIND: row}, by=request.user, ip_address=client_ip(request))


def delete(request: HttpRequest, row: Deployment, verb: Verb) -> HttpResponse:
    """GET: the confirmation page (`<app>/delete.html`). POST: delete, unless it is already
    going (confirmed in a tab opened before someone else deleted it), then the list."""
    if request.method != "POST":
        return render(request, f"{row.URLS}/delete.html", {row.KIND: row, "row": row})
    if row.already_gone:
        messages.info(request, row.already_gone)
    else:
        call(verb, request, row)
        messages.success(request, f"You asked to delete {row.name}.")
    return redirect(row.list_url)


def act(request: HttpRequest, row: Deployment, verb: Verb, action: str) -> HttpResponse:
    """Retry, stop or start: the verb's refusal (it no longer fits the quota, its instance
    is gone…) shows as a message on the row's page, as does a row no longer in a state for
    it (the verb answered False: someone else got there first)."""
    try:
        if call(verb, request, row):
            messages.success(request, f"You asked to {action} {row.name}.")
        else:
            row.refresh_from_db()
            messages.info(request, f"{row.name} is {row.status_label.lower()}; there is "
                          f"nothing to {action}.")
    except ValidationError as exc:
        messages.error(request, f"Cannot {action} {row.name}: {' '.join(exc.messages)}")
    return redirect(row)


def retry(request: HttpRequest, row: Deployment, verb: Verb) -> HttpResponse:
    """Send a failed row back on its way under its name."""
    if row.not_retriable:
        messages.info(request, row.not_retriable)
        return redirect(row)
    return act(request, row, verb, "retry")
