"""What administrators see: workspaces with the quota that applies and where it comes from,
compute profiles in words, and an overview page; none of it grows in queries with the rows,
and none of it is open to end users."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clusters.models import Cluster
from instances import services
from instances.models import ComputeProfile, Instance
from notebooks.models import Service, ServiceProfile
from workspaces.models import AuditEvent, GroupPolicy

from .conftest import make_user, running_instance, workspace_of

WORKSPACES = "/admin/workspaces/workspace/"
OVERVIEW = "/admin/overview/"


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def launch(user, profile, name: str, *, run: bool = True) -> Instance:
    if run:
        return running_instance(user, profile, name)
    return services.launch_instance(
        workspace=workspace_of(user), name=name, profile=profile, by=user)


def queries_for(client, url: str) -> int:
    client.get(url)  # the first request of a session does one-off work (caches, last login)
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_the_workspace_list_shows_quota_source_use_and_last_activity(
    admin_client, alice, bob, catalogue
):
    launch(alice, catalogue[2], "train-a")
    bobs = workspace_of(bob)
    bobs.max_gpus, bobs.max_instances = 3, 2
    bobs.save()
    carol = make_user("carol")
    researchers = Group.objects.create(name="Researchers")
    GroupPolicy.objects.create(group=researchers, role="end-user", default_max_gpus=16,
                               default_max_instances=10)
    carol.groups.add(researchers)

    page = admin_client.get(WORKSPACES).content.decode()
    rows = {name: page.split(f">{name}<")[1].split("</tr>")[0]
            for name in ("alice", "bob", "carol")}

    assert "8 GPUs, 5 instances" in rows["alice"] and ">default<" in rows["alice"]
    assert "3 GPUs, 2 instances" in rows["bob"] and ">workspace<" in rows["bob"]
    assert "16 GPUs, 10 instances" in rows["carol"] and ">group<" in rows["carol"]
    assert 'class="field-gpus_in_use">2<' in rows["alice"]
    assert 'class="field-instances_in_use">1<' in rows["alice"]
    last = rows["alice"].split('class="field-last_activity">')[1].split("<")[0]
    assert last == "now" or last.endswith("ago")  # she launched just now
    assert 'class="field-last_activity">never<' in rows["bob"]


def test_the_admins_gpus_in_use_count_what_the_quota_check_counts(
    admin_client, alice, catalogue
):
    """A failed instance holds no GPUs for the quota check, so the admin does not count it
    either: the same rule (Instance.HOLDS_QUOTA) in both places."""
    launch(alice, catalogue[2], "running")
    failed = launch(alice, catalogue[4], "broken")
    Instance.objects.filter(pk=failed.pk).update(status=Instance.Status.FAILED)

    page = admin_client.get(WORKSPACES).content.decode()
    row = page.split(">alice<")[1].split("</tr>")[0]
    assert 'class="field-gpus_in_use">2<' in row
    assert 'class="field-instances_in_use">1<' in row


def test_quota_changes_and_publishing_are_in_the_audit_trail(admin_client, admin_user, alice,
                                                              catalogue):
    workspace = workspace_of(alice)
    admin_client.post(f"{WORKSPACES}{workspace.pk}/change/",
                      {"max_gpus": "3", "max_instances": ""})
    event = AuditEvent.objects.get(action="workspace.quota_changed")
    assert event.actor == admin_user and event.workspace == workspace
    assert event.data["changes"] == {"max_gpus": [None, 3]}

    profile = catalogue[2]
    admin_client.post("/admin/instances/computeprofile/", {
        "action": "unpublish", "_selected_action": [str(profile.pk)]})
    profile.refresh_from_db()
    assert profile.published is False
    assert AuditEvent.objects.filter(action="profile.unpublished", object_id=str(profile.pk),
                                     actor=admin_user).count() == 1
    admin_client.post("/admin/instances/computeprofile/", {
        "action": "unpublish", "_selected_action": [str(profile.pk)]})
    assert AuditEvent.objects.filter(action="profile.unpublished").count() == 1  # no change


def test_lowering_a_quota_below_use_warns_and_says_what_happens(admin_client, alice, catalogue):
    launch(alice, catalogue[4], "train-a")
    workspace = workspace_of(alice)

    response = admin_client.post(
        f"{WORKSPACES}{workspace.pk}/change/", {"max_gpus": "2", "max_instances": ""},
        follow=True)

    page = response.content.decode()
    assert "now has 4 GPUs in use, over its quota of 2" in page
    assert "Its running instances keep running; new launches are refused" in page
    workspace.refresh_from_db()
    assert workspace.max_gpus == 2
    assert Instance.objects.get().status == Instance.Status.RUNNING


def test_a_quota_above_use_saves_without_a_warning(admin_client, alice, catalogue):
    launch(alice, catalogue[1], "small")
    workspace = workspace_of(alice)
    page = admin_client.post(f"{WORKSPACES}{workspace.pk}/change/",
                             {"max_gpus": "4", "max_instances": ""}, follow=True)
    assert "over its quota" not in page.content.decode()


def test_a_local_profile_hides_kubernetes_fields_and_labels_its_figures(
    admin_client, catalogue
):
    page = admin_client.get(
        f"/admin/instances/computeprofile/{catalogue[1].pk}/change/").content.decode()
    for field in ("cluster_class", "kubernetes_version", "worker_class", "gpus_per_node",
                  'name="kind"'):
        assert field not in page
    assert "Kubernetes namespace" not in page
    assert ">GPUs:<" in page and ">CPU:<" in page and ">Memory (GiB):<" in page


def test_a_kubernetes_profile_keeps_its_kubernetes_fields(admin_client, catalogue):
    farm = Cluster.objects.create(name="farm", display_name="GPU farm", backend="kubernetes")
    profile = ComputeProfile.objects.create(
        name="farm-2", display_name="Farm · 2 GPUs", cluster=farm, gpus=2, cpu=8,
        memory_gib=64, kind="vcluster")
    page = admin_client.get(
        f"/admin/instances/computeprofile/{profile.pk}/change/").content.decode()
    assert 'name="kind"' in page and 'name="gpus_per_node"' in page


def test_the_profile_list_says_sandbox_for_local_profiles_in_few_columns(
    admin_client, catalogue
):
    page = admin_client.get("/admin/instances/computeprofile/").content.decode()
    results = page.split('id="result_list"')[1].split("</table>")[0]
    assert "Sandbox on Local machine" in results
    assert "Kubernetes namespace" not in results
    assert "2 GPUs · up to 16 CPU · up to 128 GiB memory" in results  # shared limits here
    assert results.count('<th scope="col"') <= 6  # the action checkbox and five columns


def test_a_new_profile_goes_last_by_default(admin_client, catalogue):
    last = max(p.sort_order for p in catalogue.values())
    page = admin_client.get("/admin/instances/computeprofile/add/").content.decode()
    assert f'name="sort_order" value="{last + 10}"' in page


def test_saving_an_unpublished_profile_says_users_do_not_see_it(admin_client, catalogue):
    local = catalogue[1].cluster
    added = admin_client.post("/admin/instances/computeprofile/add/", {
        "name": "new-size", "display_name": "New size", "description": "", "cluster": local.pk,
        "kind": "namespace", "gpus": "1", "gpu_model": "", "cpu": "4", "memory_gib": "16",
        "storage_gib": "50", "sort_order": "100", "gpus_per_node": "8",
        "idle_gpu_percent": "5"}, follow=True).content.decode()
    assert "New size is not published: users do not see it until you tick Published" in added
    profile = ComputeProfile.objects.get(name="new-size")
    assert not profile.published
    published = admin_client.post(f"/admin/instances/computeprofile/{profile.pk}/change/", {
        "name": "new-size", "display_name": "New size", "description": "", "cluster": local.pk,
        "kind": "namespace", "gpus": "1", "gpu_model": "", "cpu": "4", "memory_gib": "16",
        "storage_gib": "50", "sort_order": "100", "published": "on", "gpus_per_node": "8",
        "idle_gpu_percent": "5"}, follow=True)
    assert "is not published" not in published.content.decode()
    profile.refresh_from_db()
    assert profile.published


def test_the_overview_shows_gpus_statuses_failures_and_top_workspaces(
    admin_client, alice, bob, catalogue
):
    launch(alice, catalogue[2], "train-a")
    launch(bob, catalogue[4], "bob-big")
    broken = launch(bob, catalogue[1], "bob-broken")
    Instance.objects.filter(pk=broken.pk).update(
        status="failed", status_message="The sandbox could not be created: disk full.")
    old = launch(alice, catalogue[1], "old-failure", run=False)
    Instance.objects.filter(pk=old.pk).update(
        status="failed", status_message="Long ago.",
        status_changed_at=timezone.now() - timedelta(hours=25))

    page = admin_client.get(OVERVIEW).content.decode()

    # 2 + 4 + 1 simulated slots held of the 8 the tests give the local cluster.
    row = page.split("Local machine</a>")[1].split("</tr>")[0]
    assert [c.split("</td>")[0] for c in row.split("<td>")[1:]] == ["7", "1", "8", "simulated"]
    assert "<strong>2</strong> running" in page and "<strong>2</strong> failed" in page
    assert "The sandbox could not be created: disk full." in page
    assert "Long ago." not in page  # more than 24 hours ago
    top = page.split("Top workspaces by GPUs in use")[1]
    assert top.index(">bob<") < top.index(">alice<")


def test_the_overview_counts_notebooks_and_services_by_cluster_and_status(
    admin_client, alice, catalogue
):
    instance = launch(alice, catalogue[2], "train-a")
    board = ServiceProfile.objects.get(name="tensorboard")
    for name, status in (("a", "running"), ("b", "running"), ("c", "failed"), ("d", "deleted")):
        Service.objects.create(instance=instance, name=name, profile=board, created_by=alice,
                               cpu=1, memory_gib=1, status=status)
    page = admin_client.get(OVERVIEW).content.decode()
    table = page.split('id="deployments"')[1].split("</table>")[0]
    head = [c.split("</th>")[0] for c in table.split("<th>")[1:]]
    assert head == ["Cluster", "What", "Deploying", "Running", "Stopped", "Failed", "Deleting"]
    row = table.split("<td>Local machine</td><td>Services</td>")[1].split("</tr>")[0]
    assert [c.split("</td>")[0] for c in row.split("<td>")[1:]] == ["0", "2", "0", "1", "0"]
    assert "<td>Notebooks</td>" not in table  # none deployed


@pytest.mark.parametrize("url", [WORKSPACES, OVERVIEW])
def test_the_admin_pages_cost_the_same_queries_for_few_or_many_rows(
    admin_client, alice, catalogue, url
):
    launch(alice, catalogue[1], "one")
    few = queries_for(admin_client, url)
    for i in range(6):
        failed = launch(make_user(f"user{i}"), catalogue[1], f"job-{i}")
        Instance.objects.filter(pk=failed.pk).update(status="failed", status_message="x")
    assert queries_for(admin_client, url) == few


def test_an_end_user_never_sees_the_overview(alice_client, alice, catalogue):
    launch(alice, catalogue[1], "mine")
    response = alice_client.get(OVERVIEW)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_a_profile_saved_in_the_admin_records_what_changed(admin_user, catalogue):
    profile = catalogue[1]
    profile.display_name, profile.gpus = "Small, renamed", 1
    services.save_profile(profile=profile, fields=["display_name", "gpus", "groups"],
                          by=admin_user, ip_address="10.1.2.3")
    event = AuditEvent.objects.get(action="profile.changed")
    assert event.data["changes"] == {"display_name": ["Small · 1 GPU", "Small, renamed"]}
    assert (event.actor, event.ip_address) == (admin_user, "10.1.2.3")


def test_the_admin_home_is_grouped_by_task_and_hides_what_nobody_touches(admin_client):
    page = admin_client.get("/admin/").content.decode()
    sections = ["Catalogue", "Workspaces and quotas", "What runs", "Clusters", "Usage",
                "Access and audit", "Sign-in"]
    found = [page.find(f">{name}</a>") for name in sections]
    assert -1 not in found and found == sorted(found), dict(zip(sections, found, strict=True))
    catalogue = page.split(">Catalogue</a>")[1].split("</table>")[0]
    assert all(name in catalogue for name in (
        "Compute profiles", "Notebook profiles", "Service profiles"))
    assert "GPU allocations" in page and "API tokens" in page
    assert "Social application tokens" not in page and ">Other</a>" not in page
    assert 'href="/admin/overview/"' in page
    assert "/static/css/admin.css" in page  # the portal's colours and type
    # An app's own page still lists its models as Django does.
    assert "Compute profiles" in admin_client.get("/admin/instances/").content.decode()
