import ipaddress
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.http import HttpRequest

from .models import AuditEvent, GroupPolicy, Role, Workspace


def ensure_workspace(*, user: AbstractBaseUser) -> Workspace:
    """Every user gets one private workspace, created on first use with the default quota."""
    workspace, _ = Workspace.objects.get_or_create(owner=user)
    return workspace


def lock_workspace(*, workspace_id: int | None) -> Workspace | None:
    """Take the workspace row lock: the first lock of every transaction that changes the
    workspace's instances or notebooks. One order everywhere (the workspace row, then an
    instance or notebook) is what keeps PostgreSQL from deadlocking; audit rows take a key
    share lock on the workspace, so a transition that took its row first would wait on a
    user's delete holding the workspace while the delete waits on that row."""
    return Workspace.objects.select_for_update().filter(pk=workspace_id).first()


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
    """The address an audit row records: the client's, not the proxy's, behind a TLS proxy.

    The one the outermost trusted proxy saw (as for the login rate limits): entries left of
    it in X-Forwarded-For are whatever the client chose to send."""
    forwarded = [ip.strip() for ip in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    count = settings.TRUSTED_PROXY_COUNT
    if count and len(forwarded) >= count:
        try:
            return str(ipaddress.ip_address(forwarded[-count]))
        except ValueError:
            pass  # a proxy that does not write addresses: fall back to the peer
    return request.META.get("REMOTE_ADDR") or None


def sync_groups_from_claims(*, user: AbstractBaseUser, claims: dict[str, Any],
                            claim_name: str) -> tuple[set[str], set[str]]:
    """Make the user's IdP-managed groups match the groups claim; return (added, removed).

    Only groups with an IdP mapping are touched; groups the administrator manages by hand
    stay as they are. The administrator role follows too: staff and superuser flags are set
    or cleared for users who sign in through the IdP. Running instances are never touched.
    """
    claimed = claims.get(claim_name) or []
    if isinstance(claimed, str):
        claimed = [claimed]
    with transaction.atomic():
        managed = Group.objects.filter(idp_mappings__isnull=False).distinct()
        wanted = set(managed.filter(idp_mappings__claim_value__in=claimed))
        current = set(user.groups.filter(pk__in=managed.values("pk")))
        user.groups.add(*(wanted - current))
        user.groups.remove(*(current - wanted))
        is_admin = GroupPolicy.objects.filter(group__user=user, role=Role.ADMIN).exists()
        if (user.is_staff, user.is_superuser) != (is_admin, is_admin):
            user.is_staff = user.is_superuser = is_admin
            user.save(update_fields=["is_staff", "is_superuser"])
        added = {g.name for g in wanted - current}
        removed = {g.name for g in current - wanted}
        if added or removed:
            record_audit(action="user.groups_synced", obj=user, actor=user,
                         added=sorted(added), removed=sorted(removed))
    return added, removed
