"""Virtual and dedicated clusters as they are really run (issue 10): a vcluster is a Flux
HelmRelease of the pinned chart, a dedicated cluster a Cluster API v1beta2 Cluster with its
add-ons from CAAPH; their kubeconfigs are read where their controllers write them and used
over verified TLS only; notebooks run inside them; deleting waits until the release or the
cluster is gone; failures are said in the controllers' own words.

Every test runs twice (see tests/kit/targets.py): against the emulator, and against a real
kube-apiserver with the upstream CRDs (Flux, Cluster API, CAAPH: ENVTEST_CRDS) and the
portal's documented RBAC. The kit plays the controllers (tests/kit/controllers.py); the
cluster inside an instance is a second real API server, or an emulator over TLS in CI."""

import base64
import time

import pytest
import yaml
from kubernetes import client as k8s

from clusters.backends import get_backend
from clusters.backends.kubernetes import manifests as m
from clusters.crypto import decrypt
from instances import services
from instances.models import Instance
from notebooks import services as notebook_services
from notebooks.models import Notebook, NotebookProfile

from .conftest import wait_for
from .kit import inner as inner_kit
from .kube_fixtures import admin_api, launch, provision

Status = Instance.Status
HELM_RELEASE = "HelmRelease.helm.toolkit.fluxcd.io"
HELM_REPOSITORY = "HelmRepository.source.toolkit.fluxcd.io"
CLUSTER = "Cluster.cluster.x-k8s.io"
CHART_PROXY = "HelmChartProxy.addons.cluster.x-k8s.io"


@pytest.fixture
def emu(kube):
    return kube


@pytest.fixture
def notebooks(cluster) -> NotebookProfile:
    cluster.ingress_domain = "apps.example.com"
    cluster.save()
    return NotebookProfile.objects.create(
        name="minimal", display_name="Minimal", image="quay.io/jupyter/minimal-notebook",
        default_cpu=1, default_memory_gib=2, storage_gib=1, published=True)


def until(controller, instance: Instance, status: str, timeout: float = 60) -> Instance:
    """Let the played controller act, then provision again, until the instance is `status`."""
    def step():
        controller.reconcile()
        found = provision(instance)
        return found if found.status == status else None

    return wait_for(step, timeout=timeout)


