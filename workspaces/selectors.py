from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Max

from .models import GroupPolicy, Role, Workspace


@dataclass(frozen=True)
class Quota:
    max_gpus: int
    max_instances: int
    # Where each figure comes from: "workspace", "group" or "default".
    gpus_source: str = "default"
    instances_source: str = "default"

    @property
    def source(self) -> str:
        """Where the quota comes from, in the admin's words."""
        if self.gpus_source == self.instances_source:
            return self.gpus_source
        return f"GPUs: {self.gpus_source}, instances: {self.instances_source}"


def _resolve(own: int | None, group: int | None, default: int) -> tuple[int, str]:
    if own is not None:
        return own, "workspace"
    if group is not None:
        return group, "group"
    return default, "default"


def resolve_quota(
    *, own_gpus: int | None, own_instances: int | None, group_gpus: int | None,
    group_instances: int | None,
) -> Quota:
    """The workspace's own figure where the administrator set one, else the most generous of
    its owner's groups, else the portal default."""
    gpus, gpus_source = _resolve(own_gpus, group_gpus, settings.DEFAULT_MAX_GPUS)
    instances, instances_source = _resolve(
        own_instances, group_instances, settings.DEFAULT_MAX_INSTANCES)
    return Quota(max_gpus=gpus, max_instances=instances, gpus_source=gpus_source,
                 instances_source=instances_source)


def effective_quota(*, workspace: Workspace) -> Quota:
    """The quota a launch is checked against (see `resolve_quota`). Read at request time, so
    a changed group membership shows on the next request."""
    best = {"gpus": None, "instances": None}
    if workspace.max_gpus is None or workspace.max_instances is None:
        best = GroupPolicy.objects.filter(group__user=workspace.owner_id).aggregate(
            gpus=Max("default_max_gpus"), instances=Max("default_max_instances"))
    return resolve_quota(own_gpus=workspace.max_gpus, own_instances=workspace.max_instances,
                         group_gpus=best["gpus"], group_instances=best["instances"])


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


def workspace_ids() -> set[str]:
    """Every workspace's id, as the local backend names its OS users (a string)."""
    return {str(pk) for pk in Workspace.objects.values_list("pk", flat=True)}
