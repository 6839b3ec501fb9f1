"""Recorded contracts: what a real kube-apiserver answers to the requests that matter to the
portal, so that the emulator can be held to the same answers in CI, where no real server runs.

``make record-contracts`` (needs ``$KUBEBUILDER_ASSETS``, and ``$ENVTEST_CRDS`` for the upstream
CRDs of Flux, Cluster API and CAAPH) starts the envtest control plane,
sends ``corpus()`` and writes ``contracts/answers.json`` (status, reason, fields named, and a
normalised body: no uids, timestamps or resourceVersions) and ``contracts/discovery.json``
(what ``/api``, ``/apis`` and every group version answered, which the emulator serves).
``tests/kit/test_contracts.py`` replays the corpus against the emulator.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import ssl
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).with_name("contracts")
ANSWERS = FOLDER / "answers.json"
DISCOVERY = FOLDER / "discovery.json"
NS = "contract"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
# What differs from one recording to the next: identities, times, addresses, placement.
VOLATILE = frozenset({"uid", "creationTimestamp", "resourceVersion", "managedFields",
                      "generation", "deletionTimestamp", "selfLink", "lastTransitionTime",
                      "startTime", "startedAt", "eventTime", "firstTimestamp", "lastTimestamp",
                      "clusterIP", "clusterIPs", "podIP", "podIPs", "hostIP", "hostIPs",
                      "nodeName", "serverAddressByClientCIDRs"})
# Generated name suffixes: pods of a ReplicaSet, token volumes, events.
GENERATED = re.compile(r"-[bcdfghjklmnpqrstvwxz2456789]{5}\b|\.[0-9a-f]{16}\b")
Obj = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: Any = None
    content_type: str = "application/json"
    # "portal": with the documented RBAC, not as admin. The emulator authorizes everything,
    # so it cannot answer these; they are recorded for the real server's record only.
    as_portal: bool = False
    compare: tuple[str, ...] = ("status", "reason", "fields", "items_have_kind")
    wait: bool = field(default=False)  # let the controllers act before the next case


def _spec() -> Any:
    from clusters.backends.base import InstanceSpec, NotebookSpec

    instance = InstanceSpec(key="inst-1", name="train", owner="alice", workspace="1",
                            kind="vcluster", gpus=2, gpu_model="", cpu=8, memory_gib=64,
                            storage_gib=100)
    # A notebook on a namespace instance goes into that instance's namespace.
    notebook = NotebookSpec(key="nb-1", name="explore", instance=replace(instance,
                                                                         kind="namespace"),
                            image="quay.io/jupyter/minimal-notebook", cpu=2, memory_gib=4,
                            gpus=1, token="t0ken")
    return instance, notebook


def _collection(obj: Obj) -> str:
    from clusters.backends.kubernetes.client import resource_path

    return resource_path(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"))


def _pod(name: str, *, restricted: bool, gpus: int = 0) -> Obj:
    container: Obj = {"name": "main", "image": "busybox:1.36", "command": ["sleep", "1d"]}
    spec: Obj = {"containers": [container]}
    if restricted:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus), "cpu": "1",
                                             "memory": "1Gi"},
                                  "requests": {"cpu": "1", "memory": "1Gi"}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


def corpus() -> list[Case]:
    """In order: each case may rely on the ones before it."""
    from clusters.backends.kubernetes import manifests as m

    instance, notebook = _spec()
    cs = m.ClusterSettings(portal_id="contracts", ingress_domain="apps.example.com")
    objects = [*m.namespace_objects(instance, cs),
               m.portal_role_binding(instance, cs, account=("gpupaas-system", "gpupaas-portal")),
               *m.vcluster_objects(instance, cs), *m.notebook_objects(notebook, cs)]
    tenant = objects[0]["metadata"]["name"]
    cases = [Case("discovery /api", "GET", "/api"), Case("discovery /apis", "GET", "/apis")]
    for gv in ("/api/v1", "/apis/apps/v1", "/apis/networking.k8s.io/v1",
               "/apis/rbac.authorization.k8s.io/v1", "/apis/authorization.k8s.io/v1"):
        cases.append(Case(f"discovery {gv}", "GET", gv))
    cases.append(Case("a group version not served", "GET", "/apis/cluster.x-k8s.io/v1alpha0"))
    for obj in objects:
        cases.append(Case(f"create {obj['kind']} {obj['metadata']['name']}", "POST",
                          _collection(obj), obj))
    ingress = next(o for o in objects if o["kind"] == "Ingress")
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"]
                   .startswith("nb-"))
    cases += _upstream_cases(instance, cs)
    cases += [
        Case("create again: already exists", "POST", _collection(objects[1]), objects[1]),
        Case("list a built-in kind: items carry no kind", "GET",
             f"/api/v1/namespaces/{tenant}/resourcequotas"),
        Case("list across namespaces by label", "GET",
             "/apis/networking.k8s.io/v1/networkpolicies?labelSelector="
             "gpupaas.io%2Fportal%3Dcontracts"),
        Case("get a missing object", "GET", f"/api/v1/namespaces/{tenant}/services/nope"),
        Case("create in a missing namespace", "POST", "/api/v1/namespaces/nowhere/configmaps",
             {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
        Case("merge patch an existing object", "PATCH",
             f"{_collection(service)}/{service['metadata']['name']}",
             {"metadata": {"labels": {"touched": "yes"}}}, MERGE),
    ]
    bad_host = copy.deepcopy(ingress)
    bad_host["metadata"]["name"] = "bad-host"
    bad_host["spec"]["rules"][0]["host"] = "nb-x-4."
    cases.append(Case("an Ingress host ending in a dot", "POST", _collection(bad_host), bad_host))
    upper = copy.deepcopy(bad_host)
    upper["spec"]["rules"][0]["host"] = "NB.example.com"
    cases.append(Case("an Ingress host in capitals", "POST", _collection(upper), upper))
    # A PSA-restricted namespace with a GPU quota of 2.
    psa = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    cases += [
        Case("create the restricted namespace", "POST", "/api/v1/namespaces",
             {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": NS, "labels": psa}}),
        Case("a GPU quota of 2", "POST", f"/api/v1/namespaces/{NS}/resourcequotas",
             {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus"},
              "spec": {"hard": {"requests.nvidia.com/gpu": "2"}}}, wait=True),
        Case("PSA restricted: a plain busybox pod", "POST", f"/api/v1/namespaces/{NS}/pods",
             _pod("busybox", restricted=False)),
        Case("PSA restricted: a compliant pod", "POST", f"/api/v1/namespaces/{NS}/pods",
             _pod("compliant", restricted=True)),
        Case("quota: 3 GPUs where 2 are allowed", "POST", f"/api/v1/namespaces/{NS}/pods",
             _pod("greedy", restricted=True, gpus=3)),
        Case("quota: 2 GPUs fit", "POST", f"/api/v1/namespaces/{NS}/pods",
             _pod("fits", restricted=True, gpus=2), wait=True),
        Case("quota: 1 more GPU does not", "POST", f"/api/v1/namespaces/{NS}/pods",
             _pod("one-more", restricted=True, gpus=1)),
    ]
    labels = {"app": "plain"}
    plain_template = {"metadata": {"labels": labels}, "spec": _pod("x", restricted=False)["spec"]}
    cases += [
        Case("a Deployment whose pods PSA refuses is accepted", "POST",
             f"/apis/apps/v1/namespaces/{NS}/deployments",
             {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "plain"},
              "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                       "template": plain_template}}),
        Case("a StatefulSet whose pods PSA refuses is accepted", "POST",
             f"/apis/apps/v1/namespaces/{NS}/statefulsets",
             {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "plain"},
              "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                       "serviceName": "plain", "template": plain_template}}, wait=True),
        Case("their controllers say FailedCreate", "GET", f"/api/v1/namespaces/{NS}/events",
             compare=("status", "warnings")),
    ]
    # A LimitRange maximum: a pod over it is refused, and a Deployment of such pods is
    # accepted, its ReplicaSet then failing to create them (the portal reads that).
    limited = f"{NS}-limits"
    big = {"name": "main", "image": "busybox:1.36", "command": ["sleep", "1d"],
           "resources": {"limits": {"cpu": "2", "memory": "512Mi"}}}
    cases += [
        Case("create a namespace with a LimitRange", "POST", "/api/v1/namespaces",
             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": limited}}),
        Case("a LimitRange of at most 1 CPU per container", "POST",
             f"/api/v1/namespaces/{limited}/limitranges",
             {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "small"},
              "spec": {"limits": [{"type": "Container", "max": {"cpu": "1", "memory": "1Gi"},
                                   "default": {"cpu": "500m", "memory": "256Mi"}}]}},
             wait=True),
        Case("LimitRange: a pod over the maximum", "POST",
             f"/api/v1/namespaces/{limited}/pods",
             {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"},
              "spec": {"containers": [big]}},
             compare=("status", "reason", "fields", "message")),
        Case("LimitRange: a Deployment over the maximum is accepted", "POST",
             f"/apis/apps/v1/namespaces/{limited}/deployments",
             {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "big"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "big"}},
                       "template": {"metadata": {"labels": {"app": "big"}},
                                    "spec": {"containers": [big]}}}}, wait=True),
        Case("LimitRange: its ReplicaSet says FailedCreate", "GET",
             f"/api/v1/namespaces/{limited}/events", compare=("status", "warnings")),
    ]
    cm = f"/api/v1/namespaces/{NS}/configmaps/applied"
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}}
    cases += [
        Case("apply without a field manager", "PATCH", cm, {**doc, "data": {"a": "1"}}, APPLY),
        Case("apply creates", "PATCH", f"{cm}?fieldManager=one", {**doc, "data": {"a": "1"}},
             APPLY),
        Case("apply again, same values", "PATCH", f"{cm}?fieldManager=one",
             {**doc, "data": {"a": "1"}}, APPLY),
        Case("apply by another manager: conflict", "PATCH", f"{cm}?fieldManager=two",
             {**doc, "data": {"a": "2"}}, APPLY),
        Case("apply by another manager, same value: shared", "PATCH", f"{cm}?fieldManager=two",
             {**doc, "data": {"a": "1", "b": "2"}}, APPLY),
        Case("apply by another manager, forced", "PATCH", f"{cm}?fieldManager=three&force=true",
             {**doc, "data": {"a": "3"}}, APPLY),
        Case("apply drops a field it owned alone", "PATCH", f"{cm}?fieldManager=two",
             {**doc, "data": {"a": "3"}}, APPLY),
        Case("read the applied object", "GET", cm, compare=("status", "body.data")),
        Case("an update owns fields too", "PUT", cm,
             {**doc, "data": {"a": "3", "c": "by-update"}}),
        Case("apply over a field an update set", "PATCH", f"{cm}?fieldManager=one",
             {**doc, "data": {"c": "mine"}}, APPLY),
        Case("the RBAC escalation: portal binds cluster-admin", "POST",
             f"/apis/rbac.authorization.k8s.io/v1/namespaces/{tenant}/rolebindings",
             {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
              "metadata": {"name": "escalate"},
              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                          "name": "cluster-admin"},
              "subjects": [{"kind": "User", "name": "mallory",
                            "apiGroup": "rbac.authorization.k8s.io"}]}, as_portal=True),
        Case("the portal reads a kube-system secret", "GET",
             "/api/v1/namespaces/kube-system/secrets", as_portal=True),
        Case("delete a namespace", "DELETE", f"/api/v1/namespaces/{tenant}"),
        Case("create in a terminating namespace", "POST",
             f"/api/v1/namespaces/{tenant}/configmaps",
             {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}),
        Case("delete a terminating namespace again", "DELETE", f"/api/v1/namespaces/{tenant}"),
    ]
    return cases


def _upstream_cases(instance: Any, cs: Any) -> list[Case]:
    """Flux's, Cluster API's and CAAPH's kinds as their CRDs serve them (``ENVTEST_CRDS``):
    what the portal writes for a dedicated cluster, and the schema's refusals that matter
    (required fields, a CEL rule, a field of another version: refused by server-side apply,
    dropped without a word by a create)."""
    from clusters.backends.kubernetes import manifests as m

    dedicated = replace(instance, kind="dedicated", cluster_class="gpu-cluster",
                        kubernetes_version="v1.31.0", worker_class="gpu-worker")
    cluster = m.capi_cluster(dedicated, cs)
    ns = cluster["metadata"]["namespace"]
    clusters = f"/apis/cluster.x-k8s.io/v1beta2/namespaces/{ns}/clusters"
    cases = [Case("create the Cluster API namespace", "POST", "/api/v1/namespaces",
                  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})]
    for obj in [*m.capi_addons(cs), cluster]:
        cases.append(Case(f"create {obj['kind']} {obj['metadata']['name']}", "POST",
                          _collection(obj), obj))
    release = m.vcluster_objects(instance, cs)[-1]
    releases = _collection(release)
    no_interval = copy.deepcopy(release)
    no_interval["metadata"]["name"] = "no-interval"
    del no_interval["spec"]["interval"]
    both = copy.deepcopy(release)
    both["metadata"]["name"] = "both"
    both["spec"]["chartRef"] = {"kind": "OCIRepository", "name": "vcluster"}
    old = copy.deepcopy(cluster)
    old["metadata"]["name"] = "old-field"
    old["spec"]["topology"]["class"] = "gpu-cluster"  # v1beta1's name for classRef
    no_class = copy.deepcopy(cluster)
    no_class["metadata"]["name"] = "no-class"
    del no_class["spec"]["topology"]["classRef"]
    no_worker_class = copy.deepcopy(cluster)
    no_worker_class["metadata"]["name"] = "no-worker-class"
    no_worker_class["spec"]["topology"]["workers"]["machineDeployments"][0]["class"] = ""
    cases += [
        Case("a HelmRelease without an interval", "POST", releases, no_interval),
        Case("a HelmRelease with both chart and chartRef (CEL)", "POST", releases, both),
        Case("a Cluster with no classRef", "POST", clusters, no_class),
        Case("a Cluster whose worker pool has no class", "POST", clusters, no_worker_class),
        Case("a v1beta1 field in a v1beta2 Cluster, strict apply", "PATCH",
             f"{clusters}/old-field?fieldManager=gpupaas&fieldValidation=Strict", old, APPLY),
        Case("a v1beta1 field in a v1beta2 Cluster, apply", "PATCH",
             f"{clusters}/old-field?fieldManager=gpupaas", old, APPLY),
        Case("a v1beta1 field in a v1beta2 Cluster, create", "POST", clusters, old),
        Case("read back what was kept", "GET", f"{clusters}/old-field",
             compare=("status", "body.spec")),
        Case("list Clusters by label: items carry their kind", "GET",
             f"{clusters}?labelSelector=gpupaas.io%2Fportal%3Dcontracts"),
    ]
    return cases


# ---------------------------------------------------------------------------- answers


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return GENERATED.sub(lambda m: m.group(0)[0] + "*", value)
    return value


def normalise(status: int, body: Any) -> Obj:
    answer: Obj = {"status": status}
    if not isinstance(body, dict):
        return answer
    answer["kind"] = body.get("kind")
    if body.get("kind") == "Status":
        answer["reason"] = body.get("reason", "")
        causes = (body.get("details") or {}).get("causes") or []
        answer["fields"] = sorted({c["field"] for c in causes if c.get("field")})
        answer["message"] = _scrub(body.get("message", ""))
    elif isinstance(body.get("items"), list) and body["items"]:
        answer["items_have_kind"] = all("kind" in i for i in body["items"])
        if body.get("kind") == "EventList":  # who warned about what, once each
            answer["warnings"] = sorted({
                f"{e['involvedObject'].get('kind')} {e.get('reason')}: "
                + ("PodSecurity" if "PodSecurity" in e.get("message", "") else
                   "LimitRange maximum" if "usage per Container" in e.get("message", "") else "")
                for e in body["items"] if e.get("type") == "Warning"})
    if body.get("kind") != "Status":  # events: how many retries were recorded varies
        answer["body"] = _scrub(body) if body.get("kind") not in (
            "APIResourceList", "APIGroupList", "EventList") else None
    return answer


class Client:
    """Raw HTTP(S) to an API server, as admin or with a bearer token."""

    def __init__(self, url: str, *, context: ssl.SSLContext | None = None,
                 token: str = "") -> None:
        self.url, self.context, self.token = url, context, token

    def send(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, Any]:
        host, port = self.url.split("://")[1].split(":")
        conn = (http.client.HTTPSConnection(host, int(port), context=self.context, timeout=30)
                if self.url.startswith("https") else
                http.client.HTTPConnection(host, int(port), timeout=30))
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")


def run(admin: Client, portal: Client | None, *, settle: Any = None) -> dict[str, Obj]:
    answers = {}
    for case in corpus():
        if case.as_portal and portal is None:
            continue
        client = portal if case.as_portal else admin
        status, body = client.send(case.method, case.path, case.body, case.content_type)
        answers[case.name] = normalise(status, body)
        if case.wait and settle:
            settle()
    return answers


# ---------------------------------------------------------------------------- recording


# Served by the upstream CRDs when installed; the emulator declares them (kubeemu.UPSTREAM_KINDS)
# only where a test has them installed.
UPSTREAM_GROUPS = frozenset({"helm.toolkit.fluxcd.io", "source.toolkit.fluxcd.io",
                             "cluster.x-k8s.io", "addons.cluster.x-k8s.io"})


def record_discovery(admin: Client) -> list[Obj]:
    """Every group version's resource list, preferred version of a group first; the
    upstream CRDs' groups are left out (the emulator declares its own)."""
    documents = []
    _, core = admin.send("GET", "/api")
    for version in core["versions"]:
        documents.append(admin.send("GET", f"/api/{version}")[1])
    _, groups = admin.send("GET", "/apis")
    for group in groups["groups"]:
        if group["name"] in UPSTREAM_GROUPS:
            continue
        for version in group["versions"]:
            documents.append(admin.send("GET", f"/apis/{version['groupVersion']}")[1])
    return [{"groupVersion": d["groupVersion"], "resources": d["resources"]}
            for d in documents]


