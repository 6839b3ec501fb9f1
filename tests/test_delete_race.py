"""Delete right after launch, while a real Celery worker provisions: PostgreSQL locks are
taken in one order everywhere (the workspace row, then the instance), so no try deadlocks
and every instance ends deleted with its GPUs released."""

import threading

import pytest
from django.db import connection

from instances import services
from instances.models import Instance

from .conftest import wait_for, workspace_of

pytestmark = pytest.mark.django_db(transaction=True)
TRIES = 30


def test_deleting_right_after_launching_never_deadlocks(celery_worker_process, alice,
                                                       catalogue):
    workspace = workspace_of(alice)
    workspace.max_gpus, workspace.max_instances = 4 * TRIES, TRIES
    workspace.save()
    errors: list[BaseException] = []

    def launch_and_delete(i: int) -> None:
        try:
            instance = services.launch_instance(workspace=workspace, name=f"race-{i}",
                                                profile=catalogue[1], by=alice)
            services.delete_instance(instance=instance, by=alice)
        except BaseException as exc:  # a DeadlockDetected surfaces here
            errors.append(exc)
        finally:
            connection.close()

    for start in range(0, TRIES, 3):  # three users' clicks at a time, the worker busy too
        threads = [threading.Thread(target=launch_and_delete, args=(i,))
                   for i in range(start, start + 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert errors == []
    assert Instance.objects.count() == TRIES
    wait_for(lambda: set(Instance.objects.values_list("status", flat=True)) == {"deleted"}, 60)
    assert not any(Instance.objects.values_list("gpu_indices", flat=True))
