from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, QuerySet, Sum

from gpupaas.formats import cores, gpus_phrase
from instances.models import Instance
from instances.selectors import accessible_instances, listable_instances, reserved_by_cluster

from .models import Notebook, NotebookProfile


def live_notebooks(*, user: AbstractBaseUser) -> QuerySet[Notebook]:
    """Notebooks on the instances the user owns or collaborates on, found through the
    instances' indexes (`listable_instances`), not by reading every instance."""
    return (
        Notebook.objects.filter(instance__in=listable_instances(user=user).values("pk"))
        .exclude(status=Notebook.Status.DELETED)
        .select_related("profile", "instance")
    )


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

    def refusal(self, *, cpu: Decimal, memory_gib: int, gpus: int) -> str:
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
            f"and {gpus_phrase(self.gpus)}{reserved}; {used}; this notebook needs {cores(cpu)} "
            f"CPU, {memory_gib} GiB and {gpus_phrase(gpus)}."
        )


def instance_capacity(*, instance: Instance) -> Capacity:
    live = Notebook.objects.filter(instance=instance).exclude(status=Notebook.Status.DELETED)
    totals = live.aggregate(cpu=Sum("cpu"), memory=Sum("memory_gib"), gpus=Sum("gpus"))
    reservation = reserved_by_cluster(instance=instance)
    return Capacity(
        cpu=instance.cpu, memory_gib=instance.memory_gib, gpus=instance.gpus,
        used_cpu=totals["cpu"] or Decimal(0), used_memory_gib=totals["memory"] or 0,
        used_gpus=totals["gpus"] or 0,
        holders=tuple(live.order_by("created_at").values_list("name", flat=True)),
        reserved_cpu=Decimal(reservation.cpu_millis) / 1000,
        reserved_memory_gib=-(-reservation.memory_mib // 1024),
        reserved_note=f"the virtual cluster reserves {reservation}" if reservation else "",
    )
