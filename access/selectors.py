from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from instances.models import Instance

from .models import SHELL_CLIENT, AccessToken, ProxyRequest


def tokens_of(*, user: AbstractBaseUser, instance: Instance) -> QuerySet[AccessToken]:
    """The user's own tokens on the instance, newest first; each user sees only theirs.
    A browser shell's session token is listed while its shell is open (revoking it closes
    the shell), not after."""
    return AccessToken.objects.filter(user=user, instance=instance).exclude(
        created_from__startswith=SHELL_CLIENT, revoked_at__isnull=False)


def recent_proxy_requests(*, instance: Instance, limit: int = 20) -> list[ProxyRequest]:
    return list(
        ProxyRequest.objects.filter(instance=instance).select_related("user")
        .order_by("-created_at", "-id")[:limit]
    )
