"""Bad input gets a clear message on the form, and nothing is written."""

import pytest
from django.urls import reverse

from instances.models import ComputeProfile, Instance
from workspaces.models import AuditEvent

from .conftest import workspace_of

NEW = "/instances/new/"


def post(client, **data):
    return client.post(reverse("instances:new"), data)


def assert_nothing_written() -> None:
    assert Instance.objects.count() == 0
    assert AuditEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Train_A", "Use lowercase letters, digits and hyphens"),
        ("-leading", "Use lowercase letters, digits and hyphens"),
        ("trailing-", "Use lowercase letters, digits and hyphens"),
        ("x" * 41, "at most 40 characters"),
        ("", "This field is required"),
    ],
)
def test_it_refuses_an_invalid_name(alice_client, catalogue, name, message):
    response = post(alice_client, name=name, profile=catalogue[1].pk)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert_nothing_written()


def test_it_refuses_a_description_over_500_characters(alice_client, catalogue):
    response = post(alice_client, name="ok", description="d" * 501, profile=catalogue[1].pk)
    assert "at most 500 characters" in response.content.decode()
    assert_nothing_written()


def test_it_refuses_a_duplicate_name(alice_client, catalogue):
    assert post(alice_client, name="train", profile=catalogue[1].pk).status_code == 302
    response = post(alice_client, name="train", profile=catalogue[1].pk)
    assert "You already have an instance named train." in response.content.decode()
    assert Instance.objects.count() == 1


def test_the_same_name_is_fine_in_another_workspace(alice_client, client, bob, catalogue):
    assert post(alice_client, name="train", profile=catalogue[1].pk).status_code == 302
    client.force_login(bob)
    assert post(client, name="train", profile=catalogue[1].pk).status_code == 302


@pytest.mark.parametrize("forged", ["unpublished", "missing"])
def test_it_refuses_a_forged_profile_id(alice_client, catalogue, forged):
    hidden = catalogue[8]
    hidden.published = False
    hidden.save()
    profile_id = hidden.pk if forged == "unpublished" else 99999
    response = post(alice_client, name="sneaky", profile=profile_id)
    assert response.status_code == 400
    assert "This size is not available to you." in response.content.decode()
    assert_nothing_written()


def test_it_refuses_a_launch_over_the_gpu_quota_and_says_why(alice_client, alice, catalogue):
    workspace = workspace_of(alice)
    workspace.max_gpus = 8
    workspace.save()
    assert post(alice_client, name="train-a", profile=catalogue[4].pk).status_code == 302
    assert post(alice_client, name="train-b", profile=catalogue[2].pk).status_code == 302
    audit_rows = AuditEvent.objects.count()

    response = post(alice_client, name="train-c", profile=catalogue[4].pk)

    assert response.status_code == 400
    assert (
        "Your quota is 8 GPUs and 6 are in use by train-a and train-b; this size needs 4."
        in response.content.decode()
    )
    assert Instance.objects.count() == 2
    assert AuditEvent.objects.count() == audit_rows


def test_it_refuses_a_launch_over_the_instance_quota(alice_client, alice, catalogue):
    workspace = workspace_of(alice)
    workspace.max_instances = 1
    workspace.save()
    post(alice_client, name="only", profile=catalogue[1].pk)
    response = post(alice_client, name="another", profile=catalogue[1].pk)
    assert (
        "Your quota is 1 instance and 1 is in use by only; delete one to launch another."
        in response.content.decode()
    )
    assert Instance.objects.count() == 1


def test_sizes_that_do_not_fit_are_shown_disabled_with_the_reason(
    alice_client, alice, catalogue
):
    workspace = workspace_of(alice)
    workspace.max_gpus = 4
    workspace.save()
    page = alice_client.get(NEW).content.decode()
    assert page.count('name="profile"') == 5
    assert page.count("size-card disabled") == 2  # 6 and 8 GPUs
    assert "Needs 8 GPUs; only 4 GPUs of 4 left." in page


def test_a_valid_launch_records_who_and_from_where(alice_client, alice, catalogue):
    response = alice_client.post(
        NEW, {"name": "train-a", "description": "first try", "profile": catalogue[2].pk},
        REMOTE_ADDR="192.0.2.7",
    )
    instance = Instance.objects.get()
    assert response["Location"] == reverse("instances:detail", args=[instance.pk])
    assert (instance.gpus, instance.profile, instance.launched_by) == (2, catalogue[2], alice)
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.ip_address) == (
        "instance.launched", alice, "192.0.2.7"
    )


