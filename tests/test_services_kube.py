"""Catalogue services on Kubernetes (#25): each is a Flux HelmRelease of its profile's chart,
with the administrator's values template filled in (GPUs, model, resources), installed by
Flux as the instance's access account in a namespace instance, or into a virtual or
dedicated cluster through its kubeconfig. Its status is the release's, in Flux's words. Its
users reach it on its own origin, which the portal serves through the API server's service
proxy with the instance's own credential: the owner and collaborators get in, nobody else.

Flux is the kit's stand-in (tests/kit/controllers.py), played through the API as on a real
server; the emulator passes the service proxy to a test's HTTP server."""

import http.client
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from kubernetes import client as k8s

from clusters.backends import get_backend
from instances import services as instance_services
from notebooks import services
from notebooks.models import Service, ServiceProfile

from .conftest import make_user, wait_for
from .kube_fixtures import admin_api, launch, namespace_of, provision
from .test_kube_rbac import polled_until
from .test_services_local import Browser, signed_in

Status = Service.Status
HELM_RELEASE = "HelmRelease.helm.toolkit.fluxcd.io"
HELM_REPOSITORY = "HelmRepository.source.toolkit.fluxcd.io"
TEMPLATE = """\
fullnameOverride: ${release}
args: ["--model", "${model}", "--served-model-name=${name}"]
gpus: ${gpus}
resources: ${resources}
nodeSelector: ${node_selector}
tolerations: ${tolerations}
persistence: {existingClaim: "${storage_claim}", path: "${base_path}"}
"""


@pytest.fixture
def emu(kube):
    """The emulator, then the real server (with Flux's CRDs: ENVTEST_CRDS)."""
    return kube


@pytest.fixture
def board(db):
    return ServiceProfile.objects.create(
        name="board", display_name="Board", chart_repository="https://charts.example.com",
        chart="board", chart_version="1.2.3", values_template=TEMPLATE, max_gpus=2,
        model_names="tiny\nlarge", storage_gib=5)


@pytest.fixture
def instance(emu, alice, profiles):
    profile = profiles["namespace"]
    profile.gpu_model = "NVIDIA-A100-SXM4-80GB"
    profile.save()
    return provision(launch(alice, profile))


def advance(service: Service, flux=None, *, until: str, timeout: float = 30) -> Service:
    deadline = time.monotonic() + timeout
    while True:
        if flux is not None:
            flux.reconcile()
        service = services.advance_service(service_id=service.pk)
        if service.status == until:
            return service
        assert time.monotonic() < deadline, (service.status, service.status_message)
        time.sleep(0.05)


def release_of(emu, service: Service, ns: str) -> dict:
    [release] = [r for r in emu.objects(HELM_RELEASE, namespace=ns)
                 if r["metadata"]["labels"].get("gpupaas.io/service") == service.key]
    return release


