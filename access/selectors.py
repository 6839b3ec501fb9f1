from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from instances.models import Instance

from .models import AccessToken, ProxyRequest


def tokens_of(*, user: AbstractBaseUser, instance: Instance) -> QuerySet[AccessToken]:
    """The user's own tokens on the instance, newest first; each user sees only theirs."""
    return AccessToken.objects.filter(user=user, instance=instance)


def recent_proxy_requests(*, instance: Instance, limit: int = 20) -> list[ProxyRequest]:
    return list(
        ProxyRequest.objects.filter(instance=instance).select_related("user")
        .order_by("-created_at", "-id")[:limit]
    )