def deleted(controller, instance: Instance, user, timeout: float = 20) -> list[str]:
    """Delete the instance and drive it until deleted; the messages it showed on the way."""
    services.delete_instance(instance=instance, by=user)
    seen: list[str] = []

    def step():
        services.teardown_instance(instance_id=instance.pk)
        found = Instance.objects.get(pk=instance.pk)
        if found.status_message not in seen:
            seen.append(found.status_message)
        controller.reconcile()
        return found.status == Status.DELETED

    try:
        wait_for(step, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it said: {seen}") from None
    return seen


def running_notebook(user, instance: Instance, profile: NotebookProfile) -> Notebook:
    notebook = notebook_services.deploy_notebook(instance=instance, name="explore",
                                                 profile=profile, by=user, gpus=1)
    return wait_for(lambda: (n := notebook_services.advance_notebook(notebook_id=notebook.pk))
                    .status == Notebook.Status.RUNNING and n, timeout=90)


def notebook_gone(user, notebook: Notebook) -> None:
    notebook_services.delete_notebook(notebook=notebook, by=user)
    wait_for(lambda: notebook_services.teardown_notebook(notebook_id=notebook.pk).status
             == Notebook.Status.DELETED, timeout=60)


# --- virtual clusters ------------------------------------------------------------------------


def test_a_virtual_cluster_is_a_flux_release_that_runs_notebooks_inside_and_goes_away(
    emu, flux, inside, alice, profiles, notebooks
):
    instance = provision(launch(alice, profiles["vcluster"], name="vc"))
    ns = f"alice-vc-{instance.pk}"
    assert instance.status == Status.PROVISIONING, instance.status_message
    assert instance.status_message == ("Installing the virtual cluster: waiting for Flux's "
                                       "helm-controller to install the chart")
    release = emu.get(HELM_RELEASE, "vcluster", ns)
    chart = release["spec"]["chart"]["spec"]
    assert (chart["chart"], chart["version"]) == ("vcluster", m.VCLUSTER_VERSION)
    values = release["spec"]["values"]
    assert values["exportKubeConfig"]["server"] == f"https://vcluster.{ns}.svc:443"
    assert f"vcluster.{ns}.svc" in values["controlPlane"]["proxy"]["extraSANs"]
    assert values["sync"]["toHost"]["ingresses"]["enabled"] is True
    assert emu.get(HELM_REPOSITORY, "vcluster", ns)["spec"]["url"] == "https://charts.loft.sh"
    # The chart's objects are Flux's to make: the portal writes none of them.
    assert emu.get("StatefulSet", "vcluster", ns) is None
    let_in = emu.get("NetworkPolicy", "allow-portal-to-vcluster", ns)["spec"]["ingress"][0]
    assert let_in["ports"] == [{"protocol": "TCP", "port": 8443}]
    # The portal, and Flux, which installs catalogue services inside with its kubeconfig.
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for peer in let_in["from"]] == ["gpupaas-system", "flux-system"]

    instance = until(flux, instance, Status.RUNNING)

    assert instance.status_message == f"Ready: virtual cluster in namespace {ns}."
    server = yaml.safe_load(inside.kubeconfig)["clusters"][0]["cluster"]["server"]
    assert f"at {server}" in instance.status_detail and "Kubernetes v" in instance.status_detail
    assert decrypt(instance.kubeconfig_encrypted) == inside.kubeconfig

    notebook = running_notebook(alice, instance, notebooks)
    name = f"nb-explore-{notebook.pk}"
    assert inside.get("Deployment", name, "notebooks") is not None
    assert emu.get("Deployment", name, ns) is None  # inside the virtual cluster, not beside it
    assert notebook.url.endswith(f"-i{instance.pk}.apps.example.com/lab")
    notebook_gone(alice, notebook)

    seen = deleted(flux, instance, alice)

    # Flux uninstalls the chart (its finalizer) before the namespace goes.
    assert "Waiting for Flux to uninstall the virtual cluster." in seen
    assert emu.get(HELM_RELEASE, "vcluster", ns) is None
    assert wait_for(lambda: emu.get("Namespace", ns) is None, timeout=60)


def test_a_chart_that_fails_to_install_is_said_in_fluxs_words(emu, flux, alice, profiles):
    flux.fail = "context deadline exceeded"
    instance = until(flux, provision(launch(alice, profiles["vcluster"], name="vc")),
                     Status.FAILED)

    assert instance.status_message == (
        "The virtual cluster's chart failed to install: Helm install failed for release "
        f"alice-vc-{instance.pk}/vcluster.v1 with chart vcluster@{m.VCLUSTER_VERSION}: "
        "context deadline exceeded")
    assert "Stalled RetriesExceeded" in instance.status_detail


def test_retrying_a_failed_virtual_cluster_asks_flux_to_try_the_chart_again(
    emu, flux, alice, profiles
):
    flux.fail = "image ghcr.io/loft-sh/vcluster-oss:0.20.6: not found"
    instance = until(flux, provision(launch(alice, profiles["vcluster"], name="vc")),
                     Status.FAILED)
    flux.fail = ""  # the administrator mirrored the image
    flux.reconcile()
    assert provision(instance).status == Status.FAILED  # Flux does not retry on its own

    time.sleep(1.1)  # Flux's condition times are whole seconds
    services.retry_instance(instance=instance, by=alice)
    instance = provision(instance)
    assert instance.status_message == (
        "Installing the virtual cluster: Flux was asked to try its chart again.")
    release = emu.get(HELM_RELEASE, "vcluster", f"alice-vc-{instance.pk}")
    assert release["metadata"]["annotations"]["reconcile.fluxcd.io/resetAt"]

    assert until(flux, instance, Status.RUNNING).status == Status.RUNNING


def test_a_virtual_cluster_not_ready_in_time_fails_in_words(emu, upstream, alice, profiles,
                                                             settings):
    settings.VCLUSTER_READY_TIMEOUT_S = 1
    instance = provision(launch(alice, profiles["vcluster"], name="vc"))
    time.sleep(1.5)

    instance = provision(instance)

    assert instance.status == Status.FAILED
    assert instance.status_message == (
        "The virtual cluster was not ready after 1 second: waiting for Flux's helm-controller "
        "to install the chart")