def test_a_service_is_a_helm_release_with_its_values_filled_in_and_follows_flux(
        emu, upstream, flux, alice, instance, board):
    service = services.deploy_service(instance=instance, name="chat", profile=board, by=alice,
                                      gpus=1, model="large")
    service = services.advance_service(service_id=service.pk)
    assert service.status == Status.DEPLOYING and service.step == "created"
    ns = namespace_of(emu, instance)["metadata"]["name"]
    release = release_of(emu, service, ns)
    spec = release["spec"]
    # Installed by Flux as the instance's access account: a chart gets no more than the
    # tenant holds in this namespace.
    assert spec["serviceAccountName"] == "gpupaas-access"
    assert emu.get("ServiceAccount", "gpupaas-access", ns) is not None
    assert spec["releaseName"] == service.key
    assert spec["chart"]["spec"] == {
        "chart": "board", "version": "1.2.3", "interval": "1h",
        "sourceRef": {"kind": "HelmRepository", "name": service.key}}
    repository = emu.get(HELM_REPOSITORY, service.key, ns)
    assert repository["spec"]["url"] == "https://charts.example.com"
    values = spec["values"]
    assert values["gpus"] == 1 and values["fullnameOverride"] == service.key
    assert values["args"] == ["--model", "large", "--served-model-name=chat"]
    assert values["resources"]["limits"] == {"cpu": "1", "memory": "2Gi",
                                             "nvidia.com/gpu": "1"}
    assert values["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert values["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert values["persistence"] == {"existingClaim": f"{service.key}-data", "path": "/"}
    claim = emu.get("PersistentVolumeClaim", f"{service.key}-data", ns)
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"

    # Flux has not installed it yet: said so; then its release is Ready, and it runs.
    service = services.advance_service(service_id=service.pk)
    assert service.status_message == ("Installing its chart: waiting for Flux's "
                                      "helm-controller to install the chart")
    service = advance(service, flux, until=Status.RUNNING)
    assert service.step == "reachable"
    assert [label for label, _ in service.steps] == ["Created", "Starting", "Reachable"]


def test_a_chart_that_does_not_install_fails_in_fluxs_words_and_holds_nothing(
        emu, upstream, flux, alice, instance, board):
    flux.fail = "values don't meet the specifications of the schema(s): gpus: must be >= 0"
    service = services.deploy_service(instance=instance, name="chat", profile=board, by=alice)
    service = advance(service, flux, until=Status.FAILED)
    assert service.status_message.startswith(
        "Its chart failed to install: Helm install failed for release ")
    assert service.status_message.endswith(f"with chart board@1.2.3: {flux.fail}")
    ns = namespace_of(emu, instance)["metadata"]["name"]
    # Failed, it is uninstalled (its GPUs are free); its volume stays for a retry.
    assert release_of(emu, service, ns)["metadata"].get("deletionTimestamp")
    flux.reconcile()
    assert not [r for r in emu.objects(HELM_RELEASE, namespace=ns)
                if r["metadata"]["name"] == service.key]
    assert emu.get("PersistentVolumeClaim", f"{service.key}-data", ns) is not None
    flux.fail = ""
    assert services.retry_service(service=service, by=alice)
    assert advance(service, flux, until=Status.RUNNING).status_message == "Running."


def test_stop_uninstalls_it_keeping_its_volume_and_delete_removes_everything(
        emu, upstream, flux, alice, instance, board):
    service = services.deploy_service(instance=instance, name="chat", profile=board, by=alice)
    service = advance(service, flux, until=Status.RUNNING)
    ns = namespace_of(emu, instance)["metadata"]["name"]
    assert services.stop_service(service=service, by=alice)
    services.release(kind=Service.KIND, pk=service.pk)
    flux.reconcile()  # uninstalled
    assert not [r for r in emu.objects(HELM_RELEASE, namespace=ns)
                if r["metadata"]["name"] == service.key]
    assert emu.get("PersistentVolumeClaim", f"{service.key}-data", ns) is not None
    assert services.start_service(service=service, by=alice)
    service = advance(service, flux, until=Status.RUNNING)

    services.delete_service(service=service, by=alice)
    service = services.teardown_service(service_id=service.pk)
    assert service.status == Status.DELETING
    assert service.status_message == "Waiting for Flux to uninstall its chart."
    flux.reconcile()
    service = services.teardown_service(service_id=service.pk)
    assert service.status == Status.DELETED
    assert emu.get("PersistentVolumeClaim", f"{service.key}-data", ns) is None
    assert emu.get(HELM_REPOSITORY, service.key, ns) is None


def test_a_release_deleted_behind_the_portals_back_is_applied_again(
        emu, upstream, flux, alice, instance, board):
    service = services.deploy_service(instance=instance, name="chat", profile=board, by=alice)
    service = advance(service, flux, until=Status.RUNNING)
    ns = namespace_of(emu, instance)["metadata"]["name"]
    with admin_api(emu) as api:
        k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
            "helm.toolkit.fluxcd.io", "v2", ns, "helmreleases", service.key)
    flux.reconcile()
    assert services.reconcile_notebooks()["restored"] == 1
    service = Service.objects.get(pk=service.pk)
    assert service.status == Status.DEPLOYING
    assert service.status_message == "Restarting: Its release was missing; applying it again."
    # The service's own task applies it again (one stopped meanwhile would not be).
    services.advance_service(service_id=service.pk)
    assert release_of(emu, service, ns)["spec"]["releaseName"] == service.key

    # A tenant's own release carrying this service's label (not installed yet, and listed
    # after the real one) changes nothing for it.
    advance(service, flux, until=Status.RUNNING)
    real = next(r for r in emu.objects(HELM_RELEASE, namespace=ns)
                if r["metadata"]["name"] == service.key)
    with admin_api(emu) as api:
        objects = k8s.CustomObjectsApi(api)
        objects.create_namespaced_custom_object(
            "helm.toolkit.fluxcd.io", "v2", ns, "helmreleases",
            {"apiVersion": real["apiVersion"], "kind": "HelmRelease",
             "metadata": {"name": "zz-decoy", "namespace": ns,
                          "labels": real["metadata"]["labels"]},
             "spec": real["spec"]})
        services.reconcile_notebooks()
        assert Service.objects.get(pk=service.pk).status == Status.RUNNING
        # A release whose account was taken off (Flux would install as itself) gets it back.
        objects.patch_namespaced_custom_object(
            "helm.toolkit.fluxcd.io", "v2", ns, "helmreleases", service.key,
            {"spec": {"serviceAccountName": None}})
    services.reconcile_notebooks()
    assert emu.get(HELM_RELEASE, service.key, ns)["spec"]["serviceAccountName"] == (
        "gpupaas-access")


