"""Tests of the kit's proxy (``kubeproxy.py``), in front of the emulator: the faults it
injects and the requests it counts, driven over real HTTP by the official ``kubernetes``
client. (``tests/test_kube_proxy.py`` holds it to the same on a real API server too.)

No test needs the Django database.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from . import kubeemu, kubeproxy
from .test_kubeemu import deployment


@pytest.fixture
def emu() -> Iterator[kubeemu.Emulator]:
    with kubeemu.start(ready_delay=0.02, namespace_delete_delay=0.02) as emulator:
        yield emulator


@pytest.fixture
def proxy(emu: kubeemu.Emulator) -> Iterator[kubeproxy.Proxy]:
    with kubeproxy.start(emu.url) as started:
        yield started


@pytest.fixture
def api(proxy: kubeproxy.Proxy) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    configuration.host = proxy.url
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def status_body(exc: ApiException) -> dict:
    return json.loads(exc.body)


# ----------------------------------------------------------------------------- faults


def test_fault_500(emu: kubeemu.Emulator, proxy: kubeproxy.Proxy, core: client.CoreV1Api) -> None:
    proxy.faults = kubeproxy.Faults(rate=1.0, kinds=("500",))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    assert err.value.status == 500
    assert status_body(err.value)["reason"] == "InternalError"
    assert emu.get("ConfigMap", "c") is None
    assert proxy.requests.by_fault() == {"500": 1}


def test_fault_timeout(proxy: kubeproxy.Proxy, core: client.CoreV1Api) -> None:
    proxy.faults = kubeproxy.Faults(rate=1.0, kinds=("timeout",), delay=5.0)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "c"}}, _request_timeout=0.2
        )
    assert time.monotonic() - started < 2
    assert proxy.requests.by_fault() == {"timeout": 1}
    # stop() (by the fixture) releases the held connection at once instead of after 5 s.


def test_fault_reset(proxy: kubeproxy.Proxy, core: client.CoreV1Api) -> None:
    proxy.faults = kubeproxy.Faults(rate=1.0, kinds=("reset",))
    with pytest.raises(urllib3.exceptions.ProtocolError) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    assert isinstance(err.value.args[1], ConnectionError)
    assert proxy.requests.by_fault() == {"reset": 1}


def test_rate_zero_injects_nothing(proxy: kubeproxy.Proxy, core: client.CoreV1Api) -> None:
    proxy.faults = kubeproxy.Faults(rate=0.0, kinds=kubeproxy.FAULT_KINDS, seed=1)
    for i in range(20):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
    assert len(core.list_namespaced_config_map("default").items) == 20
    assert proxy.requests.faulted == 0 and proxy.requests.failed == 0


def _fault_pattern(seed: int, calls: int = 30) -> list[bool]:
    with kubeemu.start() as emulator, kubeproxy.start(emulator.url) as proxy:
        proxy.faults = kubeproxy.Faults(rate=0.5, kinds=("500",), seed=seed)
        configuration = client.Configuration()
        configuration.host, configuration.retries = proxy.url, False
        with client.ApiClient(configuration) as api_client:
            core = client.CoreV1Api(api_client)
            pattern = []
            for _ in range(calls):
                try:
                    core.read_namespace("default")
                    pattern.append(False)
                except ApiException as exc:
                    assert exc.status == 500
                    pattern.append(True)
        assert proxy.requests.faulted == sum(pattern)
        return pattern


def test_faults_are_deterministic_with_a_seed() -> None:
    first, again, other = _fault_pattern(7), _fault_pattern(7), _fault_pattern(8)
    assert first == again
    assert first != other
    assert 5 < sum(first) < 25


def test_faults_can_target_mutating_verbs_and_paths(
    proxy: kubeproxy.Proxy, api: client.ApiClient
) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    proxy.faults = kubeproxy.Faults(rate=1.0, verbs=kubeproxy.MUTATING_VERBS)
    core.list_namespace()
    core.read_namespace("default")
    with pytest.raises(ApiException):
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})

    proxy.faults = kubeproxy.Faults(rate=1.0, paths=("/apis/apps/",))
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    with pytest.raises(ApiException):
        apps.create_namespaced_deployment("default", deployment("nb"))
    assert proxy.requests.by_fault() == {"500": 2}


def test_fault_after_the_write_and_limit(
    emu: kubeemu.Emulator, proxy: kubeproxy.Proxy, core: client.CoreV1Api
) -> None:
    # The write lands but its answer is lost, once: the client's retry then meets 409.
    proxy.faults = kubeproxy.Faults(rate=1.0, kinds=("500",), after=True, limit=1)
    with pytest.raises(ApiException) as lost:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    assert lost.value.status == 500
    assert emu.get("ConfigMap", "c") is not None
    with pytest.raises(ApiException) as retry:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    assert retry.value.status == 409


def test_faults_set_before_the_first_request(proxy: kubeproxy.Proxy,
                                             core: client.CoreV1Api) -> None:
    proxy.faults = kubeproxy.Faults(rate=1.0, kinds=("500",), limit=1)
    with pytest.raises(ApiException):
        core.read_namespace("default")
    assert core.read_namespace("default").metadata.name == "default"


def test_faults_reject_bad_settings() -> None:
    with pytest.raises(ValueError):
        kubeproxy.Faults(rate=1.5)
    with pytest.raises(ValueError):
        kubeproxy.Faults(rate=0.5, kinds=("boom",))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- request counter


def test_request_counter(proxy: kubeproxy.Proxy, core: client.CoreV1Api) -> None:
    proxy.requests.reset()
    core.list_namespace()
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    core.read_namespaced_config_map("c", "default")
    core.patch_namespaced_config_map("c", "default", {"data": {"a": "b"}})
    core.delete_namespaced_config_map("c", "default")
    with pytest.raises(ApiException):
        core.read_namespaced_config_map("c", "default")

    requests = proxy.requests
    assert requests.total == 6 and requests.failed == 1 and requests.faulted == 0
    assert requests.by_verb() == {"list": 1, "create": 1, "get": 2, "patch": 1, "delete": 1}
    assert requests.by_verb_resource()[("get", "configmaps")] == 2
    assert requests.by_pattern()[("GET", "/api/v1/namespaces/{namespace}/configmaps/{name}")] == 2
    assert requests.count(resource="configmaps", namespace="default") == 5

    # A reset GET is retried three times by urllib3: four requests reach the proxy.
    requests.reset()
    proxy.faults = kubeproxy.Faults(rate=1.0, kinds=("reset",))
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.read_namespace("default")
    assert (requests.total, requests.faulted, requests.failed) == (4, 4, 4)

    proxy.faults = None
    requests.reset()
    threads = [
        threading.Thread(target=lambda: [core.read_namespace("default") for _ in range(10)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert requests.total == 80 and requests.by_verb() == {"get": 80}
    requests.reset()
    assert requests.total == 0 and requests.records() == []
