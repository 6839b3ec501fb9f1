"""Rotating SECRET_KEY and FIELD_ENCRYPTION_KEY (docs/operations.md): with the old key kept as
a fallback nothing stored becomes unreadable and nobody is signed out; `rotate_secrets`
re-encrypts everything, after which the old key can go."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from clusters.models import Cluster
from instances.models import Instance

from .conftest import running_instance

KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\n"


@pytest.fixture
def stored(settings, alice, catalogue, sandbox_root):
    """A cluster's kubeconfig and an instance's credentials, saved under the old key."""
    settings.FIELD_ENCRYPTION_KEY, settings.FIELD_ENCRYPTION_KEY_FALLBACKS = "old-key", []
    cluster = Cluster(name="gpu-east", display_name="GPU east", backend="kubernetes")
    cluster.set_kubeconfig(KUBECONFIG)
    cluster.save()
    instance = running_instance(alice, catalogue[1], "train")
    Instance.objects.filter(pk=instance.pk).update(
        kubeconfig_encrypted=cluster.kubeconfig_encrypted)
    return cluster, instance


def test_a_new_encryption_key_reads_the_old_secrets_through_its_fallback_then_rotates(
    settings, stored, capsys
):
    cluster, instance = stored
    settings.FIELD_ENCRYPTION_KEY = "new-key"
    with pytest.raises(ValueError, match="not among FIELD_ENCRYPTION_KEY_FALLBACKS"):
        _ = Cluster.objects.get(pk=cluster.pk).kubeconfig

    settings.FIELD_ENCRYPTION_KEY_FALLBACKS = ["old-key"]
    assert Cluster.objects.get(pk=cluster.pk).kubeconfig == KUBECONFIG
    call_command("rotate_secrets")
    assert "2 secret(s) re-encrypted" in capsys.readouterr().out

    settings.FIELD_ENCRYPTION_KEY_FALLBACKS = []  # the old key is gone for good
    assert Cluster.objects.get(pk=cluster.pk).kubeconfig == KUBECONFIG
    from clusters.crypto import decrypt
    assert decrypt(Instance.objects.get(pk=instance.pk).kubeconfig_encrypted) == KUBECONFIG


def test_rotation_names_what_no_key_reads_and_fails(settings, stored, capsys):
    settings.FIELD_ENCRYPTION_KEY, settings.FIELD_ENCRYPTION_KEY_FALLBACKS = "new-key", []

    with pytest.raises(CommandError, match="2 secret.* could not be read with any key"):
        call_command("rotate_secrets")
    assert "clusters.Cluster" in capsys.readouterr().err


def test_a_new_secret_key_keeps_people_signed_in_while_the_old_one_is_a_fallback(
    settings, client, alice
):
    from django.test import Client

    old, new = "old-secret-key-" + "x" * 40, "new-secret-key-" + "y" * 40
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = old, []
    client.force_login(alice)
    away = Client()
    away.force_login(alice)  # signed in, then away during the whole rotation

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = new, [old]
    assert client.get("/").status_code == 200  # still signed in: the session moves to the new key

    settings.SECRET_KEY_FALLBACKS = []
    assert client.get("/").status_code == 200
    assert away.get("/").status_code == 302  # only a session nobody used meanwhile ends
