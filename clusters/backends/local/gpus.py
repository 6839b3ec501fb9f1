"""GPU slots on this machine: real ones found through NVML, or simulated ones."""

import functools
import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import IntegrityError, transaction

from clusters.models import Cluster, GpuAllocation

from ..base import BackendError, GpuInventory, TransientBackendError

log = logging.getLogger(__name__)


@functools.cache
def discover_nvidia_gpus() -> tuple[str, ...]:
    """Names of the NVIDIA GPUs NVML sees, by index; empty where there is no driver."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s): local GPU slots are simulated", exc)
        return ()
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return tuple(names)
    finally:
        pynvml.nvmlShutdown()


def utilisation(indices: Iterable[int]) -> float | None:
    """How busy the busiest of these GPUs is now (percent), as NVML reports it; None where
    NVML cannot tell (no driver, or turned off)."""
    indices = list(indices)
    if not settings.LOCAL_USE_NVML or not indices:
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        return float(max(pynvml.nvmlDeviceGetUtilizationRates(
            pynvml.nvmlDeviceGetHandleByIndex(i)).gpu for i in indices))
    except pynvml.NVMLError as exc:
        log.warning("NVML could not read GPUs %s: %s", indices, exc)
        return None
    finally:
        pynvml.nvmlShutdown()


def local_inventory() -> GpuInventory:
    devices = discover_nvidia_gpus() if settings.LOCAL_USE_NVML else ()
    if devices:
        return GpuInventory(total=len(devices), model=devices[0], simulated=False, devices=devices)
    return GpuInventory(
        total=settings.LOCAL_GPU_SLOTS, model="Simulated GPU", simulated=True,
        devices=("Simulated GPU",) * settings.LOCAL_GPU_SLOTS,
    )


def allocate_slots(*, cluster: Cluster, holder: str, count: int, total: int) -> list[int]:
    """Give `holder` `count` free slot indices below `total`; idempotent per holder.

    The cluster row lock serialises allocators; the unique (cluster, index) constraint is
    the guarantee that no slot ever has two holders even if a lock were missed.
    """
    for _ in range(5):
        try:
            with transaction.atomic():
                Cluster.objects.select_for_update().filter(pk=cluster.pk).first()
                rows = GpuAllocation.objects.filter(cluster=cluster)
                held = sorted(rows.filter(holder=holder).values_list("index", flat=True))
                if len(held) >= count:
                    return held[:count]
                taken = set(rows.values_list("index", flat=True))
                free = [i for i in range(total) if i not in taken]
                need = count - len(held)
                if len(free) < need:
                    raise BackendError(
                        f"No free GPU on {cluster}: this size needs {count}, "
                        f"{len(free)} of {total} are free right now.",
                    )
                GpuAllocation.objects.bulk_create(
                    GpuAllocation(cluster=cluster, index=i, holder=holder) for i in free[:need]
                )
                return sorted(held + free[:need])
        except IntegrityError:
            continue  # another allocator won a slot between our read and our write
    raise TransientBackendError("GPU slots are busy being assigned; trying again.")


def release_slots(*, cluster: Cluster, holder: str) -> int:
    deleted, _ = GpuAllocation.objects.filter(cluster=cluster, holder=holder).delete()
    return deleted