def test_profiles_are_ordered_as_the_admin_sorted_them(alice_client, catalogue):
    ComputeProfile.objects.filter(gpus=8).update(sort_order=-1)
    page = alice_client.get(NEW).content.decode()
    assert page.index("Full node · 8 GPUs") < page.index("Small · 1 GPU")


def test_the_quota_refusal_sits_on_the_size_field_and_marks_it(alice_client, alice, catalogue):
    workspace = workspace_of(alice)
    workspace.max_gpus = 4
    workspace.save()
    assert post(alice_client, name="train-a", profile=catalogue[2].pk).status_code == 302

    page = post(alice_client, name="train-b", profile=catalogue[4].pk).content.decode()

    sizes = page.split('<fieldset class="sizes invalid"')[1].split("</fieldset>")[0]
    assert 'aria-invalid="true"' in sizes.split(">")[0]
    assert "Your quota is 4 GPUs and 2 are in use by train-a; this size needs 4." in sizes


def test_a_bad_name_is_marked_on_its_field(alice_client, catalogue):
    page = post(alice_client, name="Bad_Name", profile=catalogue[1].pk).content.decode()
    field = page.split('<div class="field invalid">')[1].split("</div>")[0]
    assert 'name="name"' in field and 'aria-invalid="true"' in field
    assert "Use lowercase letters" in field


def test_the_wizard_has_three_numbered_sections_and_a_summary_of_the_cost(
    alice_client, alice, catalogue
):
    page = alice_client.get(NEW).content.decode()
    for number, title in ((1, "Name and description"), (2, "Size"), (3, "Review and launch")):
        assert f'<span class="step-number">{number}</span> {title}' in page
    assert "Pick a size to see what it takes from your quota" in page
    # Each card carries its own summary, which the page shows once it is picked.
    assert ("Medium · 2 GPUs: Takes 2 GPUs and 1 instance from your quota. Left after launch: "
            "6 of 8 GPUs and 4 of 5 instances.") in page

    page = post(alice_client, name="Bad_Name", profile=catalogue[2].pk).content.decode()
    summary = page.split('id="launch-summary"')[1].split("</p>")[0]
    assert "Left after launch: 6 of 8 GPUs and 4 of 5 instances." in summary


def test_local_size_cards_never_promise_more_than_this_machine(alice_client, catalogue):
    from clusters.backends.local import machine_limits

    machine = machine_limits()
    page = alice_client.get(NEW).content.decode()
    full_node = page.split('<span class="size-name">Full node · 8 GPUs')[1].split("</label>")[0]
    assert f"up to {min(64, machine.cpus)} CPU" in full_node
    assert f"up to {min(512, machine.memory_gib)} GiB memory" in full_node
    assert "limits on this machine" in page and "not reservations" in page


def test_a_local_instance_reads_the_same_figures_on_every_page_the_api_and_the_admin(
        alice_client, alice, catalogue, admin_client):
    """One function (instances.selectors.allotment) says what an instance gets: here the
    size's 64 CPU and 512 GiB capped at this machine's, everywhere."""
    from clusters.backends.local import machine_limits
    from gpupaas_cli.main import _up_to

    from .conftest import running_instance
    from .test_api import Api, token_for

    machine = machine_limits()
    cpu, memory = min(64, machine.cpus), min(512, machine.memory_gib)
    full = ComputeProfile.objects.get(name="gpu-8")
    instance = running_instance(alice, full, "big")
    words = f"up to {cpu} CPU · up to {memory} GiB memory"

    detail = alice_client.get(f"/instances/{instance.pk}/").content.decode()
    assert f"up to {cpu} core" in detail and f"up to {memory} GiB" in detail
    form = alice_client.get(f"/notebooks/new/?instance={instance.pk}").content.decode()
    assert f"big (8 GPUs, {words})" in form
    api = Api(token_for(alice))
    shown = api("GET", f"/instances/{instance.pk}").json()
    assert (shown["cpu"], shown["memory_gib"], shown["shared_limits"]) == (cpu, memory, True)
    assert f"{_up_to(shown)}{shown['cpu']:g}" == f"up to {cpu}"  # gpupaas show
    [card] = [p for p in api("GET", "/profiles").json() if p["name"] == "gpu-8"]
    assert (card["cpu"], card["memory_gib"], card["shared_limits"]) == (cpu, memory, True)
    admin = admin_client.get("/admin/instances/computeprofile/").content.decode()
    assert f"8 GPUs · {words}" in admin


