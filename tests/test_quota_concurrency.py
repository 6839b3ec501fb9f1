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


def hold_workspace_lock(workspace_id: int, then=None) -> tuple[threading.Event, threading.Thread]:
    """Another transaction holding the workspace row (as a launch under way does) until the
    returned event is set; it runs `then` before it commits."""
    from workspaces.services import lock_workspace

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        from django.db import transaction

        try:
            with transaction.atomic():
                lock_workspace(workspace_id=workspace_id)
                taken.set()
                release.wait(30)
                if then is not None:
                    then()
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    return release, holder


def launch_in_thread(**kwargs) -> tuple[threading.Thread, list]:
    outcome: list = []

    def launch() -> None:
        try:
            outcome.append(services.launch_instance(**kwargs))
        except ValidationError as exc:
            outcome.append(" ".join(exc.messages))
        finally:
            connection.close()

    thread = threading.Thread(target=launch)
    thread.start()
    return thread, outcome


def test_a_launch_on_a_full_workspace_is_refused_without_waiting_for_its_lock(alice, catalogue):
    """At the start of a class the workspace is full after a few launches: the other
    students' launches are answered at once, not one by one behind the row lock."""
    workspace = workspace_of(alice)
    workspace.max_gpus = 2
    workspace.save()
    services.launch_instance(workspace=workspace, name="first", profile=catalogue[2], by=alice)
    release, holder = hold_workspace_lock(workspace.pk)
    try:
        thread, outcome = launch_in_thread(workspace=workspace, name="second",
                                           profile=catalogue[2], by=alice)
        thread.join(5)
        assert not thread.is_alive(), "the refusal waited for the workspace lock"
        assert outcome == ["Your quota is 2 GPUs and 2 are in use by first; this size needs 2."]
        name_taken, taken_outcome = launch_in_thread(workspace=workspace, name="first",
                                                     profile=catalogue[1], by=alice)
        name_taken.join(5)
        assert taken_outcome == ["You already have an instance named first."]
    finally:
        release.set()
        holder.join()
    assert list(Instance.objects.values_list("name", flat=True)) == ["first"]


def test_a_launch_that_fits_still_waits_for_the_lock_and_counts_what_came_first(
        alice, catalogue):
    """The early refusal reads without the lock; a launch that looks like it fits still takes
    the lock and checks again, so one that committed meanwhile is counted."""
    workspace = workspace_of(alice)
    workspace.max_gpus = 2
    workspace.save()
    profile = catalogue[2]

    def launch_first() -> None:  # the launch that held the lock first commits its instance
        Instance.objects.create(
            workspace=workspace, name="early", profile=profile, launched_by=alice,
            cluster=profile.cluster, kind=profile.kind, gpus=2, cpu=1, memory_gib=1,
            storage_gib=1, status=Instance.Status.PENDING)

    release, holder = hold_workspace_lock(workspace.pk, then=launch_first)
    thread, outcome = launch_in_thread(workspace=workspace, name="late", profile=profile,
                                       by=alice)
    thread.join(1)
    assert thread.is_alive(), "a launch that fits must wait for the workspace lock"
    release.set()
    holder.join()
    thread.join(10)
    assert outcome == ["Your quota is 2 GPUs and 2 are in use by early; this size needs 2."]
    assert list(Instance.objects.values_list("name", flat=True)) == ["early"]