@pytest.mark.parametrize("kind", ["vcluster", "dedicated"])
def test_inside_a_virtual_or_dedicated_cluster_flux_installs_with_its_kubeconfig(
        emu, upstream, flux, capi, alice, profiles, board, cluster, kind):
    controller = flux if kind == "vcluster" else capi
    instance = launch(alice, profiles[kind], name="inner")
    provision(instance)
    instance = polled_until(controller, instance, "Ready: ")
    service = services.deploy_service(instance=instance, name="chat", profile=board, by=alice)
    service = services.advance_service(service_id=service.pk)
    if kind == "vcluster":
        ns = namespace_of(emu, instance)["metadata"]["name"]
        secret = {"name": "vc-vcluster", "key": "config"}
    else:
        ns = cluster.capi_namespace
        secret = {"name": f"alice-inner-{instance.pk}-kubeconfig", "key": "value"}
    [release] = [r for r in emu.objects(HELM_RELEASE, namespace=ns)
                 if r["metadata"]["labels"].get("gpupaas.io/service") == service.key]
    spec = release["spec"]
    assert spec["kubeConfig"] == {"secretRef": secret}
    assert spec["targetNamespace"] == "notebooks" and spec["install"]["createNamespace"]
    assert "serviceAccountName" not in spec  # ignored with a kubeconfig
    # Its volume is made inside, where its pods run.
    backend = get_backend(cluster)
    assert backend._notebook_client(services.service_spec(service)).get(
        "v1", "PersistentVolumeClaim", f"{service.key}-data", "notebooks") is not None
    service = advance(service, flux, until=Status.RUNNING)
    assert backend.service_proxy_path(services.service_spec(service)) == (
        f"/api/v1/namespaces/notebooks/services/{service.key}:80/proxy")


class App(BaseHTTPRequestHandler):
    """A service's pod: says what reached it; `/go` redirects, `/page` is HTML with a link
    and a cookie."""

    seen: list = []

    def log_message(self, *args) -> None:
        pass

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path == "/go":
            self.send_response(302)
            self.send_header("Location", "/login?next=x")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/page":
            data = b'<!doctype html><a href="/static/app.js">app</a>'
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Set-Cookie", "app=1; Path=/; HttpOnly")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        data = json.dumps({"path": self.path, "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer


@pytest.fixture
def app_pod():
    App.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def origin_server(transactional_db):
    from gpupaas.asgi import application

    from .kit.asgi import serve

    with serve(application) as url:
        yield url


