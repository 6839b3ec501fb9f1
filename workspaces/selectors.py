from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, IntegerField, Max, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce

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


def with_usage(workspaces: QuerySet[Workspace]) -> QuerySet[Workspace]:
    """Workspaces annotated with what the admin list shows, in one query whatever the rows:
    the owner's most generous group quota (group_gpus, group_instances), GPUs and instances
    held (as the quota check counts them), and the last audited activity."""
    from instances.models import Instance

    from .models import AuditEvent

    def best(field: str) -> Subquery:
        return Subquery(
            GroupPolicy.objects.filter(group__user=OuterRef("owner_id"))
            .order_by().values("group__user").annotate(best=Max(field)).values("best")[:1],
            output_field=IntegerField(),
        )

    # What the quota check counts (Instance.HOLDS_QUOTA): a failed instance holds nothing.
    held = (Instance.objects.filter(workspace=OuterRef("pk"), status__in=Instance.HOLDS_QUOTA)
            .order_by().values("workspace"))
    return workspaces.annotate(
        group_gpus=best("default_max_gpus"),
        group_instances=best("default_max_instances"),
        gpus_used=Coalesce(Subquery(held.annotate(n=Sum("gpus")).values("n")[:1],
                                    output_field=IntegerField()), Value(0)),
        instances_used=Coalesce(Subquery(held.annotate(n=Count("id")).values("n")[:1],
                                         output_field=IntegerField()), Value(0)),
        last_activity=Subquery(
            AuditEvent.objects.filter(workspace=OuterRef("pk")).order_by("-created_at")
            .values("created_at")[:1]
        ),
    )


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
