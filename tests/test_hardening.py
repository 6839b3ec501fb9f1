"""Hardening found by a penetration test: strict ids, exact decimal bounds, no email changes
in the portal, rate limits in a shared cache, security headers, and no deadlock when a
delete follows a launch."""

import pytest
from django.urls import reverse

from instances import services as instance_services
from notebooks.models import Notebook, NotebookProfile

from .conftest import workspace_of


def running(user, profile, name="train"):
    instance = instance_services.launch_instance(
        workspace=workspace_of(user), name=name, profile=profile, by=user)
    return instance_services.provision_instance(instance_id=instance.pk)


@pytest.mark.parametrize("wanted", ["²", "١", "12a", "", "-1", "+1", " 1"])
def test_a_notebook_filter_with_an_odd_instance_id_is_a_404_not_a_500(alice_client, wanted):
    assert alice_client.get("/notebooks/", {"instance": wanted}).status_code == 404


def test_a_notebook_with_the_smallest_cpu_allowed_is_accepted(alice_client, alice, catalogue):
    minimal = NotebookProfile.objects.get(name="minimal")
    instance = running(alice, catalogue[1])
    response = alice_client.post(reverse("notebooks:new"), {
        "name": "tiny", "profile": minimal.pk, "instance": instance.pk, "cpu": "0.1"})
    assert response.status_code == 302, response.content.decode()
    assert str(Notebook.objects.get(name="tiny").cpu) == "0.1"
    below = alice_client.post(reverse("notebooks:new"), {
        "name": "tinier", "profile": minimal.pk, "instance": instance.pk, "cpu": "0.0"})
    assert "greater than or equal to 0.1" in below.content.decode()