def test_its_origin_reaches_it_through_the_api_servers_service_proxy_for_its_users_only(
        transactional_db, emu, upstream, flux, alice, instance, board, app_pod, origin_server,
        settings, caplog):
    if getattr(emu, "real", False):
        pytest.skip("the emulator's service proxy passes to a test's server; here no pod runs")
    service = services.deploy_service(instance=instance, name="chat", profile=board, by=alice)
    service = advance(service, flux, until=Status.RUNNING)
    ns = namespace_of(emu, instance)["metadata"]["name"]
    # What the chart made: its Service (named after the release), and a pod behind it.
    with admin_api(emu) as api:
        k8s.CoreV1Api(api).create_namespaced_service(ns, {
            "metadata": {"name": service.key},
            "spec": {"ports": [{"port": 80, "targetPort": 5000}],
                     "selector": {"app": service.key}}})
    emu.service_backends[(ns, service.key)] = app_pod

    owner = Browser(origin_server, service)
    assert owner.open(signed_in(alice), service).status_code == 303
    with caplog.at_level(logging.INFO, logger="gpupaas.apps"):
        page = owner.get("/runs?page=2")
        assert page.status_code == 200, page.text
        assert page.json()["path"] == "/runs?page=2"
        # Each request is logged (once its answer is sent): who, which service, what, and
        # what they got.
        [logged] = wait_for(lambda: [r for r in caplog.records if r.name == "gpupaas.apps"],
                            timeout=5)
    assert logged.getMessage() == f"GET s{service.pk}/runs for user {alice.pk}: 200"
    # Every method a REST API uses goes through (the access account's `admin` allows it).
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        answer = owner.http.request(method, "/api/2.0/runs", content=b'{"x": 1}')
        assert answer.status_code == 200 and answer.json()["body"] == '{"x": 1}', method
    # Another service's page (the same site under one APPS_DOMAIN) cannot post here with
    # alice's cookie; this origin's own page can.
    port = origin_server.rsplit(":", 1)[1]
    seen = len(App.seen)
    forged = owner.http.post("/api/2.0/runs", content=b"{}",
                             headers={"Origin": f"http://s1-aaaaaaaaaa.localhost:{port}"})
    assert forged.status_code == 403 and len(App.seen) == seen
    own = f"http://{service.host_label}.localhost:{port}"
    assert owner.http.post("/api/2.0/runs", content=b"{}",
                           headers={"Origin": own}).status_code == 200
    # The API server rewrites redirects and HTML links to its own proxy path; the origin
    # passes such paths on as they are, and the app's cookie reaches the browser.
    prefix = f"/api/v1/namespaces/{ns}/services/{service.key}:80/proxy"
    moved = owner.get("/go")
    assert moved.status_code == 302 and moved.headers["location"] == f"{prefix}/login?next=x"
    assert owner.get(moved.headers["location"]).json()["path"] == "/login?next=x"
    html = owner.get("/page")
    assert f'href="{prefix}/static/app.js"' in html.text
    assert html.headers["set-cookie"] == "app=1; Path=/; HttpOnly"
    assert owner.get(f"{prefix}/static/app.js").json()["path"] == "/static/app.js"
    # The pod sees neither the portal's cookie nor a credential.
    for _, _, headers, _ in App.seen:
        assert "gpupaas_app" not in headers.get("Cookie", "")
        assert "Authorization" not in headers
    # Dot segments would climb out of the service proxy's path into the instance's API
    # with its credential (httpx normalises them, so a program sends them raw): refused.
    before = len(emu.requests.records())
    port = int(origin_server.rsplit(":", 1)[1])
    for path in ("/../../../secrets", "/%2e%2e/%2e%2e/%2e%2e/secrets", "/a/..%2f..%2fsecrets",
                 f"{prefix}/../../../secrets", "/%252e%252e/pods"):
        raw = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        raw.putrequest("GET", path, skip_host=True)
        raw.putheader("Host", f"{service.host_label}.localhost:{port}")
        raw.putheader("Cookie", f"gpupaas_app={owner.http.cookies['gpupaas_app']}")
        raw.putheader("Impersonate-User", "system:admin")
        raw.endheaders()
        assert raw.getresponse().status == 400, path
        raw.close()
    assert not [r for r in emu.requests.records()[before:] if "secrets" in r.path
                or "pods" in r.path]
    # Nor does an impersonation header reach the API server.
    owner.http.get("/runs", headers={"Impersonate-User": "system:admin"})
    assert not any("impersonate-user" in r.headers for r in emu.requests.records()[before:])
    # A stranger's browser gets nothing; bob's Open is a 404.
    stranger = Browser(origin_server, service)
    assert stranger.get("/").status_code == 401
    bob = make_user("bob-kube")
    assert signed_in(bob).get(f"/services/{service.pk}/open/").status_code == 404
    seen = len(App.seen)
    assert stranger.http.post("/api/2.0/runs", content=b"{}").status_code == 401
    assert len(App.seen) == seen

    # The instance stops: the service is not reached any more.
    instance_services.stop_instance(instance=instance, by=alice)
    time.sleep(settings.APPS_DECISION_CACHE_S + 0.1)
    assert owner.get("/").status_code == 503


