"""deploy/kubernetes: the portal's own manifests, rendered as an operator renders them
(`kubectl kustomize`, kubectl's built-in kustomize), checked against the Kubernetes schema and
the emulator's Pod Security rules in CI, and applied to a real API server when the envtest
binaries are there: every object admitted, in a namespace enforcing Pod Security
`restricted`, with no warning."""

import http.client
import json
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from clusters.backends.kubernetes import policies

from .conftest import ROOT
from .kit import envtest, kubeemu

DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAY = DEPLOY / "overlays" / "production"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
K8S_VERSION = "1.31"
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# Secrets never sit in a ConfigMap: the workloads read them from the Secret gpupaas-secrets.
SECRETS = {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL",
           "FIELD_ENCRYPTION_KEY", "SECRET_KEY_FALLBACKS", "FIELD_ENCRYPTION_KEY_FALLBACKS",
           "OIDC_CLIENT_SECRET", "EMAIL_HOST_PASSWORD", "METRICS_TOKEN",
           "DEMO_PASSWORD", "ADMIN_PASSWORD"}
REQUIRED_SECRETS = {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"}


def render(folder: Path) -> list[dict]:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed (Debian package kubectl): it renders kustomize")
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def production() -> list[dict]:
    return render(OVERLAY)


def one(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def env_example_keys() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.M))


# --- as data (CI) ------------------------------------------------------------------------------


def test_the_base_and_the_overlay_render_to_the_same_kinds_of_objects(production):
    base = render(DEPLOY / "base")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in base) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in production)
    assert {o["kind"] for o in production} >= {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
        "Deployment", "StatefulSet", "Job", "Service", "Ingress", "PodDisruptionBudget",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_every_object_is_valid_against_the_kubernetes_schema(production):
    for obj in production:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_rbac_is_exactly_what_docs_kubernetes_md_documents(production):
    """One source of truth: the manifests' RBAC objects equal the documented blocks (the
    kustomization only adds its labels)."""
    documented = envtest.documented_rbac() + envtest.documented_policies()
    kinds = {doc["kind"] for doc in documented}

    def key(obj: dict) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    def bare(obj: dict) -> dict:
        obj = json.loads(json.dumps(obj))
        obj["metadata"].pop("labels", None)
        return obj

    rendered = {key(o): bare(o) for o in production if o["kind"] in kinds}
    assert rendered == {key(d): d for d in documented}
    # The policies are the ones the portal's code describes (the admin page shows those).
    assert envtest.documented_policies() == policies.admission_policies()
    subjects = one(production, "ClusterRoleBinding", "gpupaas-portal")["subjects"]
    account = one(production, "ServiceAccount", "gpupaas-portal")
    assert subjects == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                         "namespace": account["metadata"]["namespace"]}]


def test_every_setting_of_env_example_comes_from_the_configmap_or_the_secret(production):
    config = one(production, "ConfigMap", "gpupaas-config")["data"]
    assert not set(config) & SECRETS, "a secret in the ConfigMap"
    for workload in workloads(production):
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "gpupaas-config"}}]
        secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert all(ref["name"] == "gpupaas-secrets" and ref["key"] == name
                   for name, ref in secret_refs.items())
        assert {n for n, ref in secret_refs.items() if not ref.get("optional")} == \
            REQUIRED_SECRETS
        provided = set(config) | set(secret_refs)
        name = workload["metadata"]["name"]
        assert env_example_keys() - provided == set(), f"{name} lacks these settings"
        assert provided - env_example_keys() == set(), f"{name} has undocumented settings"


def test_every_pod_meets_pod_security_restricted_with_a_read_only_root(production):
    namespace = one(production, "Namespace", "gpupaas-system")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespace["pod-security.kubernetes.io/warn"] == "restricted"
    for workload in workloads(production):
        spec = workload["spec"]["template"]["spec"]
        assert kubeemu._restricted_violations(spec) == [], workload["metadata"]["name"]
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]  # celery beat, metrics, scratch


