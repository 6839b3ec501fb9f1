"""Idle stop on Kubernetes (#26): a namespace instance's GPUs are read from the DCGM
exporter's series in the cluster's Prometheus (the kit's fake, answering the queries the
portal sends), and its notebooks' activity from Jupyter's API through the API server's
service proxy (the emulator passes it to a Jupyter stand-in that checks the token). A busy
GPU with no one at a kernel keeps the instance; an idle one is warned, then stopped; a
Prometheus that does not answer never gets anyone stopped."""

import datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import mail
from django.utils import timezone

from instances import services
from instances.models import Instance

from .kit import kubeemu
from .kit.jsonhttp import serve_json
from .kit.prometheus import FakePrometheus
from .kube_fixtures import deploy_notebook, namespace_of
from .test_idle_stop import check, idle_since
from .test_notebooks_local import until

UTIL = "DCGM_FI_DEV_GPU_UTIL"


class Jupyter:
    """What a notebook pod's JupyterLab answers to the two questions idle stop asks."""

    def __init__(self, token: str) -> None:
        self.token, self.asked, self.busy = token, [], False
        self.last_activity = (timezone.now() - datetime.timedelta(hours=3)).isoformat()
        self.server, self.url = serve_json(self.answer)

    def answer(self, path: str) -> tuple[int, object]:
        url = urlsplit(path)
        self.asked.append(path)
        if parse_qs(url.query).get("token") != [self.token]:
            return 403, {"message": "Forbidden"}
        if url.path == "/api/status":
            return 200, {"last_activity": self.last_activity}
        if url.path == "/api/kernels":
            return 200, [{"id": "k1", "execution_state": "busy" if self.busy else "idle"}]
        return 404, {"message": "Not Found"}


@pytest.fixture
def prometheus():
    with FakePrometheus() as prom:
        yield prom


@pytest.fixture
def watched(emu, alice, notebook_setup, prometheus, settings):
    """A running namespace instance with a 60-minute policy, a Prometheus on its cluster,
    and a running notebook whose Service the emulator proxies to a Jupyter stand-in."""
    settings.KUBE_RETRIES = 0
    instance, profile = notebook_setup
    instance.profile.idle_stop_minutes = 60
    instance.profile.save()
    instance.cluster.prometheus_url = prometheus.url
    instance.cluster.save()
    emu.add_hook(kubeemu.serve_endpoints)  # the EndpointSlice controller's part
    notebook = until(deploy_notebook(alice, instance, profile), "running")
    jupyter = Jupyter(notebook.token)
    ns = namespace_of(emu, instance)["metadata"]["name"]
    emu.service_backends[(ns, f"nb-explore-{notebook.pk}")] = jupyter.url
    yield Instance.objects.get(pk=instance.pk), ns, jupyter
    jupyter.server.shutdown()


def test_a_busy_gpu_keeps_a_namespace_instance_and_an_idle_one_is_warned_then_stopped(
        emu, watched, prometheus):
    instance, ns, jupyter = watched
    # Someone else's GPU is busy; this namespace's is at 90 % with no kernel busy.
    prometheus.series = [
        ({"__name__": UTIL, "gpu": "0", "exported_namespace": "someone-else"}, 99.0),
        ({"__name__": UTIL, "gpu": "1", "exported_namespace": ns, "exported_pod": "trainer"},
         90.0)]
    instance = idle_since(instance, 120)
    assert check(instance) == "active"
    instance.refresh_from_db()
    assert instance.idle_reading.startswith("GPU 90 % (idle under 5 %); no kernel busy")
    # Jupyter was asked through the service proxy, with its token, and not counted.
    assert any(path.startswith("/api/kernels?no_track_activity=1&token=")
               for path in jupyter.asked)
    assert ns in prometheus.queries[-1]

    # The run ended, so the namespace has no GPU series left while the exporter reports
    # others: 0 %. Three hours since Jupyter saw anyone: warned.
    prometheus.series = prometheus.series[:1]
    idle_since(instance, 56)
    assert check(instance) == "warned"
    instance.refresh_from_db()
    assert instance.idle_reading.startswith("GPU 0 % (idle under 5 %)")
    assert mail.outbox[-1].subject == "train stops in 5 minutes unless you keep it running"

    # A busy kernel would keep it; an idle one does not.
    jupyter.busy = True
    assert check(instance) == "active"
    jupyter.busy = False
    idle_since(instance, 61)
    assert check(instance) == "warned"
    assert check(instance, at=timezone.now() + datetime.timedelta(minutes=5)) == "stopped"
    instance = services.halt_instance(instance_id=instance.pk)
    assert instance.status == Instance.Status.STOPPED, instance.status_message
    quota = emu.get("ResourceQuota", "instance-quota", ns)
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "0"


def test_without_an_answer_from_prometheus_or_the_notebook_nobody_is_stopped(
        emu, watched, prometheus):
    instance, ns, jupyter = watched
    prometheus.close()  # configured, but not answering
    instance = idle_since(instance, 500)
    assert check(instance) == "active"
    instance.refresh_from_db()
    assert instance.idle_reading.startswith("the GPU reading failed, so it counts as used")

    # No Prometheus set: activity alone decides, and says so.
    instance.cluster.prometheus_url = ""
    instance.cluster.save()
    instance = idle_since(instance, 500)
    assert check(instance) == "warned"
    instance.refresh_from_db()
    assert instance.idle_reading.startswith("no GPU reading, so activity alone decides")

    # A notebook the cluster cannot reach (no endpoints: 503) counts as used.
    emu.service_backends.clear()
    instance = idle_since(instance, 500)
    assert check(instance) == "active"
    instance.refresh_from_db()
    assert "1 notebook did not answer, so it counts as used" in instance.idle_reading


def test_prometheus_is_asked_for_the_namespace_under_either_label(prometheus):
    from clusters.backends.kubernetes.prometheus import namespace_utilisation

    assert namespace_utilisation(prometheus.url, "ns-a", window_s=60) is None  # no exporter
    prometheus.series = [({"__name__": UTIL, "gpu": "0", "namespace": "ns-b"}, 40.0)]
    assert namespace_utilisation(prometheus.url, "ns-a", window_s=60) == 0.0
    prometheus.series.append(({"__name__": UTIL, "gpu": "1", "namespace": "ns-a"}, 12.0))
    prometheus.series.append(({"__name__": UTIL, "gpu": "2", "exported_namespace": "ns-a"}, 7.0))
    assert namespace_utilisation(prometheus.url, "ns-a", window_s=60) == 12.0