def test_a_profile_says_what_is_wrong_with_its_chart(db):
    profile = ServiceProfile(name="x", display_name="X", chart="x", values_template=(
        "a: ${gpu}\n"), model_names="")
    with pytest.raises(ValidationError) as refused:
        profile.full_clean()
    errors = refused.value.message_dict
    assert errors["chart_repository"] == ["Needed with a Helm chart."]
    assert errors["chart_version"] == ["Needed with a Helm chart."]
    assert errors["values_template"][0].startswith(
        "Not a usable template: unknown placeholder ${gpu}; known: ${release}")
    profile.values_template = "- a list\n"
    profile.chart_repository, profile.chart_version = "http://plain.example.com", "1"
    with pytest.raises(ValidationError) as refused:
        profile.full_clean()
    errors = refused.value.message_dict
    assert errors["values_template"] == [
        "Not a usable template: the values must be a YAML mapping."]
    assert errors["chart_repository"] == ["An https:// repository or an oci:// registry."]
    profile.values_template = "model: ${model}\n"
    with pytest.raises(ValidationError) as refused:
        profile.full_clean()
    assert refused.value.message_dict["model_names"] == [
        "The values template uses ${model}: list at least one."]


def test_the_seeded_catalogue_renders_for_kubernetes(db, catalogue):
    """Every seeded profile's template passes its own checks and fills in."""
    from clusters.backends.base import InstanceSpec, ServiceSpec
    from clusters.backends.kubernetes import manifests as m

    for profile in ServiceProfile.objects.all():
        profile.full_clean()
        spec = ServiceSpec(
            key="svc-9", name="x", instance=InstanceSpec(
                key="i-1", name="i", owner="alice", workspace="w", kind="namespace", gpus=1,
                gpu_model="A100", cpu=1, memory_gib=1, storage_gib=1),
            cpu=2, memory_gib=4, gpus=profile.default_gpus, chart=profile.chart,
            chart_repository=profile.chart_repository, chart_version=profile.chart_version,
            values_template=profile.values_template, storage_gib=profile.storage_gib,
            model=(profile.model_choices or [""])[0])
        repository, release = m.service_objects(spec, m.ClusterSettings())
        assert repository["spec"]["type"] == "oci"
        values = release["spec"]["values"]
        container = values["controllers"]["main"]["containers"]["main"]
        assert container["resources"]["limits"]["memory"] == "4Gi"
        assert values["service"]["main"]["forceRename"] == "svc-9"
        assert values["persistence"]["data"]["existingClaim"] == "svc-9-data"
        assert values["defaultPodOptions"]["securityContext"]["runAsNonRoot"] is True
        if profile.name == "vllm":
            assert container["args"][:2] == ["--model", "Qwen/Qwen2.5-0.5B-Instruct"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_service_name_that_is_not_a_dns_label_never_reaches_the_proxy_path(db):
    """The Service's name goes into the API server's path: a template that makes it
    anything else (`../secrets`) is refused before any request."""
    from clusters.backends.base import BackendError, InstanceSpec, ServiceSpec
    from clusters.backends.kubernetes import KubernetesBackend
    from clusters.backends.kubernetes import manifests as m
    from clusters.models import Cluster

    spec = ServiceSpec(
        key="svc-3", name="x", instance=InstanceSpec(
            key="i-1", name="i", owner="alice", workspace="w", kind="namespace", gpus=0,
            gpu_model="", cpu=1, memory_gib=1, storage_gib=1),
        cpu=1, memory_gib=1, gpus=0, model="../../secrets", service_name="${model}")
    with pytest.raises(ValueError, match="is not a DNS label"):
        m.service_target(spec, m.ClusterSettings())
    backend = KubernetesBackend.__new__(KubernetesBackend)
    backend.cs = m.ClusterSettings()
    backend.cluster = Cluster(name="c")
    with pytest.raises(BackendError, match="cannot be reached"):
        backend.service_proxy_path(spec)
