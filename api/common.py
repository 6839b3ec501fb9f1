"""What every endpoint shares: the access decision, forms as the pages use them, paging."""

import math
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse

from instances.deployment_pages import Verb, call
from instances.models import Deployment, Instance
from instances.selectors import instance_for_user
from workspaces.models import Workspace
from workspaces.services import ensure_workspace

from .problems import ApiError, NotFound, Problem

# The largest id PostgreSQL's bigint holds: anything above is no object of ours.
MAX_ID = 2**63 - 1
SHARED_ONLY = ("Your account has no role in the portal, only instances others shared with "
               "you: it has no workspace, quota or sizes of its own. Ask your administrator "
               "for access to launch your own.")


def problems(*codes: int) -> dict[int, type[Problem]]:
    """The error responses an operation documents; every one may answer 401, 403 and 429."""
    return {code: Problem for code in sorted({401, 403, 429, *codes})}


def instance_or_404(request: HttpRequest, pk: int) -> Instance:
    """The instance when the caller owns it or collaborates on it, else 404: the one access
    decision the pages and the Kubernetes proxy use (instances.selectors.instance_for_user)."""
    instance = instance_for_user(user=request.user, pk=pk)
    if instance is None:
        raise NotFound("No such instance.")
    return instance


def delete_row(request: HttpRequest, row: Deployment, verb: Verb) -> None:
    """The one delete path of the API (the pages' is instances.deployment_pages): 409 when
    it is already going."""
    if row.already_gone:
        raise ApiError(409, row.already_gone)
    call(verb, request, row)


def retry_row(request: HttpRequest, row: Deployment, verb: Verb) -> None:
    """The one retry path of the API: 409 unless it failed; the service's refusal is a 422."""
    if row.not_retriable:
        raise ApiError(409, row.not_retriable)
    call(verb, request, row)


def act_row(request: HttpRequest, row: Deployment, verb: Verb, action: str) -> None:
    """Stop or start: the service's refusal is a 422; a row not in a state for it, a 409."""
    if not call(verb, request, row):
        row.refresh_from_db()
        raise ApiError(409, f"{row.name} is {row.status_label.lower()}; there is nothing to "
                       f"{action}.")


def deploy_data(payload: Any, instance: Instance) -> dict[str, Any]:
    """A deploy request (notebook or service) as the Deploy pages' form takes it."""
    return {"name": payload.name, "description": payload.description,
            "profile": choice(payload.profile), "instance": instance.pk,
            "cpu": "" if payload.cpu is None else payload.cpu,
            "memory_gib": "" if payload.memory_gib is None else payload.memory_gib,
            "gpus": "" if payload.gpus is None else payload.gpus}


def own_workspace(request: HttpRequest) -> Workspace:
    """The caller's workspace; someone with only shared instances has none (as on the pages,
    where the launch wizard shows the no-access page)."""
    if getattr(request, "shared_only", False):
        raise ApiError(403, SHARED_ONLY)
    return ensure_workspace(user=request.user)


def choice(value: str) -> str:
    """A name to look up in a form's choice field. PostgreSQL text cannot hold NUL, so such a
    value is replaced by one that matches nothing: the form then says the choice is not
    available, as it would for any other unknown name."""
    return "\N{REPLACEMENT CHARACTER}" if "\x00" in value else value


def valid(form: forms.Form) -> dict:
    """The form's cleaned data, or its errors (the pages' messages) as a 422."""
    if not form.is_valid():
        raise ValidationError(form.errors.as_data())
    return form.cleaned_data


def page_of(queryset: QuerySet, page: int, page_size: int) -> tuple[list, dict]:
    """One page of `queryset`: two queries (count and rows), whatever the rows."""
    count = queryset.count()
    pages = max(1, math.ceil(count / page_size))
    offset = (page - 1) * page_size
    items = list(queryset[offset:offset + page_size]) if offset < count else []
    return items, {"count": count, "page": page, "page_size": page_size, "pages": pages}


def absolute(request: HttpRequest, name: str, pk: int) -> str:
    return request.build_absolute_uri(reverse(name, args=[pk]))
