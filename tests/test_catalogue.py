"""The catalogue the administrator curates, as users see it on the next request."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from clusters.models import Cluster
from instances.models import ComputeProfile, Instance
from instances.services import launch_instance
from notebooks.models import NotebookProfile

from .conftest import workspace_of


def test_seeding_creates_the_local_cluster_five_sizes_and_four_notebook_profiles(catalogue):
    assert sorted(catalogue) == [1, 2, 4, 6, 8]
    assert list(Cluster.objects.values_list("backend", flat=True)) == ["local"]
    assert set(NotebookProfile.objects.values_list("display_name", flat=True)) == {
        "Minimal", "Data Science", "Spark", "TensorFlow"
    }


def test_publishing_a_profile_shows_it_on_the_next_request(alice_client, catalogue):
    cluster = Cluster.objects.get()
    profile = ComputeProfile.objects.create(
        name="gpu-3", display_name="Odd · 3 GPUs", cluster=cluster, gpus=3, cpu=24,
        memory_gib=192,
    )
    assert "Odd · 3 GPUs" not in alice_client.get("/instances/new/").content.decode()

    profile.published = True
    profile.save()
    assert "Odd · 3 GPUs" in alice_client.get("/instances/new/").content.decode()

    profile.published = False
    profile.save()
    assert "Odd · 3 GPUs" not in alice_client.get("/instances/new/").content.decode()


def test_unpublishing_touches_nothing_running(alice, catalogue):
    instance = launch_instance(
        workspace=workspace_of(alice), name="keep", profile=catalogue[1], by=alice
    )
    ComputeProfile.objects.filter(pk=catalogue[1].pk).update(published=False)
    instance.refresh_from_db()
    assert instance.status == Instance.Status.PENDING and instance.profile == catalogue[1]


def test_admin_publishes_and_unpublishes_with_actions(client, admin_user, catalogue):
    client.force_login(admin_user)
    url = reverse("admin:instances_computeprofile_changelist")
    ids = [catalogue[1].pk, catalogue[2].pk]
    client.post(url, {"action": "unpublish", "_selected_action": ids})
    assert not ComputeProfile.objects.filter(pk__in=ids, published=True).exists()
    client.post(url, {"action": "publish", "_selected_action": ids})
    assert ComputeProfile.objects.filter(pk__in=ids, published=True).count() == 2


def test_an_empty_catalogue_tells_the_user_whom_to_ask(alice_client, db):
    page = alice_client.get("/instances/new/").content.decode()
    assert "Ask your administrator to publish a compute profile." in page


@pytest.mark.django_db
def test_bootstrap_creates_admin_and_demo_once_each_with_its_own_password(capsys, monkeypatch):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    call_command("bootstrap")
    out = capsys.readouterr().out
    admin_password = out.split("admin  password: ")[1].split()[0]
    demo_password = out.split("demo   password: ")[1].split()[0]
    assert admin_password != demo_password
    User = get_user_model()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(admin_password)
    assert not admin.check_password(demo_password)
    demo = User.objects.get(username="demo")
    assert demo.check_password(demo_password) and not demo.is_staff
    assert ComputeProfile.objects.filter(published=True).count() == 5

    call_command("bootstrap")
    assert "password" not in capsys.readouterr().out
    assert User.objects.count() == 2


@pytest.mark.django_db
def test_bootstrap_takes_the_password_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "from-the-env-1234")
    monkeypatch.setenv("ADMIN_PASSWORD", "admin-from-the-env-5678")
    call_command("bootstrap")
    out = capsys.readouterr().out
    assert "from-the-env-1234" not in out and "the one in ADMIN_PASSWORD" in out
    assert get_user_model().objects.get(username="demo").check_password("from-the-env-1234")
    assert get_user_model().objects.get(username="admin").check_password(
        "admin-from-the-env-5678")
