"""The services catalogue on the pages: deploying through the form, one room shared with
the instance's notebooks, per-group profiles, and a 404 for anyone without access."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from clusters.models import Cluster
from notebooks import services
from notebooks.models import NotebookProfile, Service, ServiceProfile
from workspaces.models import AuditEvent

from .conftest import running_instance


@pytest.fixture
def tensorboard(catalogue) -> ServiceProfile:
    return ServiceProfile.objects.get(name="tensorboard")


@pytest.fixture
def alices_service(alice, catalogue, tensorboard) -> Service:
    instance = running_instance(alice, catalogue[2], "train")
    return services.deploy_service(instance=instance, name="curves", profile=tensorboard,
                                   by=alice)


def test_the_catalogue_is_seeded_and_deploying_from_the_form_lands_on_its_page(
        alice_client, alice, catalogue, tensorboard):
    instance = running_instance(alice, catalogue[2], "train")
    form = alice_client.get(f"/services/new/?instance={instance.pk}").content.decode()
    assert "TensorBoard" in form and "MLflow tracking server" in form
    response = alice_client.post("/services/new/", {
        "name": "curves", "profile": tensorboard.pk, "instance": instance.pk})
    service = Service.objects.get()
    assert response["Location"] == reverse("services:detail", args=[service.pk])
    assert (service.cpu, service.memory_gib, service.gpus) == (
        tensorboard.default_cpu, tensorboard.default_memory_gib, 0)
    assert AuditEvent.objects.filter(action="service.deploying", actor=alice).exists()
    page = alice_client.get(response["Location"]).content.decode()
    assert "Deploying" in page and 'id="service-status"' in page
    assert "Preparing environment" in page  # the steps users watch
    listing = alice_client.get("/services/").content.decode()
    assert "curves" in listing and "TensorBoard" in listing
    # The instance's page offers it.
    detail = alice_client.get(reverse("instances:detail", args=[instance.pk])).content.decode()
    assert f'/services/new/?instance={instance.pk}' in detail


def test_services_and_notebooks_share_the_instances_room(alice, catalogue, tensorboard):
    instance = running_instance(alice, catalogue[2], "train")
    minimal = NotebookProfile.objects.get(name="minimal")
    services.deploy_notebook(instance=instance, name="nb", profile=minimal, by=alice,
                             cpu=instance.cpu - 1, memory_gib=1, gpus=0)
    with pytest.raises(Exception, match="this service needs 2 CPU"):
        services.deploy_service(instance=instance, name="curves", profile=tensorboard,
                                by=alice, cpu=2)
    assert not Service.objects.exists()
    fits = services.deploy_service(instance=instance, name="curves", profile=tensorboard,
                                   by=alice, cpu=1, memory_gib=1)
    with pytest.raises(Exception, match="used by nb, curves"):
        services.deploy_notebook(instance=instance, name="more", profile=minimal, by=alice,
                                 cpu=1, memory_gib=1)
    assert fits.gpus == 0  # TensorBoard asks for none: no GPU taken by default


def test_a_service_that_cannot_run_on_a_cluster_is_refused_in_words(alice, catalogue,
                                                                   tensorboard):
    instance = running_instance(alice, catalogue[2], "train")
    kube = Cluster.objects.create(name="gpu-prod", backend=Cluster.Backend.KUBERNETES)
    assert services.service_problem(tensorboard, kube) == ""  # the seeded chart
    ServiceProfile.objects.filter(pk=tensorboard.pk).update(chart="")
    tensorboard.refresh_from_db()
    assert services.service_problem(tensorboard, kube) == (
        "it has no Helm chart for Kubernetes clusters.")
    ServiceProfile.objects.filter(pk=tensorboard.pk).update(local_command="")
    tensorboard.refresh_from_db()
    with pytest.raises(Exception, match="TensorBoard cannot run on train: it has no command"):
        services.deploy_service(instance=instance, name="x", profile=tensorboard, by=alice)


def test_a_group_only_service_is_offered_to_that_group_alone(alice_client, alice, bob,
                                                             catalogue, tensorboard, client):
    team = Group.objects.create(name="vision-team")
    tensorboard.groups.add(team)
    running_instance(alice, catalogue[2], "train")
    assert "TensorBoard" not in alice_client.get("/services/new/").content.decode()
    alice.groups.add(team)
    assert "TensorBoard" in alice_client.get("/services/new/").content.decode()


@pytest.mark.parametrize(("method", "route"), [
    ("get", "services:detail"), ("get", "services:status"), ("get", "services:delete"),
    ("post", "services:delete"), ("post", "services:retry"), ("get", "services:open")])
def test_bob_gets_404_on_alices_service(client, bob, alices_service, method, route):
    client.force_login(bob)
    response = getattr(client, method)(reverse(route, args=[alices_service.pk]))
    assert response.status_code == 404
    assert b"curves" not in response.content
    alices_service.refresh_from_db()
    assert alices_service.status == Service.Status.DEPLOYING


def test_open_waits_for_running_and_delete_asks_first(alice_client, alices_service):
    opened = alice_client.get(reverse("services:open", args=[alices_service.pk]), follow=True)
    assert "curves is deploying; it opens once it runs." in opened.content.decode()
    url = reverse("services:delete", args=[alices_service.pk])
    assert "cannot be undone" in alice_client.get(url).content.decode()
    done = alice_client.post(url, follow=True).content.decode()
    assert "You asked to delete curves." in done
    alices_service.refresh_from_db()
    assert alices_service.status == Service.Status.DELETING


def test_a_service_that_serves_models_offers_them_on_the_form(alice_client, alice, catalogue):
    instance = running_instance(alice, catalogue[2], "train")
    form = alice_client.get(f"/services/new/?instance={instance.pk}").content.decode()
    assert '<select name="model"' in form
    assert '<option value="Qwen/Qwen2.5-0.5B-Instruct">' in form
    vllm = ServiceProfile.objects.get(name="vllm")
    response = alice_client.post("/services/new/", {
        "name": "chat", "profile": vllm.pk, "instance": instance.pk, "model": "gpt-5"})
    assert response.status_code == 400
    assert "vLLM inference endpoint serves one of: Qwen/Qwen2.5-0.5B-Instruct" in (
        response.content.decode())
    assert not Service.objects.exists()
    # Where no service offers a model, the form asks for none.
    ServiceProfile.objects.filter(pk=vllm.pk).update(model_names="")
    assert 'name="model"' not in alice_client.get("/services/new/").content.decode()
