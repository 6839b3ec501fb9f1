from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Max

from .models import GroupPolicy, Role, Workspace


@dataclass(frozen=True)
class Quota:
    max_gpus: int
    max_instances: int


def effective_quota(*, workspace: Workspace) -> Quota:
    """The workspace's own quota where the administrator set one, else the most generous of
    its owner's groups, else the portal default. Read at request time, so a changed group
    membership shows on the next request."""
    gpus, instances = workspace.max_gpus, workspace.max_instances
    if gpus is None or instances is None:
        best = GroupPolicy.objects.filter(group__user=workspace.owner_id).aggregate(
            gpus=Max("default_max_gpus"), instances=Max("default_max_instances"))
        if gpus is None:
            gpus = best["gpus"] if best["gpus"] is not None else settings.DEFAULT_MAX_GPUS
        if instances is None:
            instances = (best["instances"] if best["instances"] is not None
                         else settings.DEFAULT_MAX_INSTANCES)
    return Quota(max_gpus=gpus, max_instances=instances)


def role_of(user: AbstractBaseUser) -> str:
    """`admin`, `end-user` or '' (no access yet). Superusers are always administrators."""
    if not user.is_authenticated:
        return ""
    if user.is_superuser:
        return Role.ADMIN
    roles = set(GroupPolicy.objects.filter(group__user=user).exclude(role="")
                .values_list("role", flat=True))
    if Role.ADMIN in roles:
        return Role.ADMIN
    return Role.END_USER if Role.END_USER in roles else ""
