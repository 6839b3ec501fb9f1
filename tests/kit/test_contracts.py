"""The emulator answers the recorded corpus as the real kube-apiserver did (contracts/,
recorded with `make record-contracts`): the same status, reason, fields named, and whether
list items carry their kind."""

import json
import time

import pytest

from . import contracts, kubeemu

RECORDED = json.loads(contracts.ANSWERS.read_text())


@pytest.fixture(scope="module")
def replayed():
    with kubeemu.start(namespace_delete_delay=0.5) as emu:
        emu.add_upstream_kinds()
        # the emulator's controllers act within a tenth of a second
        yield contracts.run(contracts.Client(emu.url), None, settle=lambda: time.sleep(0.3))


def test_the_corpus_covers_what_the_portal_writes_and_the_refusals_that_matter():
    names = set(RECORDED["answers"])
    for kind in ("Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "RoleBinding",
                 "Service", "Secret", "PersistentVolumeClaim", "Deployment", "Ingress",
                 "HelmRepository", "HelmRelease", "HelmChartProxy", "Cluster"):
        assert any(n.startswith(f"create {kind} ") for n in names), kind
    refusals = {n: a for n, a in RECORDED["answers"].items() if a["status"] >= 400}
    assert refusals["PSA restricted: a plain busybox pod"]["reason"] == "Forbidden"
    assert refusals["quota: 3 GPUs where 2 are allowed"]["reason"] == "Forbidden"
    assert refusals["an Ingress host ending in a dot"]["fields"] == ["spec.rules[0].host"]
    assert refusals["apply by another manager: conflict"]["status"] == 409
    assert refusals["the RBAC escalation: portal binds cluster-admin"]["status"] == 403
    # The upstream CRDs' schemas: required fields, CEL, a field of another version.
    assert refusals["a HelmRelease without an interval"]["fields"] == ["<nil>", "spec.interval"]
    assert refusals["a HelmRelease with both chart and chartRef (CEL)"]["fields"] == ["spec"]
    assert refusals["a v1beta1 field in a v1beta2 Cluster, apply"]["status"] == 500
    kept = RECORDED["answers"]["read back what was kept"]["body"]["spec"]["topology"]
    assert "class" not in kept and kept["classRef"] == {"name": "gpu-cluster"}


@pytest.mark.parametrize("case", [c for c in contracts.corpus() if not c.as_portal],
                         ids=lambda c: c.name)
def test_the_emulator_answers_like_the_real_server(replayed, case):
    if case.name not in RECORDED["answers"]:
        pytest.skip(f"not recorded yet: {case.name!r} (make record-contracts on a real server)")
    expected = RECORDED["answers"][case.name]
    got = replayed[case.name]
    for key in case.compare:
        if key.startswith("body."):  # a part of the body, e.g. what an apply left
            got, expected = got["body"], expected["body"]
            key = key.removeprefix("body.")
        assert got.get(key) == expected.get(key), (
            f"{key}: emulator {got.get(key)!r}, real server {expected.get(key)!r}\n"
            f"emulator: {got.get('message', '')}\nreal: {expected.get('message', '')}")