def test_web_and_worker_are_probed_and_every_container_is_sized(production):
    for name in ("gpupaas-web", "gpupaas-worker"):
        [container] = one(production, "Deployment", name)["spec"]["template"]["spec"][
            "containers"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] in ("/healthz", "/readyz"), probe
        # A database outage must take pods out of the Service, never restart them.
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    web = one(production, "Deployment", "gpupaas-web")["spec"]["template"]["spec"]
    assert web["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "command" not in web["containers"][0]  # the image's: gunicorn -c gpupaas.gunicorn
    for workload in workloads(production):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert "memory" in resources["limits"]


def test_beat_is_one_pod_that_never_overlaps_its_successor(production):
    beat = one(production, "StatefulSet", "gpupaas-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["serviceName"] == one(production, "Service", "gpupaas-beat")[
        "metadata"]["name"]
    assert not [d for d in production if d["kind"] == "Deployment"
                and "beat" in json.dumps(d["spec"]["template"]["spec"]["containers"])]


def test_the_service_ingress_and_budgets_reach_the_pods_they_mean(production):
    def pods(component: str) -> dict:
        [workload] = [w for w in workloads(production)
                      if w["spec"]["template"]["metadata"]["labels"].get(
                          "app.kubernetes.io/component") == component]
        return workload["spec"]["template"]["metadata"]["labels"]

    service = one(production, "Service", "gpupaas-web")
    assert service["spec"]["selector"].items() <= pods("web").items()
    ingress = one(production, "Ingress", "gpupaas-web")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gpupaas-web", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    for component in ("web", "worker"):
        budget = one(production, "PodDisruptionBudget", f"gpupaas-{component}")
        assert budget["spec"]["selector"]["matchLabels"].items() <= pods(component).items()
        replicas = one(production, "Deployment", f"gpupaas-{component}")["spec"]["replicas"]
        assert 0 < budget["spec"]["minAvailable"] < replicas
    migrate = one(production, "Job", "gpupaas-migrate")["spec"]["template"]["spec"]
    assert "migrate --noinput" in " ".join(migrate["containers"][0]["command"])


# --- on a real API server (KUBEBUILDER_ASSETS) -----------------------------------------------


def apply(plane: envtest.ControlPlane, obj: dict) -> tuple[int, list[str], str]:
    """Server-side apply as `kubectl apply --server-side --force-conflicts` does; returns the
    status, the Warning headers the API server sent, and the body."""
    path = envtest.path_of(plane.resolver(), obj)
    context = ssl.create_default_context(cafile=str(plane.certs["ca.crt"]))
    context.load_cert_chain(str(plane.certs["admin.crt"]), str(plane.certs["admin.key"]))
    conn = http.client.HTTPSConnection("127.0.0.1", plane.port, context=context, timeout=30)
    try:
        conn.request("PATCH", path + "?fieldManager=kubectl&force=true", body=json.dumps(obj),
                     headers={"Content-Type": "application/apply-patch+yaml",
                              "Accept": "application/json"})
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        warnings = [v for k, v in response.getheaders() if k.lower() == "warning"]
    finally:
        conn.close()
    return response.status, warnings, body


def test_every_object_is_admitted_by_a_real_api_server_without_warnings(real_kube, production):
    plane = real_kube.plane
    # What the operator creates by hand first (kustomization.yaml says how).
    objects = [production[0], {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "gpupaas-secrets", "namespace": "gpupaas-system"},
        "stringData": {"SECRET_KEY": "k" * 50, "DATABASE_URL": "postgres://db/gpupaas",
                       "CELERY_BROKER_URL": "redis://redis:6379/0"}}, *production[1:]]
    assert production[0]["kind"] == "Namespace"
    for obj in objects:
        status, warnings, body = apply(plane, obj)
        name = f"{obj['kind']} {obj['metadata']['name']}"
        assert status in (200, 201), f"{name}: {status} {body[:400]}"
        assert warnings == [], f"{name}: {warnings}"
    namespace = plane.admin_request("GET", "/api/v1/namespaces/gpupaas-system")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    # The controllers made every pod, and Pod Security (enforced) admitted each of them.
    def pods() -> dict[str, int] | None:
        items = plane.admin_request(
            "GET", "/api/v1/namespaces/gpupaas-system/pods?labelSelector="
            "app.kubernetes.io/name%3Dgpupaas")["items"]
        counts: dict[str, int] = {}
        for pod in items:
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            counts[component] = counts.get(component, 0) + 1
        want = {"web": 3, "worker": 3, "beat": 1, "migrate": 1}
        return counts if all(counts.get(k, 0) >= n for k, n in want.items()) else None

    deadline = time.monotonic() + 60
    while (counts := pods()) is None:
        events = plane.admin_request(
            "GET", "/api/v1/namespaces/gpupaas-system/events")["items"]
        refused = [e["message"] for e in events if e["reason"] == "FailedCreate"]
        assert not refused, refused
        assert time.monotonic() < deadline, "the pods were never created"
        time.sleep(0.5)
    assert counts["beat"] == 1
    for kind, plural, name in (("apps/v1", "deployments", "gpupaas-web"),
                               ("apps/v1", "deployments", "gpupaas-worker"),
                               ("apps/v1", "statefulsets", "gpupaas-beat"),
                               ("batch/v1", "jobs", "gpupaas-migrate")):
        plane.admin_request("DELETE", f"/apis/{kind}/namespaces/gpupaas-system/{plural}/{name}",
                            {"propagationPolicy": "Background"})


def test_the_portal_can_impersonate_no_one_nor_write_admission_policies(production):
    """A stolen portal token is no more than the portal: no `impersonate` verb on anything
    (RBAC cannot limit it to a prefix), and no write of any admission policy or binding
    (it could loosen one, or deny every pod in the cluster)."""
    rules = [rule for o in production if o["kind"] in ("ClusterRole", "Role")
             for rule in o.get("rules") or []]
    assert rules
    assert not [r for r in rules if "impersonate" in r["verbs"] or "*" in r["verbs"]]
    admission = [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]
    assert admission and all(r["verbs"] == ["get"] and r.get("resourceNames")
                             for r in admission)
    # Tokens only of ServiceAccounts in its own namespaces: granted by the manager role,
    # which it binds only there (the confinement policy keeps it so).
    token_rules = [(o["metadata"]["name"], r) for o in production
                   if o["kind"] == "ClusterRole" for r in o["rules"]
                   if "serviceaccounts/token" in r["resources"]]
    assert [name for name, _ in token_rules] == ["gpupaas-portal-manager"]
    assert {o["metadata"]["name"] for o in production if o["kind"] == "ClusterRoleBinding"} \
        == {"gpupaas-portal"}


def test_what_test_connection_asks_for_is_what_the_documented_role_grants():
    """Test connection asks the server for each cluster-wide permission in NEEDS: each must be
    one the documented gpupaas-portal ClusterRole grants, or every correctly installed
    cluster would be reported as lacking it (as admission writes once were)."""
    from clusters.backends.kubernetes.credentials import NEEDS

    [role] = [o for o in envtest.documented_rbac()
              if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "gpupaas-portal"]

    def granted(verb: str, group: str, resource: str, name: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"]
                   and verb in r["verbs"] and (not r.get("resourceNames")
                                               or name in r["resourceNames"])
                   for r in role["rules"])

    asked = [need for needs in NEEDS.values() for need in needs]
    assert asked and [need for need in asked if not granted(*need)] == []
