"""Notebook pages: deploying through the form, clear refusals, and no access (or token) for
anyone but the instance's owner."""

import pytest
from django.urls import reverse

from instances import services as instance_services
from instances.models import Instance
from notebooks import services
from notebooks.models import Notebook, NotebookProfile
from workspaces.models import AuditEvent

from .conftest import workspace_of


def running(user, profile, name="train") -> Instance:
    instance = instance_services.launch_instance(
        workspace=workspace_of(user), name=name, profile=profile, by=user)
    return instance_services.provision_instance(instance_id=instance.pk)


@pytest.fixture
def minimal(catalogue) -> NotebookProfile:
    return NotebookProfile.objects.get(name="minimal")


@pytest.fixture
def alices_notebook(alice, catalogue, minimal) -> Notebook:
    return services.deploy_notebook(instance=running(alice, catalogue[2]), name="secret-nb",
                                    profile=minimal, by=alice)


def deploy(client, **data):
    return client.post(reverse("notebooks:new"), data)


def test_deploying_from_the_form_uses_the_profile_defaults(alice_client, alice, catalogue,
                                                           minimal):
    instance = running(alice, catalogue[2])
    page = alice_client.get(f"/notebooks/new/?instance={instance.pk}").content.decode()
    assert f'<option value="{instance.pk}" selected>' in page
    response = deploy(alice_client, name="explore", profile=minimal.pk, instance=instance.pk)
    notebook = Notebook.objects.get()
    assert response["Location"] == reverse("notebooks:detail", args=[notebook.pk])
    # The profile's CPU and memory; GPUs: the profile asks for none, so the instance's free ones.
    assert minimal.default_gpus == 0 and instance.gpus > 0
    assert (notebook.cpu, notebook.memory_gib, notebook.gpus) == (
        minimal.default_cpu, minimal.default_memory_gib, instance.gpus)
    assert notebook.gpu_indices == instance.gpu_indices
    assert notebook.image == minimal.image
    assert AuditEvent.objects.filter(action="notebook.deploying", actor=alice).exists()


def test_gpus_default_to_what_no_other_notebook_holds_and_zero_means_none(alice, catalogue,
                                                                         minimal):
    instance = running(alice, catalogue[2])
    first = services.deploy_notebook(instance=instance, name="first", profile=minimal, by=alice,
                                     gpus=1)
    rest = services.deploy_notebook(instance=instance, name="rest", profile=minimal, by=alice,
                                    cpu=1, memory_gib=1)
    assert rest.gpus == instance.gpus - 1
    assert sorted(first.gpu_indices + rest.gpu_indices) == sorted(instance.gpu_indices)
    none = services.deploy_notebook(instance=instance, name="cpu-only", profile=minimal,
                                    by=alice, cpu=1, memory_gib=1, gpus=0)
    assert (none.gpus, none.gpu_indices) == (0, [])


def test_a_gpu_notebook_gets_the_cuda_image(alice, catalogue):
    tensorflow = NotebookProfile.objects.get(name="tensorflow")
    notebook = services.deploy_notebook(instance=running(alice, catalogue[2]), name="tf",
                                        profile=tensorflow, by=alice, gpus=1)
    assert notebook.image == tensorflow.gpu_image and notebook.image.endswith(":cuda-latest")


def test_a_notebook_that_does_not_fit_is_refused_with_what_is_used_and_left(
    alice_client, alice, catalogue, minimal
):
    instance = running(alice, catalogue[1])  # 8 CPU, 64 GiB, 1 GPU
    assert deploy(alice_client, name="a", profile=minimal.pk, instance=instance.pk, cpu=6,
                  memory_gib=32, gpus=1).status_code == 302

    response = deploy(alice_client, name="b", profile=minimal.pk, instance=instance.pk, cpu=4,
                      memory_gib=16, gpus=0)

    assert response.status_code == 400
    assert ("Does not fit: the instance has 8 CPU, 64 GiB memory and 1 GPU; 6 CPU, 32 GiB and "
            "1 GPU are used by a; this notebook needs 4 CPU, 16 GiB and no GPU.") in (
        response.content.decode())
    assert Notebook.objects.count() == 1


@pytest.mark.parametrize("problem", ["another users instance", "not running", "bad name"])
def test_it_refuses_bad_input_and_writes_nothing(alice_client, alice, bob, catalogue, minimal,
                                                 problem):
    instance = running(alice, catalogue[1])
    data = {"name": "ok", "profile": minimal.pk, "instance": instance.pk}
    if problem == "another users instance":
        data["instance"] = running(bob, catalogue[1], name="bobs").pk
        message = "Pick one of your running instances."
    elif problem == "not running":
        Instance.objects.filter(pk=instance.pk).update(status=Instance.Status.PROVISIONING)
        message = "Pick one of your running instances."
    else:
        data["name"] = "Bad_Name"
        message = "Use lowercase letters, digits and hyphens"
    events = AuditEvent.objects.count()
    response = deploy(alice_client, **data)
    assert response.status_code == 400 and message in response.content.decode()
    assert Notebook.objects.count() == 0 and AuditEvent.objects.count() == events


def test_no_running_instance_leads_to_launching_one(alice_client, catalogue):
    page = alice_client.get("/notebooks/new/").content.decode()
    assert "No running instance yet" in page and reverse("instances:new") in page


