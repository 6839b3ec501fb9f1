from dataclasses import dataclass

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum

from workspaces.models import Workspace
from workspaces.selectors import effective_quota

from .models import Collaborator, ComputeProfile, Instance


def launchable_profiles(*, user: AbstractBaseUser) -> QuerySet[ComputeProfile]:
    """Published profiles open to everyone or to one of the user's groups. Read at request
    time, never cached: publishing or a changed membership shows on the next request."""
    visible = Q(groups__isnull=True) | Q(groups__in=user.groups.all())
    ids = ComputeProfile.objects.filter(visible, published=True).values("id")
    return ComputeProfile.objects.filter(id__in=ids).select_related("cluster")


def live_instances(*, owner: AbstractBaseUser) -> QuerySet[Instance]:
    """The owner's instances that are not deleted yet (deleted ones are history), as lists
    show them. Filtered by owner through the join, so a list needs no workspace query first."""
    return (
        Instance.objects.filter(workspace__owner=owner)
        .exclude(status=Instance.Status.DELETED)
        .select_related("profile")
        .only("id", "name", "status", "created_at", "profile__display_name")
    )


def _shared_with(user: AbstractBaseUser) -> Exists:
    return Exists(Collaborator.objects.filter(
        instance=OuterRef("pk"), user=user, status=Collaborator.Status.ACCEPTED))


def accessible_instances(*, user: AbstractBaseUser) -> QuerySet[Instance]:
    """Instances the user owns or collaborates on: the same access either way."""
    if not user.is_authenticated or not user.is_active:
        return Instance.objects.none()
    return Instance.objects.filter(Q(workspace__owner=user) | _shared_with(user))


def instance_for_user(*, user: AbstractBaseUser, pk: int) -> Instance | None:
    """The one access decision for an instance (its pages, notebooks, remote access): the
    instance when the user owns it or is an accepted collaborator, else None. Read on every
    call, so a removed collaborator is refused by the very next request."""
    return (
        accessible_instances(user=user)
        .select_related("profile", "cluster", "launched_by", "workspace__owner")
        .filter(pk=pk).first()
    )


def shared_instances(*, user: AbstractBaseUser) -> QuerySet[Instance]:
    """Live instances others shared with the user, with their owners, as lists show them."""
    return (
        Instance.objects.filter(_shared_with(user))
        .exclude(status=Instance.Status.DELETED)
        .select_related("profile", "workspace__owner")
        .only("id", "name", "status", "created_at", "profile__display_name",
              "workspace__owner__username", "workspace__owner__first_name",
              "workspace__owner__last_name", "workspace__owner__email")
    )


def has_shared_instances(*, user: AbstractBaseUser) -> bool:
    return shared_instances(user=user).exists()


def collaborators_of(*, instance: Instance) -> list[Collaborator]:
    """Pending invitations and collaborators, oldest first, with who they are."""
    return list(
        Collaborator.objects.filter(instance=instance, status__in=Collaborator.LIVE_STATES)
        .select_related("user__guest_account", "invited_by")
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
