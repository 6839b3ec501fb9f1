import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import DatabaseError, models, transaction
from django.http import HttpRequest

from gpupaas.metrics import AUDIT_WRITE_FAILURES

from .models import AuditAction, AuditEvent, GroupPolicy, GuestAccount, Role, Workspace

log = logging.getLogger(__name__)


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
    action: AuditAction,
    obj: models.Model,
    actor: AbstractBaseUser | None = None,
    workspace: Workspace | None = None,
    ip_address: str | None = None,
    **data: Any,
) -> AuditEvent | None:
    """One row of the audit trail. Writing it never fails the action it records (in its own
    savepoint, so the caller's transaction goes on), and a row that cannot be written is
    never lost in silence: logged at error level with everything it said, and counted
    (`gpupaas_audit_write_failures_total`)."""
    fields = {
        "action": action, "object_type": obj._meta.label_lower, "object_id": str(obj.pk),
        "object_repr": str(obj)[:200], "actor": actor, "workspace": workspace,
        "ip_address": ip_address_or_none(ip_address), "data": data,
    }
    try:
        with transaction.atomic():
            return AuditEvent.objects.create(**fields)
    except (DatabaseError, TypeError, ValueError) as exc:
        audit_write_failed("audit", fields, exc)
        return None


def audit_write_failed(trail: str, fields: dict[str, Any], exc: Exception) -> None:
    AUDIT_WRITE_FAILURES.labels(trail).inc()
    log.error("audit row not written (%s): %r: %s", trail, exc,
              {k: getattr(v, "pk", v) for k, v in fields.items()})


def ip_address_or_none(text: str | None) -> str | None:
    """`text` as an IP address in its standard form; None when it is not one."""
    try:
        return str(ipaddress.ip_address((text or "").strip()))
    except ValueError:
        return None


def client_address(peer: str | None, forwarded: str = "") -> str | None:
    """The client's address, for pages, the API, the Kubernetes proxy and the shell alike.

    With TRUSTED_PROXY_COUNT proxies in front (BEHIND_TLS_PROXY sets one), the entry the
    outermost trusted proxy wrote: that many from the right of X-Forwarded-For. Entries left
    of it are whatever the client chose to send. Without proxies, or when that entry is
    missing or not an address, the connection's peer. Never anything but an address or
    None."""
    count = settings.TRUSTED_PROXY_COUNT
    hops = [hop.strip() for hop in forwarded.split(",")] if forwarded else []
    if count and len(hops) >= count:
        found = ip_address_or_none(hops[-count])
        if found:
            return found
    return ip_address_or_none(peer)


def client_ip(request: HttpRequest) -> str | None:
    """The address an audit row records for a page or an API call (see client_address)."""
    return client_address(request.META.get("REMOTE_ADDR"),
                          request.META.get("HTTP_X_FORWARDED_FOR", ""))


def changes(old: models.Model | None, new: models.Model, fields: Iterable[str], *,
            secret: Iterable[str] = ()) -> dict[str, Any]:
    """What an administrator's save changed, for its audit row: {field: [before, after]},
    only the names of `secret` fields (their values never go into the trail)."""
    found: dict[str, Any] = {}
    for name in fields:
        try:
            field = new._meta.get_field(name)
        except FieldDoesNotExist:
            continue  # a form's own field (a pasted kubeconfig): its model field says it
        if field.many_to_many:
            continue  # saved after the object: the form's groups are audited by their view
        name = field.attname
        before = getattr(old, name, None) if old is not None else None
        after = getattr(new, name, None)
        if before != after or old is None:
            found[name] = "changed" if name in set(secret) else [
                _plain(before), _plain(after)]
    return found


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def set_quota(*, workspace: Workspace, by: AbstractBaseUser | None,
              ip_address: str | None = None) -> dict[str, Any]:
    """Save a workspace's own quota and GPU-hour budget (as the admin form set them) and
    audit the change: what it was and what it is. Returns the changes ({} when nothing changed)."""
    with transaction.atomic():
        old = Workspace.objects.select_for_update().get(pk=workspace.pk)
        changed = changes(old, workspace, ["max_gpus", "max_instances", "monthly_gpu_hours"])
        workspace.save()
        if changed:
            record_audit(action=AuditAction.WORKSPACE_QUOTA_CHANGED, obj=workspace, actor=by,
                         workspace=workspace, ip_address=ip_address, changes=changed)
    return changed


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
            record_audit(action=AuditAction.USER_GROUPS_SYNCED, obj=user, actor=user,
                         added=sorted(added), removed=sorted(removed))
    return added, removed


def guest_refusal(email: str) -> str:
    """Why `email` may not get a guest account, or '' when it may."""
    if not settings.GUEST_ACCOUNTS_ENABLED:
        return "Guest accounts are turned off in this portal."
    domain = email.rsplit("@", 1)[-1].lower()
    if settings.GUEST_EMAIL_DOMAINS and domain not in settings.GUEST_EMAIL_DOMAINS:
        return f"Guest accounts are not available for {domain} addresses."
    return ""


def create_guest_account(*, email: str, password: str,
                         ip_address: str | None = None) -> AbstractBaseUser:
    """A password account for someone outside the identity provider, whose address an
    invitation link proved. No group, no role, no workspace: it sees only what is shared."""
    email = email.lower()
    refusal = guest_refusal(email)
    if refusal:
        raise ValidationError(refusal)
    users = get_user_model()
    if (users.objects.filter(email__iexact=email).exists()
            or users.objects.filter(username__iexact=email[:150]).exists()):
        raise ValidationError(f"An account for {email} exists already: sign in with it.")
    user = users(username=email[:150], email=email)
    password_validation.validate_password(password, user)
    with transaction.atomic():
        user.set_password(password)
        user.save()
        GuestAccount.objects.create(user=user, email=email)
        record_audit(action=AuditAction.USER_GUEST_CREATED, obj=user, actor=user,
                     ip_address=ip_address, email=email)
    return user
