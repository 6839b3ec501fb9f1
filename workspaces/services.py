from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models
from django.http import HttpRequest

from .models import AuditEvent, Workspace


def ensure_workspace(*, user: AbstractBaseUser) -> Workspace:
    """Every user gets one private workspace, created on first use with the default quota."""
    workspace, _ = Workspace.objects.get_or_create(owner=user)
    return workspace


def record_audit(
    *,
    action: str,
    obj: models.Model,
    actor: AbstractBaseUser | None = None,
    workspace: Workspace | None = None,
    ip_address: str | None = None,
    **data: Any,
) -> AuditEvent:
    return AuditEvent.objects.create(
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        actor=actor,
        workspace=workspace,
        ip_address=ip_address,
        data=data,
    )


def client_ip(request: HttpRequest) -> str | None:
    """The address an audit row records: the client's, not the proxy's, behind a TLS proxy."""
    if settings.SECURE_PROXY_SSL_HEADER:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.META.get("REMOTE_ADDR") or None
