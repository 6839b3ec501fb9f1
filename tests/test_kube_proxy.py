"""The kit's proxy injects the same faults and counts the same requests whichever API server
is behind it, so fault tests mean the same on the emulator and on a real kube-apiserver."""

import time

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes import config

from .kit import kubeproxy


@pytest.fixture
def portal_core(kube, tmp_path):
    """The core API as the portal reaches it: its kubeconfig, through the proxy."""
    configuration = k8s.Configuration()
    config.load_kube_config(str(kube.kubeconfig(tmp_path / "portal")),
                            client_configuration=configuration)
    configuration.retries = False
    with k8s.ApiClient(configuration) as api:
        yield k8s.CoreV1Api(api)


def test_every_request_is_counted_by_verb(kube, portal_core):
    kube.requests.reset()
    for _ in range(3):
        portal_core.list_namespace(_request_timeout=10)
    assert kube.requests.count(verb="list", resource="namespaces") == 3
    assert kube.requests.failed == 0


def test_a_500_and_a_429_with_retry_after_reach_the_client(kube, portal_core):
    kube.faults = kubeproxy.Faults(rate=1.0, kinds=("500",))
    with pytest.raises(k8s.ApiException) as failed:
        portal_core.list_namespace()
    assert failed.value.status == 500
    kube.faults = kubeproxy.Faults(rate=1.0, kinds=("429",))
    with pytest.raises(k8s.ApiException) as shed:
        portal_core.list_namespace()
    assert shed.value.status == 429
    assert shed.value.headers["Retry-After"] == "1"
    assert kube.requests.by_fault() == {"500": 1, "429": 1}


def test_a_held_request_times_out_and_a_reset_breaks_the_connection(kube, portal_core):
    kube.faults = kubeproxy.Faults(rate=1.0, kinds=("timeout",), delay=1.0)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        portal_core.list_namespace(_request_timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.0
    kube.faults = kubeproxy.Faults(rate=1.0, kinds=("reset",))
    with pytest.raises(urllib3.exceptions.ProtocolError):
        portal_core.list_namespace(_request_timeout=5)
    kube.faults = None
    assert portal_core.list_namespace(_request_timeout=10).items


def test_with_after_the_write_happens_but_its_answer_is_lost(kube, portal_core):
    kube.faults = kubeproxy.Faults(rate=1.0, kinds=("500",), after=True,
                                   verbs=frozenset({"create"}))
    with pytest.raises(k8s.ApiException):
        portal_core.create_namespace({"metadata": {"name": "lost-answer", "labels": {
            "app.kubernetes.io/managed-by": "gpupaas"}}})
    kube.faults = None
    assert kube.get("Namespace", "lost-answer") is not None


def test_a_request_body_is_read_whole_refused_past_the_limit_and_dropped_on_disconnect():
    import asyncio

    from access.proxy import TooLarge, read_body

    def receiving(*messages):
        queue = list(messages)

        async def receive():
            return queue.pop(0)
        return receive

    chunk = {"type": "http.request", "body": b"12345", "more_body": True}
    last = {"type": "http.request", "body": b"6", "more_body": False}
    assert asyncio.run(read_body(receiving(chunk, last), 6)) == b"123456"
    with pytest.raises(TooLarge):
        asyncio.run(read_body(receiving(chunk, chunk), 6))
    assert asyncio.run(read_body(receiving(chunk, {"type": "http.disconnect"}), 6)) is None
