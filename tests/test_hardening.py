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


@pytest.mark.parametrize("who", ["alice", "admin_user"])
def test_nobody_adds_or_makes_primary_an_email_address_in_the_portal(client, request, who):
    from allauth.account.models import EmailAddress

    user = request.getfixturevalue(who)
    client.force_login(user)
    page = client.get("/accounts/email/")
    assert page.status_code == 200 and user.email in page.content.decode()

    added = client.post("/accounts/email/", {"action_add": "", "email": "carol@example.com"})
    primary = client.post("/accounts/email/", {"action_primary": "",
                                                "email": "carol@example.com"})

    assert added.status_code == primary.status_code == 403
    assert "cannot be added or changed here" in added.content.decode()
    assert not EmailAddress.objects.filter(email="carol@example.com").exists()
    user.refresh_from_db()
    assert user.email == f"{user.username}@example.com"


def test_the_social_sign_up_form_is_never_offered(client, db):
    page = client.get("/accounts/social/signup/")
    assert page.status_code == 403 and 'name="email"' not in page.content.decode()
    assert "Sign-up forms are not used" in page.content.decode()
