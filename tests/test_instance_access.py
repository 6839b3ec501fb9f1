"""Every instance URL answers 404 to anyone but the owner; nothing leaks."""

import pytest
from django.urls import reverse

from instances import services
from instances.models import Instance
from workspaces.models import AuditEvent

from .conftest import workspace_of


@pytest.fixture
def alices_instance(alice, catalogue) -> Instance:
    return services.launch_instance(
        workspace=workspace_of(alice), name="secret-model", profile=catalogue[1], by=alice
    )


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("get", "instances:detail"),
        ("get", "instances:status"),
        ("get", "instances:delete"),
        ("post", "instances:delete"),
    ],
)
def test_bob_gets_404_on_alices_instance(client, bob, alices_instance, method, route):
    client.force_login(bob)
    response = getattr(client, method)(reverse(route, args=[alices_instance.pk]))
    assert response.status_code == 404
    assert b"secret-model" not in response.content
    alices_instance.refresh_from_db()
    assert alices_instance.status == Instance.Status.PENDING


def test_bobs_list_and_landing_do_not_show_alices_instance(client, bob, alices_instance):
    client.force_login(bob)
    for url in (reverse("instances:list"), reverse("portal:landing")):
        response = client.get(url)
        assert response.status_code == 200
        assert b"secret-model" not in response.content


def test_a_bad_delete_by_bob_writes_no_audit(client, bob, alices_instance):
    client.force_login(bob)
    client.post(reverse("instances:delete", args=[alices_instance.pk]))
    assert not AuditEvent.objects.filter(action="instance.deleting").exists()


@pytest.mark.parametrize("url", ["/", "/instances/", "/instances/new/", "/instances/1/"])
def test_anonymous_visitors_are_sent_to_login(client, db, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_alice_sees_and_deletes_her_own_instance(alice_client, alices_instance):
    detail = alice_client.get(reverse("instances:detail", args=[alices_instance.pk]))
    assert detail.status_code == 200 and b"secret-model" in detail.content

    confirm = alice_client.get(reverse("instances:delete", args=[alices_instance.pk]))
    assert b"cannot be undone" in confirm.content

    response = alice_client.post(reverse("instances:delete", args=[alices_instance.pk]))
    assert response.status_code == 302
    alices_instance.refresh_from_db()
    assert alices_instance.status == Instance.Status.DELETING
    listing = alice_client.get(reverse("instances:list"))
    assert b"Deleting" in listing.content


def test_a_poll_after_the_session_ended_moves_the_whole_page_to_sign_in(client, alices_instance):
    url = reverse("instances:status", args=[alices_instance.pk])
    response = client.get(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    assert response["HX-Redirect"] == f"/accounts/login/?next={url}"
