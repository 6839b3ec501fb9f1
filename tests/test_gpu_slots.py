"""GPU slots on the local backend are never double-booked (NVML absent: simulated slots)."""

import threading

import pytest
from django.db import connection

from clusters.backends import BackendError, InstanceSpec
from clusters.backends.local import LocalBackend
from clusters.backends.local.gpus import allocate_slots, local_inventory
from clusters.models import Cluster, GpuAllocation


def spec(key: str, gpus: int) -> InstanceSpec:
    return InstanceSpec(
        key=key, name=key, owner="alice", workspace="1", kind="namespace", gpus=gpus,
        gpu_model="", cpu=1.0, memory_gib=1, storage_gib=1,
    )


@pytest.fixture
def cluster(db) -> Cluster:
    return Cluster.objects.create(name="local", display_name="Local machine")


def test_without_nvml_the_machine_offers_the_configured_simulated_slots(settings):
    settings.LOCAL_GPU_SLOTS = 3
    inventory = local_inventory()
    assert (inventory.total, inventory.simulated) == (3, True)


@pytest.mark.django_db(transaction=True)
def test_concurrent_allocations_never_share_a_slot(cluster):
    results: dict[str, list[int]] = {}
    refused: list[str] = []
    barrier = threading.Barrier(12)

    def grab(i: int) -> None:
        try:
            barrier.wait()
            results[f"inst-{i}"] = allocate_slots(
                cluster=cluster, holder=f"inst-{i}", count=2, total=8
            )
        except BackendError as exc:
            refused.append(exc.message)
        finally:
            connection.close()

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    given = [index for indices in results.values() for index in indices]
    assert len(results) == 4 and len(refused) == 8
    assert sorted(given) == list(range(8))
    assert all("this size needs 2, 0 of 8 are free" in r for r in refused)


def test_ensuring_twice_keeps_the_same_slots(cluster, settings):
    backend = LocalBackend(cluster)
    first = backend.ensure_instance(spec("inst-1", 2))
    second = backend.ensure_instance(spec("inst-1", 2))
    assert first.gpu_indices == second.gpu_indices == (0, 1)
    assert GpuAllocation.objects.count() == 2


def test_deleting_frees_the_slots_for_the_next_instance(cluster, sandbox_root):
    backend = LocalBackend(cluster)
    backend.ensure_instance(spec("inst-1", 8))
    with pytest.raises(BackendError, match="No free GPU"):
        backend.ensure_instance(spec("inst-2", 1))
    assert backend.delete_instance("inst-1").phase == "gone"
    assert not (sandbox_root / "local" / "inst-1").exists()
    assert backend.ensure_instance(spec("inst-2", 1)).gpu_indices == (0,)


def test_the_sandbox_tells_processes_which_gpus_they_may_use(cluster, sandbox_root):
    import json

    LocalBackend(cluster).ensure_instance(spec("inst-7", 3))
    meta = json.loads((sandbox_root / "local" / "inst-7" / "instance.json").read_text())
    assert meta["env"] == {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert meta["gpu_simulated"] is True
