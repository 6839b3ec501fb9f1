"""Concurrent launches on PostgreSQL with real transactions never pass the quota."""

import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from instances import services
from instances.models import Instance

from .conftest import workspace_of

pytestmark = pytest.mark.django_db(transaction=True)


def launch_concurrently(count: int, **kwargs) -> tuple[list[Instance], list[str]]:
    barrier = threading.Barrier(count)
    launched: list[Instance] = []
    refused: list[str] = []

    def launch(i: int) -> None:
        try:
            barrier.wait()
            launched.append(services.launch_instance(name=f"job-{i}", **kwargs))
        except ValidationError as exc:
            refused.append(" ".join(exc.messages))
        finally:
            connection.close()

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return launched, refused


def test_twenty_concurrent_launches_never_exceed_the_gpu_quota(alice, catalogue):
    workspace = workspace_of(alice)
    workspace.max_gpus, workspace.max_instances = 8, 20
    workspace.save()

    launched, refused = launch_concurrently(
        20, workspace=workspace, profile=catalogue[2], by=alice
    )

    assert len(launched) == 4 and len(refused) == 16
    assert sum(i.gpus for i in Instance.objects.filter(workspace=workspace)) == 8
    assert all(r.startswith("Your quota is 8 GPUs and 8 are in use by ") for r in refused)


def test_twenty_concurrent_launches_never_exceed_the_instance_quota(alice, catalogue):
    workspace = workspace_of(alice)
    workspace.max_gpus, workspace.max_instances = 100, 3
    workspace.save()

    launched, refused = launch_concurrently(
        20, workspace=workspace, profile=catalogue[1], by=alice
    )

    assert len(launched) == 3
    assert Instance.objects.filter(workspace=workspace).count() == 3
    assert all(r.startswith("Your quota is 3 instances and 3 are in use by ") for r in refused)
