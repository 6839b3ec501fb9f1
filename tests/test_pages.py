"""Landing page and instance list: what users see, and a query count that does not grow."""

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from instances import services
from instances.models import Instance

from .conftest import workspace_of


def launch_many(alice, profile, count: int) -> None:
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 1000, 1000
    workspace.save()
    for i in range(count):
        services.launch_instance(workspace=workspace, name=f"job-{i}", profile=profile, by=alice)


def queries_for(client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_a_new_user_sees_an_inviting_empty_state(alice_client, catalogue):
    page = alice_client.get("/").content.decode()
    assert "Your workspace is ready" in page
    assert "Launch your first instance" in page
    assert "8 GPUs" in page


def test_the_landing_page_summarises_what_is_active(alice_client, alice, catalogue):
    launch_many(alice, catalogue[2], 2)
    running = Instance.objects.first()
    Instance.objects.filter(pk=running.pk).update(status=Instance.Status.RUNNING)
    page = alice_client.get("/").content.decode()
    assert "GPUs in use" in page and "4 <small>of 1000</small>" in page
    assert "1 running" in page and "1 pending" in page
    assert 'hx-trigger="every 2s"' in page  # a pending instance keeps the summary live


def test_the_list_shows_name_size_status_and_launch_date(alice_client, alice, catalogue):
    launch_many(alice, catalogue[4], 1)
    page = alice_client.get("/instances/").content.decode()
    for heading in ("Name", "Size", "Operational status", "Launch date"):
        assert f"<th>{heading}</th>" in page
    assert "job-0" in page and "Large · 4 GPUs" in page and "Pending" in page


def test_deleted_instances_leave_the_list(alice_client, alice, catalogue):
    launch_many(alice, catalogue[1], 2)
    Instance.objects.filter(name="job-0").update(status=Instance.Status.DELETED)
    page = alice_client.get("/instances/").content.decode()
    assert "job-1" in page and "job-0" not in page


def test_query_counts_do_not_grow_with_rows(alice_client, alice, catalogue):
    launch_many(alice, catalogue[1], 1)
    alice_client.get("/ping/")  # the session's first request also records its last activity
    at_one = {url: queries_for(alice_client, url) for url in ("/", "/instances/")}
    workspace = workspace_of(alice)
    for i in range(60):
        services.launch_instance(workspace=workspace, name=f"more-{i}", profile=catalogue[1],
                                 by=alice)
    at_many = {url: queries_for(alice_client, url) for url in ("/", "/instances/")}
    assert at_one == at_many
    assert max(at_many.values()) <= 12


def test_the_list_is_paginated(alice_client, alice, catalogue, settings):
    settings.INSTANCES_PER_PAGE = 5
    launch_many(alice, catalogue[1], 7)
    first = alice_client.get("/instances/").content.decode()
    second = alice_client.get("/instances/?page=2").content.decode()
    assert first.count("<tr>") - 1 == 5 and "Page 1 of 2" in first
    assert "job-0" in second and "job-0" not in first


def test_the_status_partial_polls_fast_while_pending_and_slowly_once_running(
    alice_client, alice, catalogue
):
    launch_many(alice, catalogue[1], 1)
    instance = Instance.objects.get()
    url = reverse("instances:status", args=[instance.pk])
    assert 'hx-trigger="every 2s"' in alice_client.get(url).content.decode()

    services.provision_instance(instance_id=instance.pk)
    partial = alice_client.get(url).content.decode()
    assert "Running" in partial and 'hx-trigger="every 10s"' in partial
    assert "simulated" in partial

    services.delete_instance(instance=instance, by=alice)
    services.teardown_instance(instance_id=instance.pk)
    partial = alice_client.get(url).content.decode()
    assert "Deleted" in partial and "hx-trigger" not in partial