@pytest.mark.parametrize("how", ["plain HTTP", "verification off", "an unknown CA"])
def test_a_virtual_clusters_api_is_used_only_over_verified_tls(emu, flux, inside, alice,
                                                                 profiles, how):
    config = yaml.safe_load(inside.kubeconfig)
    entry = config["clusters"][0]["cluster"]
    if how == "plain HTTP":
        entry["server"] = entry["server"].replace("https://", "http://")
    elif how == "verification off":
        entry["insecure-skip-tls-verify"] = True
        del entry["certificate-authority-data"]
    else:  # a CA that did not sign the server's certificate
        other = inner_kit.EmulatedInner(gpu_nodes=False)
        entry["certificate-authority-data"] = yaml.safe_load(other.kubeconfig)[
            "clusters"][0]["cluster"]["certificate-authority-data"]
        other.close()
    flux.kubeconfig = yaml.safe_dump(config)
    instance = provision(launch(alice, profiles["vcluster"], name="vc"))
    flux.reconcile()

    instance = provision(instance)

    assert instance.status != Status.RUNNING
    if how == "an unknown CA":
        assert instance.status == Status.PROVISIONING
        assert "failed TLS verification (certificate verify failed: " in (
            instance.status_message)
    else:
        assert instance.status == Status.FAILED
        assert instance.status_message.startswith(f"The kubeconfig of the virtual cluster "
                                                  f"alice-vc-{instance.pk} is refused: its "
                                                  "cluster 'inner' ")
        assert instance.status_message.endswith("the portal never connects insecurely.")


@pytest.mark.parametrize("how", ["exec", "auth-provider", "tokenFile"])
def test_a_kubeconfig_read_from_a_cluster_runs_nothing_and_reads_no_file(
        emu, flux, inside, alice, profiles, tmp_path, how):
    """Whoever can write a vcluster's kubeconfig Secret cannot make the portal run a command
    (an exec credential plugin) or send one of its files: refused before anything loads."""
    marker = tmp_path / "ran"
    config = yaml.safe_load(inside.kubeconfig)
    user = config["users"][0]["user"]
    if how == "exec":
        user["exec"] = {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh",
                        "args": ["-c", f"touch {marker}; echo '{{}}'"],
                        "interactiveMode": "Never"}
    elif how == "auth-provider":
        user["auth-provider"] = {"name": "oidc", "config": {"idp-issuer-url": "https://x"}}
    else:
        user["tokenFile"] = "/etc/passwd"
    flux.kubeconfig = yaml.safe_dump(config)
    instance = provision(launch(alice, profiles["vcluster"], name="vc"))
    flux.reconcile()

    instance = provision(instance)

    assert not marker.exists()
    assert instance.status == Status.FAILED
    expected = ("names a file of the portal's machine" if how == "tokenFile" else
                f"runs a program ({how}); a kubeconfig read from a cluster never runs one")
    assert instance.status_message == (
        f"The kubeconfig of the virtual cluster alice-vc-{instance.pk} is refused: its user "
        f"{config['users'][0]['name']!r} {expected}.")


def test_the_control_plane_is_counted_against_the_instance_and_said_so(
    emu, flux, alice, profiles, notebooks, client
):
    """The vcluster's requests are pinned in its values and the instance quota counts them,
    so notebooks get what is left, and the instance page says what is reserved."""
    instance = until(flux, provision(launch(alice, profiles["vcluster"], name="vc")),
                     Status.RUNNING)
    values = emu.get(HELM_RELEASE, "vcluster", f"alice-vc-{instance.pk}")["spec"]["values"]
    assert values["controlPlane"]["statefulSet"]["resources"]["requests"]["cpu"] == "200m"
    assert values["controlPlane"]["coredns"]["deployment"]["resources"]["requests"] == {
        "cpu": "20m", "memory": "64Mi"}

    client.force_login(alice)
    page = client.get(f"/instances/{instance.pk}/").content.decode()
    assert "0.22 reserved by the virtual cluster" in page
    assert "320 MiB reserved by the virtual cluster" in page

    # 8 CPU and 64 GiB: the whole instance no longer fits a notebook.
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        notebook_services.deploy_notebook(instance=instance, name="all", profile=notebooks,
                                          by=alice, cpu=8, memory_gib=1, gpus=0)
    assert "(the virtual cluster reserves 0.22 CPU and 320 MiB memory)" in str(refused.value)
    notebook_services.deploy_notebook(instance=instance, name="most", profile=notebooks,
                                      by=alice, cpu=7, memory_gib=63, gpus=0)


