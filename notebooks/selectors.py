from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, Q, QuerySet, Sum

from gpupaas.formats import cores, gpus_phrase
from instances.models import Instance
from instances.selectors import (
    accessible_instances,
    allotment,
    listable_instances,
    reserved_by_cluster,
)

from .models import Notebook, NotebookProfile, Service, ServiceProfile


def live_notebooks(*, user: AbstractBaseUser) -> QuerySet[Notebook]:
    """Notebooks on the instances the user owns or collaborates on, found through the
    instances' indexes (`listable_instances`), not by reading every instance."""
    return (
        Notebook.objects.filter(instance__in=listable_instances(user=user).values("pk"))
        .exclude(status=Notebook.Status.DELETED)
        .select_related("profile", "instance__cluster")
    )


def live_services(*, user: AbstractBaseUser) -> QuerySet[Service]:
    """Services on the instances the user owns or collaborates on, as live_notebooks."""
    return (
        Service.objects.filter(instance__in=listable_instances(user=user).values("pk"))
        .exclude(status=Service.Status.DELETED)
        .select_related("profile", "instance")
    )


def service_profiles_for(*, user: AbstractBaseUser) -> QuerySet[ServiceProfile]:
    """The published services the user may deploy: those for everyone, and those for a
    group of theirs."""
    return ServiceProfile.objects.filter(published=True).filter(
        Q(groups__isnull=True) | Q(groups__in=user.groups.all())).distinct()


def status_counts(*, owner: AbstractBaseUser) -> dict[str, int]:
    rows = (
        Notebook.objects.filter(instance__workspace__owner=owner)
        .exclude(status=Notebook.Status.DELETED)
        .values("status").annotate(n=Count("id")).order_by()
    )
    return {row["status"]: row["n"] for row in rows}


def deployable_profiles() -> QuerySet[NotebookProfile]:
    return NotebookProfile.objects.filter(published=True)


def usable_instances(*, user: AbstractBaseUser) -> QuerySet[Instance]:
    """Instances a notebook can go onto now: the running ones the user owns or shares."""
    return accessible_instances(user=user).filter(
        status=Instance.Status.RUNNING).select_related("cluster")


@dataclass(frozen=True)
class Capacity:
    """What an instance has, what its own virtual cluster takes of it, and what its live
    notebooks already hold."""

    cpu: Decimal
    memory_gib: int
    gpus: int
    used_cpu: Decimal
    used_memory_gib: int
    used_gpus: int
    holders: tuple[str, ...]
    reserved_cpu: Decimal = Decimal(0)
    reserved_memory_gib: int = 0  # whole GiB, as notebooks are sized
    reserved_note: str = ""  # "the virtual cluster reserves 0.22 CPU and 320 MiB"

    def refusal(self, *, cpu: Decimal, memory_gib: int, gpus: int, what: str = "notebook"
                ) -> str:
        if (cpu <= self.cpu - self.reserved_cpu - self.used_cpu
                and memory_gib <= self.memory_gib - self.reserved_memory_gib
                - self.used_memory_gib and gpus <= self.gpus - self.used_gpus):
            return ""
        used = (f"{cores(self.used_cpu)} CPU, {self.used_memory_gib} GiB and "
                f"{gpus_phrase(self.used_gpus)} are used by {', '.join(self.holders)}"
                if self.holders else "nothing is used yet")
        reserved = f" ({self.reserved_note})" if self.reserved_note else ""
        return (
            f"Does not fit: the instance has {cores(self.cpu)} CPU, {self.memory_gib} GiB memory "
            f"and {gpus_phrase(self.gpus)}{reserved}; {used}; this {what} needs {cores(cpu)} "
            f"CPU, {memory_gib} GiB and {gpus_phrase(gpus)}."
        )


def _live(instance: Instance) -> list[QuerySet]:
    """What takes room on the instance: its notebooks and services that are not deleted (a
    failed one keeps its share, for Retry)."""
    return [model.objects.filter(instance=instance).exclude(status=Notebook.Status.DELETED)
            for model in (Notebook, Service)]


def held_gpu_slots(instance: Instance) -> list[list[int]]:
    return [slots for live in _live(instance)
            for slots in live.values_list("gpu_indices", flat=True)]


def instance_capacity(*, instance: Instance) -> Capacity:
    cpu, memory, gpus, holders = Decimal(0), 0, 0, []
    for live in _live(instance):
        totals = live.aggregate(cpu=Sum("cpu"), memory=Sum("memory_gib"), gpus=Sum("gpus"))
        cpu += totals["cpu"] or Decimal(0)
        memory += totals["memory"] or 0
        gpus += totals["gpus"] or 0
        holders += live.order_by("created_at").values_list("name", flat=True)
    reservation = reserved_by_cluster(instance=instance)
    given = allotment(instance)
    return Capacity(
        cpu=given.cpu, memory_gib=given.memory_gib, gpus=instance.gpus,
        used_cpu=cpu, used_memory_gib=memory, used_gpus=gpus, holders=tuple(holders),
        reserved_cpu=Decimal(reservation.cpu_millis) / 1000,
        reserved_memory_gib=-(-reservation.memory_mib // 1024),
        reserved_note=f"the virtual cluster reserves {reservation}" if reservation else "",
    )


@dataclass(frozen=True)
class DeploymentCount:
    cluster: str
    kind: str  # Notebooks | Services
    counts: list[int]  # in the order of STATUSES


# What the administrators' overview counts (deleted ones are history, not what runs).
STATUSES = [s for s in Notebook.Status if s != Notebook.Status.DELETED]


def deployments_by_cluster() -> list[DeploymentCount]:
    """Notebooks and services by cluster and status: one query per kind."""
    rows = []
    for model, kind in ((Notebook, "Notebooks"), (Service, "Services")):
        found: dict[str, dict[str, int]] = {}
        for row in (model.objects.exclude(status=Notebook.Status.DELETED)
                    .values("instance__cluster__display_name", "status")
                    .annotate(n=Count("id"))):
            found.setdefault(row["instance__cluster__display_name"], {})[row["status"]] = row["n"]
        rows += [DeploymentCount(cluster, kind, [by.get(s, 0) for s in STATUSES])
                 for cluster, by in sorted(found.items())]
    return rows