# --- the wizard's own submit (htmx): the reasons alone, not the page again ---------------------

HTMX = {"HTTP_HX_REQUEST": "true"}


def test_the_wizard_submits_with_htmx_into_its_feedback_area(alice_client, catalogue):
    page = alice_client.get(NEW).content.decode()
    assert 'hx-post="/instances/new/"' in page
    assert 'hx-target="#launch-feedback"' in page
    assert '<div id="launch-feedback">' in page


def test_a_refusal_sent_by_the_wizard_answers_with_every_reason_alone(
        alice_client, alice, catalogue, django_assert_max_num_queries):
    ws = workspace_of(alice)
    ws.max_gpus = 4
    ws.save()
    alice_client.post(NEW, {"name": "train-a", "profile": catalogue[4].pk})
    with django_assert_max_num_queries(6):  # no size cards, quota bar or layout to work out
        response = alice_client.post(NEW, {"name": "Bad_Name", "profile": catalogue[2].pk,
                                           "description": "x" * 501}, **HTMX)
    assert response.status_code == 400
    body = response.content.decode()
    assert body.startswith('<div id="launch-feedback">') and "<html" not in body
    assert 'role="alert"' in body
    assert '<a href="#id_name">Name</a>: Use lowercase letters, digits and hyphens' in body
    assert '<a href="#id_description">Description</a>: Ensure this value has at most 500' in body
    quota = alice_client.post(NEW, {"name": "train-b", "profile": catalogue[2].pk}, **HTMX)
    assert quota.status_code == 400
    assert ('<a href="#step-2">Size</a>: Your quota is 4 GPUs and 4 are in use by train-a; '
            "this size needs 2.") in quota.content.decode()
    assert list(Instance.objects.values_list("name", flat=True)) == ["train-a"]


def test_a_launch_sent_by_the_wizard_takes_the_browser_to_the_instance(alice_client, catalogue):
    response = alice_client.post(NEW, {"name": "train", "profile": catalogue[1].pk}, **HTMX)
    assert response.status_code == 204
    instance = Instance.objects.get(name="train")
    assert response["HX-Redirect"] == f"/instances/{instance.pk}/"


def test_a_refusal_of_a_full_workspace_costs_the_same_few_queries_however_many_it_holds(
        alice_client, alice, catalogue, django_assert_max_num_queries):
    """What a burst of refused launches costs each (the start of a class): the user and
    role, the workspace, the size (read once: the form's read vouches for the service) and
    one read of what the workspace holds; no lock, no transaction, no session query."""
    ws = workspace_of(alice)
    ws.max_gpus, ws.max_instances = 30, 100
    ws.save()
    for i in range(15):
        assert alice_client.post(NEW, {"name": f"job-{i}", "profile": catalogue[2].pk},
                                 **HTMX).status_code == 204
    with django_assert_max_num_queries(5) as queries:
        response = alice_client.post(NEW, {"name": "one-more", "profile": catalogue[2].pk},
                                     **HTMX)
    assert response.status_code == 400
    assert "Your quota is 30 GPUs and 30 are in use by job-0, job-1" in response.content.decode()
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert "FOR UPDATE" not in sql and "django_session" not in sql


def test_a_size_read_for_someone_else_is_asked_about_again(alice, bob, catalogue):
    """The service trusts a size only when it was read as launchable for the very user who
    launches: one read for alice does not let bob launch a size closed to him."""
    from django.contrib.auth.models import Group
    from django.core.exceptions import ValidationError

    from instances import services
    from instances.selectors import launchable_profiles

    researchers = Group.objects.create(name="Researchers")
    big = catalogue[8]
    big.groups.add(researchers)
    alice.groups.add(researchers)
    read_for_alice = launchable_profiles(user=alice).get(pk=big.pk)
    with pytest.raises(ValidationError, match="This size is not available to you."):
        services.launch_instance(workspace=workspace_of(bob), name="sneaky",
                                 profile=read_for_alice, by=bob)
    with pytest.raises(ValidationError, match="This size is not available to you."):
        services.launch_instance(workspace=workspace_of(bob), name="sneaky",
                                 profile=ComputeProfile.objects.get(pk=big.pk), by=bob)
    assert not Instance.objects.exists()
    assert services.launch_instance(workspace=workspace_of(alice), name="fine",
                                    profile=read_for_alice, by=alice).gpus == 8
