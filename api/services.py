"""The verbs of personal access tokens: creating, revoking, and deciding every API request
made with one. The only writers of ApiToken."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from instances.selectors import has_shared_instances
from workspaces.models import AuditAction, Workspace
from workspaces.selectors import role_of
from workspaces.services import record_audit
from workspaces.tokens import check_token, new_token, touch_due

from .models import ApiToken

TOKEN_PREFIX = "gpa_"  # recognisable in logs and by secret scanners (kubeconfigs: gpk_)
TOUCH_EVERY_S = 5  # last use is written at most this often per token, not on every request


class TokenRefused(Exception):
    """A bearer token the API does not accept; `message` says why (a 401)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _workspace_of(user: AbstractBaseUser) -> Workspace | None:
    return Workspace.objects.filter(owner=user).first()


def create_api_token(
    *, user: AbstractBaseUser, name: str, days: int, scope: str,
    ip_address: str | None = None,
) -> tuple[ApiToken, str]:
    """A new token; returns the row and the plain token, which is never stored and cannot
    be shown again. Refuses with a ValidationError naming the field."""
    name = (name or "").strip()
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "Give the token a name."
    elif len(name) > 100:
        errors["name"] = f"Use at most 100 characters ({len(name)} given)."
    elif ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True,
                                 expires_at__gt=timezone.now()).exists():
        errors["name"] = f"You already have an active token named {name}."
    maximum = settings.API_TOKEN_MAX_DAYS
    if not isinstance(days, int) or not 1 <= days <= maximum:
        errors["days"] = f"Choose between 1 and {maximum} days."
    if scope not in ApiToken.Scope.values:
        errors["scope"] = "Choose read only or read and write."
    if errors:
        raise ValidationError(errors)
    plain, digest, shown = new_token(TOKEN_PREFIX)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, scope=scope, token_hash=digest, prefix=shown,
            expires_at=timezone.now() + timedelta(days=days),
        )
        record_audit(action=AuditAction.API_TOKEN_CREATED, obj=token, actor=user,
                     workspace=_workspace_of(user), ip_address=ip_address, token=token.prefix,
                     scope=scope, expires_at=token.expires_at.isoformat())
    return token, plain


def revoke_api_token(
    *, token: ApiToken, by: AbstractBaseUser | None, reason: str = "",
    ip_address: str | None = None,
) -> bool:
    """Revoke one token: refused (401) from the next request on."""
    reason = reason or (f"revoked by {by.get_username()}" if by is not None else "revoked")
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_reason=reason[:200])
        if revoked:
            record_audit(action=AuditAction.API_TOKEN_REVOKED, obj=token, actor=by,
                         workspace=_workspace_of(token.user), ip_address=ip_address,
                         token=token.prefix, reason=reason)
    return bool(revoked)


@dataclass(frozen=True)
class PortalAccess:
    role: str  # "admin", "end-user" or "" (no role)
    refusal: str  # why the user may not use the portal now; "" when they may

    @property
    def shared_only(self) -> bool:
        """No role, but instances shared with them: they see just those (as on the pages)."""
        return not self.role and not self.refusal


def portal_access(user: AbstractBaseUser) -> PortalAccess:
    """The question the pages ask on every request (portal.middleware): a role, or instances
    shared with the user. Refusals are in the words the kubeconfig tokens' revocations use
    (access.services.lost_access)."""
    if not user.is_active:
        return PortalAccess("", "user deactivated")
    role = role_of(user)
    if role or has_shared_instances(user=user):
        return PortalAccess(role, "")
    return PortalAccess("", "role removed")


def authenticate_api_token(
    *, plain: str, ip_address: str | None = None
) -> tuple[ApiToken, PortalAccess]:
    """The live token `plain` stands for, with its user and what they may do; TokenRefused
    in plain words otherwise. A token whose user lost access is revoked on the spot."""
    row, refusal = check_token(ApiToken, plain)
    if refusal:
        raise TokenRefused(refusal)
    access = portal_access(row.user)
    if access.refusal:
        revoke_api_token(token=row, by=None, reason=access.refusal)
        raise TokenRefused(f"The token was revoked ({access.refusal}).")
    if touch_due(row, TOUCH_EVERY_S) or row.last_used_ip != ip_address:
        now = timezone.now()
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now, last_used_ip=ip_address)
        row.last_used_at, row.last_used_ip = now, ip_address
    return row, access


def revoke_lost_api_tokens() -> int:
    """Periodic sweep: revoke live tokens whose user lost access to the portal (deactivated,
    role removed). Requests already refuse them; this makes the token list say so."""
    live = ApiToken.objects.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())
    users = get_user_model().objects.in_bulk(set(live.values_list("user_id", flat=True)))
    revoked = 0
    for user in users.values():
        reason = portal_access(user).refusal
        if reason:
            for token in live.filter(user=user).select_related("user"):
                revoked += revoke_api_token(token=token, by=None, reason=reason)
    return revoked
