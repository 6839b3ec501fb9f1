"""The one bearer-token kernel: how the portal's tokens are made, stored and checked.

API tokens (`api.ApiToken`), kubeconfig and shell tokens (`access.AccessToken`) and
invitation links (`instances.collaborators`) all keep only a SHA-256 digest of their secret,
never the secret. The two stored kinds share one abstract model and one check, in one order:
the digest is looked up, then revocation, then expiry. What each token binds to (an
instance, a scope) and whether its user may still use it are decided by its own app after
this check, in that app's words."""

import hashlib
import secrets
from typing import TypeVar

from django.db import models
from django.utils import timezone


def hash_token(token: str) -> str:
    """Tokens are stored only as this digest: a database leak reveals no usable credential.
    A plain SHA-256 suffices, as tokens are 256 random bits, not passwords."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str, str]:
    """(plain token, its digest, the prefix shown to tell tokens apart). `prefix` makes the
    token recognisable in logs and to secret scanners (gpa_, gpk_)."""
    plain = prefix + secrets.token_urlsafe(32)
    return plain, hash_token(plain), plain[:len(prefix) + 6]


class BearerToken(models.Model):
    """A token's stored half: its digest, a prefix to tell it apart, when it ends, when it
    was last used, and whether and why it was revoked."""

    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters, so a user can tell tokens apart; useless as a credential.
    prefix = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=200, blank=True)

    # The refusal for an expired token, in its own app's words.
    EXPIRED = "The token has expired."

    class Meta:
        abstract = True
        ordering = ["-created_at", "-id"]

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.expires_at > timezone.now() else "expired"


Token = TypeVar("Token", bound=BearerToken)


def check_token(model: type[Token], plain: str) -> tuple[Token | None, str]:
    """(the token `plain` stands for, '') while it is live; else (the row or None, why
    not). The order is the same for every kind: unknown, revoked, expired."""
    row = (model.objects.select_related("user").filter(token_hash=hash_token(plain)).first()
           if plain else None)
    if row is None:
        return None, "The token is not valid."
    if row.revoked_at is not None:
        return row, f"The token was revoked ({row.revoked_reason})."
    if row.expires_at <= timezone.now():
        return row, model.EXPIRED
    return row, ""


def touch_due(row: BearerToken, every_s: float) -> bool:
    """Whether to record a use now: at most one write every `every_s` per token."""
    return row.last_used_at is None or (
        timezone.now() - row.last_used_at).total_seconds() >= every_s
