import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import (
    Count,
    Exists,
    IntegerField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest

from clusters.backends import get_backend
from clusters.backends.kubernetes.manifests import Reservation, reserved
from clusters.backends.local import machine_limits
from clusters.models import Cluster, GpuAllocation
from gpupaas.formats import cores, gpus_phrase
from workspaces.models import AuditEvent, GroupPolicy, Workspace
from workspaces.selectors import effective_quota

from .models import Collaborator, ComputeProfile, Instance, QuarantinedInstance


def launchable_profiles(*, user: AbstractBaseUser) -> QuerySet[ComputeProfile]:
    """Published profiles open to everyone or to one of the user's groups. Read at request
    time, never cached: publishing or a changed membership shows on the next request."""
    visible = Q(groups__isnull=True) | Q(groups__in=user.groups.all())
    ids = ComputeProfile.objects.filter(visible, published=True).values("id")
    # Each row says whom it was read for: a launch of a size read here for its user (the
    # wizard's and the API's choices) need not ask again (instances.services).
    return (ComputeProfile.objects.filter(id__in=ids).select_related("cluster")
            .annotate(launchable_by=Value(user.pk, output_field=IntegerField())))


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


def listable_instances(*, user: AbstractBaseUser, scope: str = "all") -> QuerySet[Instance]:
    """The instances a list shows the user: own ("own"), shared with them ("shared") or both,
    as `accessible_instances` decides, in a form the database answers from its indexes
    whatever the rows: own ones by workspace id, shared ones by id (a short list, read first).
    An OR over the owner join and a collaborator subquery would read every instance."""
    if not user.is_authenticated or not user.is_active:
        return Instance.objects.none()
    own = Q(workspace_id=Subquery(Workspace.objects.filter(owner=user).order_by().values("pk")[:1]))
    if scope == "own":
        return Instance.objects.filter(own)
    shared_ids = list(Collaborator.objects.filter(
        user=user, status=Collaborator.Status.ACCEPTED).values_list("instance_id", flat=True))
    if scope == "shared":
        return Instance.objects.filter(pk__in=shared_ids)
    return Instance.objects.filter(own | Q(pk__in=shared_ids))


def instance_for_user(*, user: AbstractBaseUser, pk: int) -> Instance | None:
    """The one access decision for an instance (its pages, notebooks, the Kubernetes proxy on
    every request): the instance when the user owns it or is an accepted collaborator, else
    None. Deleted ones are still returned (their page is history); callers that act on the
    instance check its status. Read on every call, so a removed collaborator is refused by
    the very next request."""
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
    def over_quota(self) -> str:
        """Words for a workspace holding more than its quota (an administrator lowered it);
        '' when it does not."""
        over = []
        if self.gpus_used > self.max_gpus:
            over.append(f"{gpus_phrase(self.gpus_used)} in use, over a quota of "
                        f"{self.max_gpus}")
        if self.instances_used > self.max_instances:
            over.append(f"{self.instances_used} instances, over a quota of "
                        f"{self.max_instances}")
        return "; ".join(over)

    @property
    def gpu_percent(self) -> int:
        return min(100, round(100 * self.gpus_used / self.max_gpus)) if self.max_gpus else 100

    def cost(self, gpus: int) -> str:
        """What launching a size with `gpus` GPUs takes from the quota, and what is left."""
        gpus_left = self.max_gpus - self.gpus_used - gpus
        instances_left = self.max_instances - self.instances_used - 1
        if gpus_left < 0 or instances_left < 0:
            return self.refusal(gpus)
        takes = f"{gpus} GPU{'' if gpus == 1 else 's'}" if gpus else "no GPU"
        return (
            f"Takes {takes} and 1 instance from your quota. Left after launch: "
            f"{gpus_left} of {self.max_gpus} GPUs and {instances_left} of "
            f"{self.max_instances} instances."
        )

    def refusal(self, gpus: int) -> str:
        """Why a size with `gpus` GPUs does not fit now, or '' when it does."""
        if self.instances_left < 1:
            return f"All {self.max_instances} instances of your quota are in use."
        if gpus > self.gpus_left:
            if not self.gpus_left:
                over = f" (over quota: {self.gpus_used} in use)" if self.over_quota else ""
                return (f"Needs {gpus_phrase(gpus)}; none of your {gpus_phrase(self.max_gpus)} "
                        f"is left{over}.")
            return (f"Needs {gpus_phrase(gpus)}; only {gpus_phrase(self.gpus_left)} of "
                    f"{self.max_gpus} left.")
        return ""


def quota_usage(*, workspace: Workspace) -> QuotaUsage:
    """What the workspace holds against its quota: failed and deleted instances hold none,
    stopped ones no GPU."""
    totals = Instance.objects.filter(workspace=workspace).aggregate(
        gpus=Sum("gpus", filter=Q(status__in=Instance.HOLDS_GPUS), default=0),
        count=Count("id", filter=Q(status__in=Instance.HOLDS_QUOTA)),
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


@dataclass(frozen=True)
class ClusterGpus:
    cluster: Cluster
    allocated: int
    total: int | None  # None: the cluster did not answer
    simulated: bool
    problem: str = ""

    @property
    def free(self) -> int | None:
        return None if self.total is None else max(self.total - self.allocated, 0)


@dataclass(frozen=True)
class Overview:
    clusters: list[ClusterGpus]
    by_status: list[tuple[str, int]]
    failed_recently: list[Instance]
    top_workspaces: list[Workspace]
    quarantined: list[QuarantinedInstance]

    @property
    def orphans_held(self) -> list[Cluster]:
        return [row.cluster for row in self.clusters if row.cluster.orphans_held]


HOLDING = [Instance.Status.PROVISIONING, Instance.Status.RUNNING, Instance.Status.DELETING]


def cluster_gpus(*, inventory_max_age_s: float = 0) -> list[ClusterGpus]:
    """GPUs per cluster, allocated and in total, in a fixed number of queries whatever the
    rows (plus one inventory question per cluster; an unreachable cluster says why instead
    of taking the caller down). With `inventory_max_age_s`, a cluster's inventory answered
    in this process that recently is reused (metrics scrapes must not question every API
    server every few seconds)."""
    # GPUs a cluster has given out: on the local cluster its slot rows, elsewhere what the
    # instances that hold resources there (provisioning, running, deleting) were sized at.
    slots = (GpuAllocation.objects.filter(cluster=OuterRef("pk")).order_by()
             .values("cluster").annotate(n=Count("id")).values("n")[:1])
    sized = (Instance.objects.filter(cluster=OuterRef("pk"), status__in=HOLDING).order_by()
             .values("cluster").annotate(n=Sum("gpus")).values("n")[:1])
    clusters = list(Cluster.objects.annotate(
        slots=Coalesce(Subquery(slots, output_field=IntegerField()), Value(0)),
        sized=Coalesce(Subquery(sized, output_field=IntegerField()), Value(0)),
    ))
    gpus = []
    for cluster in clusters:
        allocated = cluster.slots if cluster.backend == Cluster.Backend.LOCAL else cluster.sized
        cached = _inventories.get(cluster.pk)
        if inventory_max_age_s and cached and time.monotonic() - cached[0] < inventory_max_age_s:
            total, simulated, problem = cached[1:]
        else:
            try:
                inventory = get_backend(cluster).inventory()
            except Exception as exc:  # an unreachable cluster must not take the page down
                total, simulated, problem = None, False, str(exc)[:200]
            else:
                total, simulated, problem = inventory.total, inventory.simulated, ""
            _inventories[cluster.pk] = (time.monotonic(), total, simulated, problem)
        gpus.append(ClusterGpus(cluster, allocated, total, simulated, problem))
    return gpus


_inventories: dict[int, tuple[float, int | None, bool, str]] = {}


def admin_overview(*, failed_since: datetime, top: int = 10, failed_limit: int = 50) -> Overview:
    """What the administrators' overview shows, in a fixed number of queries whatever the
    rows: GPUs per cluster, instances by status, recent failures, top workspaces."""
    gpus = cluster_gpus()
    held = ~Q(instances__status=Instance.Status.DELETED)
    counts = dict(Instance.objects.values_list("status").annotate(n=Count("id")).order_by())
    by_status = [(label, counts.get(value, 0)) for value, label in Instance.Status.choices]
    failed = list(
        Instance.objects.filter(status=Instance.Status.FAILED, status_changed_at__gte=failed_since)
        .select_related("workspace__owner", "cluster").order_by("-status_changed_at")
        [:failed_limit]
    )
    top_workspaces = list(
        Workspace.objects.annotate(
            gpus_used=Sum("instances__gpus", filter=held, default=0),
            instances_used=Count("instances", filter=held),
        ).filter(gpus_used__gt=0).select_related("owner").order_by("-gpus_used", "owner__username")
        [:top]
    )
    quarantined = list(QuarantinedInstance.objects.filter(outcome="").select_related("cluster")
                       [:failed_limit])
    return Overview(gpus, by_status, failed, top_workspaces, quarantined)


def reserved_by_cluster(*, instance: Instance) -> Reservation:
    """What a virtual cluster's own control plane takes of its instance (its requests count
    against the instance's quota like any pod's); nothing for other kinds."""
    if not instance.has_kubernetes_api:
        return Reservation()
    return reserved(instance.kind)


def with_usage(workspaces: QuerySet[Workspace]) -> QuerySet[Workspace]:
    """Workspaces annotated with what the admin list shows, in one query whatever the rows:
    the owner's most generous group quota (group_gpus, group_instances), GPUs and instances
    held (as the quota check counts them), and the last audited activity."""
    def best(field: str) -> Subquery:
        return Subquery(
            GroupPolicy.objects.filter(group__user=OuterRef("owner_id"))
            .order_by().values("group__user").annotate(best=Max(field)).values("best")[:1],
            output_field=IntegerField(),
        )

    # What the quota check counts (Instance.HOLDS_QUOTA, HOLDS_GPUS): a failed instance
    # holds nothing, a stopped one no GPU.
    def held(statuses: frozenset[str]) -> QuerySet[Instance]:
        return (Instance.objects.filter(workspace=OuterRef("pk"), status__in=statuses)
                .order_by().values("workspace"))

    return workspaces.annotate(
        group_gpus=best("default_max_gpus"),
        group_instances=best("default_max_instances"),
        gpus_used=Coalesce(Subquery(held(Instance.HOLDS_GPUS).annotate(n=Sum("gpus"))
                                    .values("n")[:1], output_field=IntegerField()), Value(0)),
        instances_used=Coalesce(Subquery(held(Instance.HOLDS_QUOTA).annotate(n=Count("id"))
                                         .values("n")[:1],
                                         output_field=IntegerField()), Value(0)),
        last_activity=Subquery(
            AuditEvent.objects.filter(workspace=OuterRef("pk")).order_by("-created_at")
            .values("created_at")[:1]
        ),
    )


# --- what pages, the API and the portal ask of a request ----------------------------------


def may_manage(*, instance: Instance, user: AbstractBaseUser) -> bool:
    """The owner, or a collaborator who can manage: delete the instance and share it. A
    collaborator who can use it does everything else."""
    return instance.workspace.owner_id == user.pk or Collaborator.objects.filter(
        instance=instance, user=user, status=Collaborator.Status.ACCEPTED,
        access=Collaborator.Access.MANAGE).exists()


def check_may_manage(*, instance: Instance, by: AbstractBaseUser | None, doing: str) -> None:
    """Refuse (PermissionDenied, a 403) `doing` to a collaborator who can only use the
    instance; the system (`by` None) and managers pass."""
    if by is not None and not may_manage(instance=instance, user=by):
        raise PermissionDenied(
            f"You can use {instance.name} but not {doing}: ask its owner, "
            f"{instance.workspace.owner.get_username()}, or a collaborator who can manage it.")


def instance_or_404(*, user: AbstractBaseUser, pk: int) -> Instance:
    """The instance when the user owns it or collaborates on it, else 404: someone else's
    instance is never revealed."""
    instance = instance_for_user(user=user, pk=pk)
    if instance is None:
        raise Http404("No such instance.")
    return instance


def shared_only(request: HttpRequest) -> bool:
    """A person whose only access is what others shared (no role): no workspace, no quota,
    no catalogue. Set by the portal's role middleware."""
    return getattr(request, "shared_only", False)


def base_url(request: HttpRequest) -> str:
    """Where links in mail point: the configured public address, else this request's."""
    return settings.PORTAL_URL or request.build_absolute_uri("/")


@dataclass(frozen=True)
class Allotment:
    """What an instance, or a size, gets on its cluster: the figures every page, the API and
    the CLI show. On the local cluster CPU and memory are limits on this machine, shared by
    its sandboxes (`shared`), never more than it has (no 64 CPUs on a 2-CPU box)."""

    cpu: Decimal
    memory_gib: int
    shared: bool

    def words(self) -> str:
        up = "up to " if self.shared else ""
        return f"{up}{cores(self.cpu)} CPU · {up}{self.memory_gib} GiB memory"


def allotment(sized: Instance | ComputeProfile) -> Allotment:
    if sized.cluster.backend == Cluster.Backend.LOCAL:
        cpu, memory_gib = machine_limits().cap(sized.cpu, sized.memory_gib)
        return Allotment(cpu, memory_gib, shared=True)
    return Allotment(Decimal(sized.cpu), sized.memory_gib, shared=False)


@dataclass(frozen=True)
class SizeCard:
    profile: ComputeProfile
    refusal: str
    cost: str
    cpu: Decimal
    memory_gib: int
    local: bool


def size_cards(profiles: Iterable[ComputeProfile], usage: QuotaUsage) -> list[SizeCard]:
    """The sizes as the wizard and the API show them, with what each gets (`allotment`)."""
    cards = []
    for p in profiles:
        given = allotment(p)
        cards.append(SizeCard(
            profile=p, refusal=usage.refusal(p.gpus), cost=usage.cost(p.gpus), cpu=given.cpu,
            memory_gib=given.memory_gib, local=given.shared,
        ))
    return cards
