from dataclasses import dataclass

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, Q, QuerySet, Sum

from workspaces.models import Workspace
from workspaces.selectors import effective_quota

from .models import ComputeProfile, Instance


def launchable_profiles(*, user: AbstractBaseUser) -> QuerySet[ComputeProfile]:
    """Published profiles open to everyone or to one of the user's groups. Read at request
    time, never cached: publishing or a changed membership shows on the next request."""
    visible = Q(groups__isnull=True) | Q(groups__in=user.groups.all())
    ids = ComputeProfile.objects.filter(visible, published=True).values("id")
    return ComputeProfile.objects.filter(id__in=ids).select_related("cluster")


def instance_for_user(*, user: AbstractBaseUser, pk: int) -> Instance | None:
    """The instance `pk` if `user` may use it (the owner), else None. Deleted ones are still
    returned (their page is history); callers that act on the instance check its status.

    The one access decision: the pages and the Kubernetes proxy (on every request) ask here.
    """
    if not user.is_authenticated or not user.is_active:
        return None
    return (
        Instance.objects.select_related("profile", "cluster", "launched_by", "workspace__owner")
        .filter(pk=pk, workspace__owner=user)
        .first()
    )


def live_instances(*, owner: AbstractBaseUser) -> QuerySet[Instance]:
    """The owner's instances that are not deleted yet (deleted ones are history), as lists
    show them. Filtered by owner through the join, so a list needs no workspace query first."""
    return (
        Instance.objects.filter(workspace__owner=owner)
        .exclude(status=Instance.Status.DELETED)
        .select_related("profile")
        .only("id", "name", "status", "created_at", "profile__display_name")
    )


@dataclass(frozen=True)
class QuotaUsage:
    max_gpus: int
    max_instances: int
    gpus_used: int
    instances_used: int

    @property
    def gpus_left(self) -> int:
        return max(self.max_gpus - self.gpus_used, 0)

    @property
    def instances_left(self) -> int:
        return max(self.max_instances - self.instances_used, 0)

    @property
    def gpu_percent(self) -> int:
        return min(100, round(100 * self.gpus_used / self.max_gpus)) if self.max_gpus else 100

    def refusal(self, gpus: int) -> str:
        """Why a size with `gpus` GPUs does not fit now, or '' when it does."""
        if self.instances_left < 1:
            return f"All {self.max_instances} instances of your quota are in use."
        if gpus > self.gpus_left:
            return f"Needs {gpus} GPUs; {self.gpus_left} of {self.max_gpus} left."
        return ""


def quota_usage(*, workspace: Workspace) -> QuotaUsage:
    """What the workspace holds against its quota: everything not deleted counts."""
    totals = Instance.objects.filter(workspace=workspace).aggregate(
        gpus=Sum("gpus", filter=~Q(status=Instance.Status.DELETED), default=0),
        count=Count("id", filter=~Q(status=Instance.Status.DELETED)),
    )
    quota = effective_quota(workspace=workspace)
    return QuotaUsage(
        max_gpus=quota.max_gpus,
        max_instances=quota.max_instances,
        gpus_used=totals["gpus"],
        instances_used=totals["count"],
    )


def status_counts(*, workspace: Workspace) -> dict[str, int]:
    rows = (
        Instance.objects.filter(workspace=workspace)
        .exclude(status=Instance.Status.DELETED)
        .values("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {row["status"]: row["n"] for row in rows}
