"""Administrators register clusters: the kubeconfig is stored encrypted and never shown back,
and "Test connection" says what the cluster offers, or why it cannot be reached."""

import pytest

from clusters.models import Cluster
from workspaces.models import AuditEvent

from .kit import kubeemu

ADD = "/admin/clusters/cluster/add/"


@pytest.fixture
def emu():
    with kubeemu.start() as emulator:
        yield emulator


def form(**overrides) -> dict:
    data = {
        "display_name": "GPU farm", "name": "gpu-farm", "backend": "kubernetes",
        "description": "", "kubeconfig": "", "ingress_domain": "apps.example.com",
        "ingress_class": "nginx", "ingress_namespace": "ingress-nginx",
        "gpu_resource_name": "nvidia.com/gpu", "gpu_model_label": "nvidia.com/gpu.product",
        "storage_class": "", "capi_namespace": "gpupaas-clusters", "shell_image": "",
        "shell_reaches_portal": "on",
    }
    return {**data, **overrides}


def test_a_kubeconfig_is_stored_encrypted_and_never_shown_back(client, admin_user, emu, tmp_path):
    client.force_login(admin_user)
    text = emu.kubeconfig(tmp_path / "config").read_text()
    response = client.post(ADD, form(kubeconfig=text))
    assert response.status_code == 302, response.content.decode()[:2000]

    cluster = Cluster.objects.get(name="gpu-farm")
    assert cluster.kubeconfig == text.strip()
    assert emu.url not in cluster.kubeconfig_encrypted
    change = client.get(f"/admin/clusters/cluster/{cluster.pk}/change/").content.decode()
    assert emu.url not in change

    # Saving again without pasting a kubeconfig keeps the stored one.
    client.post(f"/admin/clusters/cluster/{cluster.pk}/change/", form(ingress_class="traefik"))
    cluster.refresh_from_db()
    assert cluster.kubeconfig == text.strip() and cluster.ingress_class == "traefik"

    # Both saves are in the audit trail, by the administrator; the kubeconfig by name only.
    added, changed = AuditEvent.objects.filter(object_id=str(cluster.pk)).order_by("id")
    assert (added.action, added.actor) == ("cluster.added", admin_user)
    assert added.data["changes"]["kubeconfig_encrypted"] == "changed"
    assert emu.url not in str(added.data)
    assert (changed.action, changed.data["changes"]) == (
        "cluster.changed", {"ingress_class": ["nginx", "traefik"]})


@pytest.mark.parametrize(
    ("kubeconfig", "message"),
    [
        ("clusters: [unclosed", "This is not valid YAML"),
        ("just: a map", "This is not a kubeconfig: it lists no clusters."),
        ("", "A Kubernetes cluster needs a kubeconfig or in-cluster credentials."),
    ],
)
def test_bad_credentials_are_refused_on_the_form(client, admin_user, kubeconfig, message):
    client.force_login(admin_user)
    response = client.post(ADD, form(kubeconfig=kubeconfig))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Cluster.objects.exists()


def test_test_connection_reports_the_server_or_the_error(client, admin_user, emu, tmp_path,
                                                         settings):
    settings.KUBE_RETRIES = 0
    client.force_login(admin_user)
    good = Cluster(name="good", display_name="Good", backend="kubernetes")
    good.set_kubeconfig(emu.kubeconfig(tmp_path / "good").read_text())
    good.save()
    bad = Cluster(name="bad", display_name="Bad", backend="kubernetes")
    bad.set_kubeconfig(emu.kubeconfig(tmp_path / "bad").read_text().replace(
        emu.url, "http://127.0.0.1:9"))
    bad.save()

    response = client.post(
        "/admin/clusters/cluster/",
        {"action": "test_connection", "_selected_action": [good.pk, bad.pk]}, follow=True,
    )
    page = response.content.decode()
    assert "Good: Connected: Kubernetes v" in page
    assert "allocatable GPUs: none." in page
    assert "Bad: The cluster Bad is not answering" in page


def test_an_exec_plugin_in_a_pasted_kubeconfig_needs_the_setting(
        client, admin_user, emu, tmp_path, settings):
    """An administrator's kubeconfig may run a credential plugin on the portal's machine only
    where KUBECONFIG_EXEC_ALLOWED says so; refused on the form, nothing saved, nothing run."""
    import yaml

    marker = tmp_path / "ran"
    config = yaml.safe_load(emu.kubeconfig(tmp_path / "config").read_text())
    config["users"][0]["user"] = {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": "sh",
        "args": ["-c", f"touch {marker}; echo '{{\"apiVersion\": "
                       f"\"client.authentication.k8s.io/v1\", \"kind\": \"ExecCredential\", "
                       f"\"status\": {{\"token\": \"t\"}}}}'"],
        "interactiveMode": "Never"}}
    client.force_login(admin_user)
    response = client.post(ADD, form(kubeconfig=yaml.safe_dump(config)))
    assert response.status_code == 200
    assert ("This kubeconfig cannot be used: its user " in response.content.decode()
            and "runs a program (exec); set KUBECONFIG_EXEC_ALLOWED=true to allow exec "
            "plugins in administrators&#x27; kubeconfigs." in response.content.decode())
    assert not Cluster.objects.exists() and not marker.exists()

    settings.KUBECONFIG_EXEC_ALLOWED = True
    response = client.post(ADD, form(kubeconfig=yaml.safe_dump(config)), follow=True)
    assert Cluster.objects.filter(name="gpu-farm").exists(), response.content.decode()[:3000]
    assert marker.exists()  # its plugin ran, as the administrator allowed


def test_a_pasted_kubeconfig_that_impersonates_is_refused(client, admin_user, emu, tmp_path):
    """The client ignores `as:`, so the portal would act as the file's base identity, not the
    one it names (nor the one the admission policies confine): refused on the form."""
    import yaml

    config = yaml.safe_load(emu.kubeconfig(tmp_path / "config").read_text())
    config["users"][0]["user"]["as"] = "system:serviceaccount:gpupaas-system:gpupaas-portal"
    client.force_login(admin_user)
    response = client.post(ADD, form(kubeconfig=yaml.safe_dump(config)))
    assert response.status_code == 200
    assert "impersonates (as:)" in response.content.decode()
    assert not Cluster.objects.exists()