# --- dedicated clusters ----------------------------------------------------------------------


def test_a_dedicated_cluster_runs_only_with_ready_gpu_workers_and_runs_notebooks_inside(
    emu, capi, inside, alice, profiles, notebooks, cluster, settings
):
    portal = settings.PORTAL_ID
    instance = provision(launch(alice, profiles["dedicated"], name="big"))
    name, ns = f"alice-big-{instance.pk}", cluster.capi_namespace
    assert instance.status == Status.PROVISIONING, instance.status_message
    assert instance.status_message == (
        "Creating the dedicated cluster's control plane (phase Pending).")
    made = emu.get(CLUSTER, name, ns)
    assert made["apiVersion"] == "cluster.x-k8s.io/v1beta2"
    assert made["spec"]["topology"]["classRef"] == {"name": "gpu-cluster"}
    assert made["metadata"]["labels"][m.ADDONS_LABEL] == portal
    addons = {p["spec"]["chartName"]: p for p in emu.objects(
        CHART_PROXY, ns, label_selector=f"gpupaas.io/portal={portal}")}
    assert set(addons) == {"gpu-operator", "ingress-nginx"}
    assert addons["gpu-operator"]["spec"]["clusterSelector"] == {
        "matchLabels": {m.ADDONS_LABEL: portal}}

    instance = until(capi, instance, Status.RUNNING)

    assert instance.status_message.startswith(f"Ready: dedicated cluster {name} with ")
    assert decrypt(instance.kubeconfig_encrypted) == ""  # no copy kept: read when needed
    notebook = running_notebook(alice, instance, notebooks)
    nb = f"nb-explore-{notebook.pk}"
    ingress = inside.get("Ingress", nb, "notebooks")
    assert ingress["spec"]["ingressClassName"] == "nginx"  # the add-on's, inside
    assert notebook.url.endswith(f"-i{instance.pk}.{name}.apps.example.com/lab")
    notebook_gone(alice, notebook)

    seen = deleted(capi, instance, alice)

    assert f"Waiting for Cluster API to remove the dedicated cluster {name} (phase " \
           "Provisioned)." in seen
    assert emu.get(CLUSTER, name, ns) is None


def test_the_workload_kubeconfig_is_read_fresh_each_time(emu, capi, inside, alice, profiles,
                                                         notebooks, cluster):
    """Cluster API rotates it: after a rotation the portal uses the new one at once."""
    instance = until(capi, provision(launch(alice, profiles["dedicated"], name="big")),
                     Status.RUNNING)
    elsewhere = inner_kit.EmulatedInner()
    try:
        with admin_api(emu) as api:
            k8s.CoreV1Api(api).patch_namespaced_secret(
                f"alice-big-{instance.pk}-kubeconfig", cluster.capi_namespace,
                {"data": {"value": base64.b64encode(elsewhere.kubeconfig.encode()).decode()}})
        notebook = notebook_services.deploy_notebook(
            instance=instance, name="fresh", profile=notebooks, by=alice, gpus=0)
        notebook_services.advance_notebook(notebook_id=notebook.pk)

        assert elsewhere.get("Deployment", f"nb-fresh-{notebook.pk}", "notebooks") is not None
        assert inside.get("Deployment", f"nb-fresh-{notebook.pk}", "notebooks") is None
    finally:
        elsewhere.close()


def test_workers_that_never_come_fail_in_the_controllers_words(emu, capi, alice, profiles,
                                                                settings):
    capi.machines_fail = ("InfrastructureReady: failed to create instance: "
                          "InsufficientInstanceCapacity")
    instance = until(capi, provision(launch(alice, profiles["dedicated"], name="big")),
                     Status.PROVISIONING)
    assert instance.status_message == (
        f"Waiting for the GPU workers (* Machine alice-big-{instance.pk}-gpu-workers-x7k2p: "
        "InfrastructureReady: failed to create instance: InsufficientInstanceCapacity).")

    settings.DEDICATED_READY_TIMEOUT_S = 1
    time.sleep(1.5)
    instance = provision(instance)

    assert instance.status == Status.FAILED
    assert instance.status_message == (
        f"Machines not provisioned after 1 second: * Machine alice-big-{instance.pk}-gpu-"
        "workers-x7k2p: InfrastructureReady: failed to create instance: "
        "InsufficientInstanceCapacity")


