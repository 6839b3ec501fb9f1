"""Landing page and instance list: what users see, and a query count that does not grow."""

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from instances import selectors, services
from instances.models import Instance
from workspaces.models import AuditEvent

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


def test_empty_pages_keep_polling_so_a_launch_in_another_tab_appears(
    alice_client, alice, catalogue
):
    for url in ("/", "/instances/"):
        page = alice_client.get(url).content.decode()
        poller = page.split('hx-get="', 1)[1].split(">", 1)[0]
        assert 'hx-trigger="every 10s"' in poller, url
    launch_many(alice, catalogue[1], 1)  # from another tab
    name = Instance.objects.get().name
    partial = alice_client.get("/instances/?page=1", HTTP_HX_REQUEST="true").content.decode()
    assert name in partial and 'hx-trigger="every 2s"' in partial
    assert name in alice_client.get("/").content.decode()


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
    assert 'hx-trigger="every 1s"' in alice_client.get(url).content.decode()

    services.provision_instance(instance_id=instance.pk)
    partial = alice_client.get(url).content.decode()
    assert "Running" in partial and 'hx-trigger="every 10s"' in partial
    assert "simulated" in partial

    services.delete_instance(instance=instance, by=alice)
    services.teardown_instance(instance_id=instance.pk)
    partial = alice_client.get(url).content.decode()
    assert "Deleted" in partial and "hx-trigger" not in partial


def test_the_flash_messages_say_what_alice_did(alice_client, alice, catalogue):
    response = alice_client.post(reverse("instances:new"),
                                 {"name": "train-a", "profile": catalogue[1].pk}, follow=True)
    assert "You launched train-a." in response.content.decode()
    instance = Instance.objects.get()
    response = alice_client.post(reverse("instances:delete", args=[instance.pk]), follow=True)
    assert "You asked to delete train-a." in response.content.decode()


def test_confirming_a_delete_already_under_way_says_so_and_changes_nothing(
    alice_client, alice, catalogue
):
    launch_many(alice, catalogue[1], 1)
    instance = Instance.objects.get()
    url = reverse("instances:delete", args=[instance.pk])
    alice_client.post(url, follow=True)  # another tab deleted it first
    audit_rows = AuditEvent.objects.count()

    response = alice_client.post(url, follow=True)

    assert "job-0 is already being deleted." in response.content.decode()
    assert "You asked to delete" not in response.content.decode()
    assert AuditEvent.objects.count() == audit_rows
    assert "is already being deleted" in alice_client.get(url).content.decode()


def test_a_running_instance_page_reads_like_a_person_wrote_it(alice_client, alice, catalogue):
    launch_many(alice, catalogue[1], 1)
    instance = services.provision_instance(instance_id=Instance.objects.get().pk)
    page = alice_client.get(reverse("instances:detail", args=[instance.pk])).content.decode()
    assert "GPU slot<" in page or "GPU slot</dt>" in page  # one slot, not "GPU slots"
    assert "Running for</dt><dd" in page and "under a minute" in page
    assert page.count(">Delete</a>") == 1 and page.count(">New notebook</a>") == 1
    assert "Deploy a notebook" not in page  # "New notebook" is already there
    confirm = alice_client.get(reverse("instances:delete", args=[instance.pk])).content.decode()
    assert "its GPU goes back to your quota" in confirm


def test_over_quota_is_said_in_words_and_never_reads_as_room_left(alice_client, alice,
                                                                   catalogue):
    launch_many(alice, catalogue[2], 2)  # 4 GPUs
    workspace = workspace_of(alice)
    workspace.max_gpus = 1  # an administrator lowers the quota below what is used
    workspace.save()
    page = alice_client.get("/").content.decode()
    assert "over-quota" in page
    assert "Over quota: 4 GPUs in use, over a quota of 1." in page
    usage = selectors.quota_usage(workspace=workspace)
    assert usage.refusal(1) == "Needs 1 GPU; none of your 1 GPU is left (over quota: 4 in use)."