@pytest.mark.parametrize(
    ("method", "route"),
    [("get", "notebooks:detail"), ("get", "notebooks:status"), ("get", "notebooks:delete"),
     ("post", "notebooks:delete"), ("post", "notebooks:retry")],
)
def test_bob_gets_404_on_alices_notebook_and_never_its_token(client, bob, alices_notebook,
                                                            method, route):
    client.force_login(bob)
    response = getattr(client, method)(reverse(route, args=[alices_notebook.pk]))
    assert response.status_code == 404
    assert alices_notebook.token.encode() not in response.content
    assert b"secret-nb" not in response.content
    alices_notebook.refresh_from_db()
    assert alices_notebook.status == Notebook.Status.DEPLOYING


def test_bob_cannot_list_alices_instance_notebooks(client, bob, alices_notebook):
    client.force_login(bob)
    assert client.get(f"/notebooks/?instance={alices_notebook.instance_id}").status_code == 404
    assert client.get("/notebooks/?instance=not-a-number").status_code == 404
    page = client.get("/notebooks/").content.decode()
    assert "secret-nb" not in page


def test_alice_sees_url_token_and_open_once_running(alice_client, alices_notebook):
    Notebook.objects.filter(pk=alices_notebook.pk).update(
        status=Notebook.Status.RUNNING, step="reachable", url="http://127.0.0.1:9999/lab")
    page = alice_client.get(reverse("notebooks:detail", args=[alices_notebook.pk])).content
    page = page.decode()
    # A local notebook is shown at its origin on the portal, never at the server's port.
    origin = f"http://{alices_notebook.host_label}.localhost"
    assert f"{origin}/lab" in page and "127.0.0.1:9999" not in page
    assert f'value="{alices_notebook.token}"' in page
    assert f"{origin}/lab?token={alices_notebook.token}" in page
    # The list offers Open (through the portal, which signs the browser in there) and a
    # Copy URL that says it carries the token.
    listing = alice_client.get("/notebooks/").content.decode()
    row = listing.split(f">{alices_notebook.name}</a>")[1].split("</tr>")[0]
    assert f'href="/notebooks/{alices_notebook.pk}/open/"' in row
    assert ">Open</a>" in row and ">Copy URL with token</button>" in row
    # Still live, at the slow pace: a delete from another tab shows.
    assert 'hx-trigger="every 10s"' in page.split('id="notebook-status"')[1].split(">")[0]


def test_the_lists_show_name_profile_instance_status_and_date(alice_client, alices_notebook):
    page = alice_client.get("/notebooks/").content.decode()
    for heading in ("Name", "Profile", "Instance", "Status", "Created"):
        assert f"<th>{heading}</th>" in page
    assert "secret-nb" in page and "Minimal" in page and "Deploying" in page
    assert 'hx-trigger="every 2s"' in page  # live while deploying
    on_instance = alice_client.get(f"/notebooks/?instance={alices_notebook.instance_id}")
    assert "secret-nb" in on_instance.content.decode()


def test_deleting_asks_first_then_stops_it(alice_client, alices_notebook):
    url = reverse("notebooks:delete", args=[alices_notebook.pk])
    assert "cannot be undone" in alice_client.get(url).content.decode()
    response = alice_client.post(url, follow=True)
    assert f"You asked to delete {alices_notebook.name}." in response.content.decode()
    alices_notebook.refresh_from_db()
    assert alices_notebook.status == Notebook.Status.DELETING

    # Confirmed again from a tab left open: it says so instead of deleting twice.
    again = alice_client.post(url, follow=True).content.decode()
    assert f"{alices_notebook.name} is already being deleted." in again
    assert "You asked to delete" not in again


def test_a_failed_notebook_offers_retry_and_starts_again(alice_client, alice, alices_notebook):
    Notebook.objects.filter(pk=alices_notebook.pk).update(
        status=Notebook.Status.FAILED, step="starting", status_message="JupyterLab stopped.")
    detail = reverse("notebooks:detail", args=[alices_notebook.pk])
    retry = reverse("notebooks:retry", args=[alices_notebook.pk])
    page = alice_client.get(detail).content.decode()
    assert f'action="{retry}"' in page and ">Retry</button>" in page

    response = alice_client.post(retry, follow=True)
    assert response.redirect_chain[-1][0] == detail
    assert f"You asked to retry {alices_notebook.name}." in response.content.decode()
    alices_notebook.refresh_from_db()
    assert (alices_notebook.status, alices_notebook.step) == (Notebook.Status.DEPLOYING, "")
    assert AuditEvent.objects.filter(action="notebook.deploying", actor=alice,
                                     object_id=str(alices_notebook.pk)).count() == 2
    # Asked again from a tab left open: it says why nothing happens.
    again = alice_client.post(retry, follow=True).content.decode()
    assert f"{alices_notebook.name} is deploying, not failed." in again
    assert ">Retry</button>" not in alice_client.get(detail).content.decode()


def test_retry_refuses_when_the_instance_is_not_running(alice_client, alices_notebook):
    Notebook.objects.filter(pk=alices_notebook.pk).update(status=Notebook.Status.FAILED)
    Instance.objects.filter(pk=alices_notebook.instance_id).update(status=Instance.Status.FAILED)
    page = alice_client.post(reverse("notebooks:retry", args=[alices_notebook.pk]),
                             follow=True).content.decode()
    assert f"Cannot retry {alices_notebook.name}: its instance train is failed." in page
    alices_notebook.refresh_from_db()
    assert alices_notebook.status == Notebook.Status.FAILED


def test_a_local_notebook_names_no_container_image(alice_client, alices_notebook):
    assert not alices_notebook.instance.has_kubernetes_api
    page = alice_client.get(reverse("notebooks:detail", args=[alices_notebook.pk])).content
    assert alices_notebook.image.encode() not in page
    assert b"a Python environment on this machine" in page