def test_workers_without_gpus_fail_after_the_timeout_with_the_add_ons_words(
    emu, capi, alice, profiles, settings
):
    cpu_only = inner_kit.EmulatedInner(gpu_nodes=False)  # its nodes report no GPU
    try:
        cpu_only.add_node("cpu-1", "", 0)
        capi.kubeconfig = cpu_only.kubeconfig
        capi.addon_fail = "driver daemonset: ErrImagePull nvcr.io/nvidia/driver:550"
        instance = until(capi, provision(launch(alice, profiles["dedicated"], name="big")),
                         Status.PROVISIONING)
        assert instance.status_message == (
            "Workers joined; waiting for GPU nodes (add-on gpu-operator: driver daemonset: "
            "ErrImagePull nvcr.io/nvidia/driver:550).")

        settings.DEDICATED_READY_TIMEOUT_S = 1
        time.sleep(1.5)
        instance = provision(instance)
    finally:
        cpu_only.close()

    assert instance.status == Status.FAILED
    assert instance.status_message == (
        "No GPU nodes after 1 second: add-on gpu-operator: driver daemonset: ErrImagePull "
        "nvcr.io/nvidia/driver:550")


def test_a_running_dedicated_cluster_that_turns_unavailable_is_failed(
    emu, capi, alice, profiles
):
    instance = until(capi, provision(launch(alice, profiles["dedicated"], name="big")),
                     Status.RUNNING)
    capi.machines_fail = "Machine deleted by the cloud provider"
    capi.reconcile()

    services.reconcile_instances()

    instance.refresh_from_db()
    assert instance.status == Status.FAILED
    assert instance.status_message.startswith(
        f"The dedicated cluster alice-big-{instance.pk} is no longer ready")


# --- what the cluster accepts, and what Test connection says ---------------------------------


def test_every_custom_object_the_portal_writes_comes_back_as_sent(emu, flux, capi, alice,
                                                                    profiles, cluster):
    """On the real server the upstream CRDs' schemas (CEL rules included) admit each object
    and drop no field (the portal applies them with strict field validation)."""
    vc = provision(launch(alice, profiles["vcluster"], name="vc"))
    big = provision(launch(alice, profiles["dedicated"], name="big"))
    backend = get_backend(cluster)
    sent = [*m.vcluster_objects(services.instance_spec(vc), backend.cs)[1:],
            *m.capi_addons(backend.cs), m.capi_cluster(services.instance_spec(big), backend.cs)]
    kinds = {"HelmRepository": HELM_REPOSITORY, "HelmRelease": HELM_RELEASE,
             "HelmChartProxy": CHART_PROXY, "Cluster": CLUSTER}
    generations = {}
    for obj in sent:
        stored = emu.get(kinds[obj["kind"]], obj["metadata"]["name"],
                         obj["metadata"]["namespace"])
        assert _contains(stored["spec"], obj["spec"]), obj["kind"]
        assert _contains(stored["metadata"]["labels"], obj["metadata"]["labels"])
        generations[obj["kind"], obj["metadata"]["name"]] = (
            obj["metadata"]["namespace"], stored["metadata"]["generation"], stored["spec"])

    # Applying again changes nothing its controller would act on: the same spec, the same
    # generation (a new one would make Flux upgrade the release). On 1.36.2 the Flux kinds
    # get a new resourceVersion all the same: their CRDs default a status field.
    for instance in (vc, big):
        backend.ensure_instance(services.instance_spec(instance))
    for (kind, name), (namespace, generation, spec) in generations.items():
        again = emu.get(kinds[kind], name, namespace)
        assert (again["metadata"]["generation"], again["spec"]) == (generation, spec), kind