def record() -> int:
    import os
    import time

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")
    import django

    django.setup()
    from . import envtest

    binaries = envtest.assets()
    if binaries is None:
        print(f"record-contracts: {envtest.skip_reason()}", file=sys.stderr)
        return 2
    if envtest.crds_folder() is None:
        print(f"record-contracts: {envtest.CRDS_SKIP}", file=sys.stderr)
        return 2
    with envtest.running(binaries) as server:
        plane = server.plane
        context = ssl.create_default_context(cafile=str(plane.certs["ca.crt"]))
        context.load_cert_chain(str(plane.certs["admin.crt"]), str(plane.certs["admin.key"]))
        admin = Client(plane.url, context=context)
        portal_context = ssl.create_default_context(cafile=str(plane.certs["ca.crt"]))
        portal = Client(plane.url, context=portal_context, token=server.token)
        answers = run(admin, portal, settle=lambda: time.sleep(2))
        discovery = record_discovery(admin)
        version = admin.send("GET", "/version")[1]["gitVersion"]
    FOLDER.mkdir(exist_ok=True)
    ANSWERS.write_text(json.dumps({"server": version, "answers": answers}, indent=1,
                                  sort_keys=True) + "\n")
    DISCOVERY.write_text(json.dumps({"server": version, "groupVersions": discovery},
                                    indent=1, sort_keys=True) + "\n")
    print(f"record-contracts: {len(answers)} answers from kube-apiserver {version} in {ANSWERS}")
    return 0


if __name__ == "__main__":
    sys.exit(record())
