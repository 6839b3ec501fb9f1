"""A failed instance gives its GPUs and quota back at once, keeps its reason, and offers
Retry (which must fit the quota again, under the same name) and Delete. No banner says it
is launching once it has failed."""

from clusters.models import GpuAllocation
from instances import services
from instances.models import Instance
from instances.selectors import quota_usage

from .conftest import workspace_of

Status = Instance.Status


def launch(user, profile, name: str) -> Instance:
    instance = services.launch_instance(workspace=workspace_of(user), name=name,
                                        profile=profile, by=user)
    return services.provision_instance(instance_id=instance.pk)


def test_a_failed_instance_frees_its_quota_and_keeps_its_reason(
    alice, alice_client, catalogue, settings
):
    settings.LOCAL_GPU_SLOTS = 4
    response = alice_client.post("/instances/new/", {"name": "big", "profile": catalogue[8].pk},
                                 follow=True)
    big = Instance.objects.get(name="big")
    big = services.provision_instance(instance_id=big.pk)  # what the worker does

    assert big.status == Status.FAILED
    assert big.status_message == (
        "No free GPU on Local machine: this size needs 8, 4 of 4 are free right now.")
    assert "is launching" not in response.content.decode()
    usage = quota_usage(workspace=workspace_of(alice))
    assert (usage.gpus_used, usage.instances_used) == (0, 0)
    assert launch(alice, catalogue[4], "small").status == Status.RUNNING  # 8 left to use

    page = alice_client.get(f"/instances/{big.pk}/").content.decode()
    assert "Failed" in page and "this size needs 8, 4 of 4 are free" in page
    assert f'action="/instances/{big.pk}/retry/"' in page
    assert f'href="/instances/{big.pk}/delete/"' in page
    assert "is launching" not in page


def test_retry_checks_the_quota_again_and_keeps_the_name(alice, alice_client, catalogue,
                                                         settings):
    settings.LOCAL_GPU_SLOTS = 4
    big = launch(alice, catalogue[8], "big")
    small = launch(alice, catalogue[4], "small")

    response = alice_client.post(f"/instances/{big.pk}/retry/", follow=True)
    big.refresh_from_db()
    assert big.status == Status.FAILED
    assert ("Cannot retry big: Your quota is 8 GPUs and 4 are in use by small; this size "
            "needs 8." in response.content.decode())

    services.delete_instance(instance=small, by=alice)
    services.teardown_instance(instance_id=small.pk)
    settings.LOCAL_GPU_SLOTS = 8
    alice_client.post(f"/instances/{big.pk}/retry/")
    big = services.provision_instance(instance_id=big.pk)
    assert (big.name, big.status) == ("big", Status.RUNNING)
    assert GpuAllocation.objects.filter(holder=big.key).count() == 8


def test_bob_cannot_retry_alices_instance(alice, bob, client, catalogue, settings):
    settings.LOCAL_GPU_SLOTS = 4
    big = launch(alice, catalogue[8], "big")
    client.force_login(bob)

    assert client.post(f"/instances/{big.pk}/retry/").status_code == 404
    big.refresh_from_db()
    assert big.status == Status.FAILED


def test_an_instance_that_fails_while_running_gives_its_gpu_slots_back(
    alice, catalogue, sandbox_root
):
    instance = launch(alice, catalogue[2], "flaky")
    assert GpuAllocation.objects.filter(holder=instance.key).count() == 2
    # What reconcile does when the backend reports it failed (its sandbox went bad).
    instance = services._apply_state(
        instance, services.InstanceState("failed", "The sandbox is gone."))

    assert instance.status == Status.FAILED
    assert instance.status_message == "The sandbox is gone."
    assert not GpuAllocation.objects.filter(holder=instance.key).exists()
    assert quota_usage(workspace=workspace_of(alice)).gpus_used == 0


def test_provisioning_shows_as_a_step_with_what_is_happening(alice, alice_client, catalogue):
    instance = services.launch_instance(workspace=workspace_of(alice), name="up",
                                        profile=catalogue[2], by=alice)
    services._transition(instance.pk, from_=[Status.PENDING], to=Status.PROVISIONING,
                         message="Provisioning on Local machine: reserving 2 GPUs.")

    panel = alice_client.get(f"/instances/{instance.pk}/status/").content.decode()

    assert '<li class="step-done">Pending</li>' in panel
    assert '<li class="step-current">Provisioning</li>' in panel
    assert '<li class="step-todo">Running</li>' in panel
    assert "Provisioning on Local machine: reserving 2 GPUs." in panel