def _contains(stored, sent) -> bool:
    """Everything sent is there (a server may add defaults, never drop a field)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            k in stored and _contains(stored[k], v) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(stored, list) and len(stored) == len(sent) and all(
            _contains(a, b) for a, b in zip(stored, sent, strict=True))
    return stored == sent


def test_test_connection_says_whether_flux_cluster_api_and_caaph_are_installed(
    emu, upstream, cluster
):
    report = get_backend(cluster).check_connection()

    assert " Flux: HelmRelease v2, HelmRepository v1 served." in report
    assert " Cluster API: Cluster v1beta2, MachineDeployment v1beta2 served." in report
    assert " its Helm add-on provider (CAAPH): HelmChartProxy v1alpha1 served." in report


def test_test_connection_says_what_is_missing_without_flux(db, tmp_path, settings):
    from clusters.models import Cluster

    from .kit import kubeemu

    with kubeemu.start() as bare:  # no Flux, no Cluster API
        cluster = Cluster(name="bare", display_name="Bare", backend="kubernetes",
                          ingress_domain="apps.example.com")
        cluster.set_kubeconfig(bare.kubeconfig(tmp_path / "k").read_text())
        cluster.save()
        report = get_backend(cluster).check_connection()

    assert (" Flux is not installed (no HelmRelease v2, HelmRepository v1): vcluster profiles "
            "cannot run here.") in report
    assert " Cluster API is not installed (no Cluster v1beta2, MachineDeployment v1beta2): "\
           "dedicated profiles cannot run here." in report


def test_without_flux_a_virtual_cluster_fails_in_words(db, alice, tmp_path, settings):
    from clusters.models import Cluster
    from instances.models import ComputeProfile

    from .kit import kubeemu

    settings.KUBE_RETRY_BASE_S = 0.01
    with kubeemu.start() as bare:
        cluster = Cluster(name="bare", display_name="Bare", backend="kubernetes",
                          ingress_domain="apps.example.com")
        cluster.set_kubeconfig(bare.kubeconfig(tmp_path / "k").read_text())
        cluster.save()
        profile = ComputeProfile.objects.create(
            name="vc", display_name="vc", kind="vcluster", cluster=cluster, gpus=1, cpu=4,
            memory_gib=16, storage_gib=50, published=True)
        instance = provision(launch(alice, profile, name="vc"))

    assert instance.status == Status.FAILED
    assert instance.status_message == (
        "Flux (source-controller) is not installed on Bare; virtual clusters need it.")


def test_the_kubernetes_proxy_reaches_the_dedicated_cluster_with_its_current_kubeconfig(
    transactional_db, emu, capi, inside, alice, profiles, cluster, settings
):
    """The portal's proxy forwards to the workload cluster over verified TLS, with the
    kubeconfig Cluster API keeps now: after a rotation, the next read uses the new one."""
    import http.client
    import json
    from urllib.parse import urlsplit

    from access import services as access

    settings.DEDICATED_CREDENTIALS_TTL_S = 0  # read it again at every request
    instance = until(capi, provision(launch(alice, profiles["dedicated"], name="big")),
                     Status.RUNNING)
    _, token = access.issue_access_token(user=alice, instance=instance)

    def nodes() -> list[str]:
        grant = access.authorize_proxy_request(token=token, instance_id=instance.pk,
                                               touch=False)
        assert isinstance(grant, access.Grant), grant
        # The user is admin of their own cluster: the cluster's own credential, no other.
        assert not [k for k in grant.upstream.headers if k.lower().startswith("impersonate")]
        url = urlsplit(grant.upstream.base_url)
        conn = http.client.HTTPSConnection(url.hostname, url.port,
                                           context=grant.upstream.ssl_context, timeout=30)
        conn.request("GET", "/api/v1/nodes", headers=grant.upstream.headers)
        answer = json.loads(conn.getresponse().read())
        conn.close()
        return sorted(n["metadata"]["name"] for n in answer["items"])

    assert "gpu-h200-1" in nodes()
    elsewhere = inner_kit.EmulatedInner(gpu_nodes=False)
    try:
        elsewhere.add_node("rotated-node", "", 0)
        with admin_api(emu) as api:
            k8s.CoreV1Api(api).patch_namespaced_secret(
                f"alice-big-{instance.pk}-kubeconfig", cluster.capi_namespace,
                {"data": {"value": base64.b64encode(elsewhere.kubeconfig.encode()).decode()}})
        assert nodes() == ["rotated-node"]
    finally:
        elsewhere.close()
