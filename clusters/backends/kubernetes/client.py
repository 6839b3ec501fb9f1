"""A small apply layer over the official client: server-side apply, idempotent deletes, lists by
label selector, bounded retries with backoff and jitter (and the server's Retry-After), and a
per-cluster request rate."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import urllib3

if TYPE_CHECKING:
    from kubernetes.client import ApiClient
    from kubernetes.client.rest import ApiException

from gpupaas.metrics import KUBE_LATENCY, KUBE_REQUESTS

from ..base import BackendError, TransientBackendError

log = logging.getLogger(__name__)
Manifest = dict[str, Any]


def api_exception() -> type[ApiException]:
    """The client's error, imported when first needed (see the package's docstring): the
    `except` clauses below name it through this, evaluated only once something was raised."""
    from kubernetes.client.rest import ApiException

    return ApiException

# (apiVersion, kind) -> (path prefix, plural, namespaced). Only what the portal manages.
RESOURCES: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("v1", "ResourceQuota"): ("/api/v1", "resourcequotas", True),
    ("v1", "LimitRange"): ("/api/v1", "limitranges", True),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "Event"): ("/api/v1", "events", True),
    ("v1", "Node"): ("/api/v1", "nodes", False),
    ("networking.k8s.io/v1", "NetworkPolicy"): (
        "/apis/networking.k8s.io/v1", "networkpolicies", True),
    ("networking.k8s.io/v1", "Ingress"): ("/apis/networking.k8s.io/v1", "ingresses", True),
    ("rbac.authorization.k8s.io/v1", "Role"): (
        "/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    ("apps/v1", "StatefulSet"): ("/apis/apps/v1", "statefulsets", True),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", True),
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims", True),
    ("discovery.k8s.io/v1", "EndpointSlice"): (
        "/apis/discovery.k8s.io/v1", "endpointslices", True),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): (
        "/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicies", False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): (
        "/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicybindings", False),
    # Flux (vcluster instances), Cluster API and its Helm add-on provider (dedicated ones).
    ("helm.toolkit.fluxcd.io/v2", "HelmRelease"): (
        "/apis/helm.toolkit.fluxcd.io/v2", "helmreleases", True),
    ("source.toolkit.fluxcd.io/v1", "HelmRepository"): (
        "/apis/source.toolkit.fluxcd.io/v1", "helmrepositories", True),
    ("cluster.x-k8s.io/v1beta2", "Cluster"): ("/apis/cluster.x-k8s.io/v1beta2", "clusters", True),
    ("cluster.x-k8s.io/v1beta2", "MachineDeployment"): (
        "/apis/cluster.x-k8s.io/v1beta2", "machinedeployments", True),
    ("addons.cluster.x-k8s.io/v1alpha1", "HelmChartProxy"): (
        "/apis/addons.cluster.x-k8s.io/v1alpha1", "helmchartproxies", True),
    ("addons.cluster.x-k8s.io/v1alpha1", "HelmReleaseProxy"): (
        "/apis/addons.cluster.x-k8s.io/v1alpha1", "helmreleaseproxies", True),
}
# Kinds a CRD serves: the API server drops fields its schema does not declare without a word
# (a v1beta1 field sent as v1beta2 vanishes), so their applies ask for strict validation.
CUSTOM_GROUPS = ("helm.toolkit.fluxcd.io/", "source.toolkit.fluxcd.io/", "cluster.x-k8s.io/",
                 "addons.cluster.x-k8s.io/")
# What provides each group, for the 404 of a kind that is not served.
PROVIDERS = {
    "helm.toolkit.fluxcd.io/": "Flux (helm-controller)",
    "source.toolkit.fluxcd.io/": "Flux (source-controller)",
    "cluster.x-k8s.io/": "Cluster API",
    "addons.cluster.x-k8s.io/": "Cluster API Add-on Provider Helm (CAAPH)",
}
TRANSIENT_STATUS = {0, 429, 500, 502, 503, 504}  # 0: the client's own TLS/protocol failure
FIELD_MANAGER = "gpupaas"
RETRY_AFTER_MAX_S = 30.0  # a longer wait is the task's to take, not a worker thread's


def request_verb(method: str, path: str, query: dict[str, str] | None = None,
                 content_type: str = "") -> str:
    """The Kubernetes verb of a request, as the API server's own metrics and audit log name
    it (a server-side apply is `apply`)."""
    if method == "PATCH" and content_type == "application/apply-patch+yaml":
        return "apply"
    if (query or {}).get("watch") in ("true", "1"):
        return "watch"
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:  # /version, /healthz...
        return "get" if method in ("GET", "HEAD") else method.lower()
    if rest[:1] == ["watch"]:
        return "watch"
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]  # namespaces/<ns>/<resource>...: the resource decides
    named = len(rest) >= 2
    return {
        "GET": "get" if named else "list", "HEAD": "get" if named else "list",
        "POST": "create", "PUT": "update", "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }.get(method, method.lower())


def resource_path(api_version: str, kind: str, namespace: str | None = None,
                  name: str | None = None) -> str:
    prefix, plural, namespaced = RESOURCES[(api_version, kind)]
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    return f"{path}/{name}" if name else path


class RateLimiter:
    """Token bucket: at most `qps` requests a second on average, bursts up to `burst`."""

    def __init__(self, qps: float, burst: int) -> None:
        self.rate, self.capacity = qps, float(max(burst, 1))
        self.tokens, self.updated = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


@dataclass(frozen=True)
class ClientSettings:
    cluster: str  # for messages
    name: str = ""  # the cluster's slug, for metrics labels (the message name when empty)
    qps: float = 20
    burst: int = 40
    timeout_s: float = 10
    retries: int = 4
    retry_base_s: float = 0.5


# Kubeconfig fields that run a program or read a file of the portal's machine.
RUNS_CODE = ("exec", "auth-provider")
READS_FILES = ("certificate-authority", "client-certificate", "client-key", "tokenFile")
# Impersonation in a kubeconfig: the client ignores it, so the credential would act as its
# base identity, not the one the file names (and the admission policies match).
IMPERSONATES = ("as", "as-groups", "as-uid", "as-user-extra")
INSECURE = "the portal never connects insecurely"


def check_kubeconfig(kubeconfig: Any, *, from_cluster: bool, allow_exec: bool = False) -> None:
    """Refuse, in words, a kubeconfig that would make the portal run a program or read its own
    files. One an administrator pasted may use an exec plugin where `allow_exec` (the
    KUBECONFIG_EXEC_ALLOWED setting) says so; one read from a cluster (a virtual cluster's,
    a dedicated cluster's) is data only: verified HTTPS with its CA inline, a token or a
    client certificate inline, nothing else."""
    if not isinstance(kubeconfig, dict):
        raise ValueError("it is not a kubeconfig (a YAML mapping)")
    for entry in kubeconfig.get("users") or []:
        user = (entry or {}).get("user") or {}
        name = (entry or {}).get("name", "")
        for key in RUNS_CODE:
            if user.get(key) and (from_cluster or not allow_exec):
                where = ("a kubeconfig read from a cluster never runs one" if from_cluster
                         else "set KUBECONFIG_EXEC_ALLOWED=true to allow exec plugins in "
                         "administrators' kubeconfigs")
                raise ValueError(f"its user {name!r} runs a program ({key}); {where}")
        if from_cluster and any(user.get(key) for key in READS_FILES):
            raise ValueError(f"its user {name!r} names a file of the portal's machine")
        if any(user.get(key) for key in IMPERSONATES):
            raise ValueError(f"its user {name!r} impersonates (as:), which the portal's client "
                             "does not do: give it the identity's own credential")
    if not from_cluster:
        return
    for entry in kubeconfig.get("clusters") or []:
        cluster = (entry or {}).get("cluster") or {}
        name = (entry or {}).get("name", "")
        if not str(cluster.get("server", "")).startswith("https://"):
            raise ValueError(f"its cluster {name!r} is not served over HTTPS; {INSECURE}")
        if cluster.get("insecure-skip-tls-verify") or cluster.get("proxy-url"):
            raise ValueError(f"its cluster {name!r} turns TLS verification off or goes "
                             f"through a proxy; {INSECURE}")
        if cluster.get("certificate-authority") or not cluster.get(
                "certificate-authority-data"):
            raise ValueError(f"its cluster {name!r} carries no CA of its own; {INSECURE}")


def api_client(kubeconfig: dict | None, *, in_cluster: bool = False, from_cluster: bool = False,
               allow_exec: bool = False) -> ApiClient:
    """An ApiClient without urllib3's own retries: ours count and pace every attempt. The
    kubeconfig is checked first (`check_kubeconfig`): loading one runs its exec plugin."""
    from kubernetes import config
    from kubernetes.client import ApiClient, Configuration

    configuration = Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=configuration)
    else:
        check_kubeconfig(kubeconfig or {}, from_cluster=from_cluster, allow_exec=allow_exec)
        config.load_kube_config_from_dict(kubeconfig or {}, client_configuration=configuration)
    configuration.retries = False
    return ApiClient(configuration)


class KubeClient:
    def __init__(self, api: ApiClient, settings: ClientSettings,
                 limiter: RateLimiter | None = None) -> None:
        self.api = api
        self.settings = settings
        self.limiter = limiter or RateLimiter(settings.qps, settings.burst)

    # -- the one place that talks HTTP

    def request(self, method: str, path: str, *, body: Any = None,
                query: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        """Send one API call, retrying transient failures with exponential backoff and jitter.

        Raises ApiException for answers retrying cannot change (404, 409, 422...) and
        TransientBackendError once retries are spent.
        """
        attempts = self.settings.retries + 1
        verb = request_verb(method, path, query, content_type)
        for attempt in range(attempts):
            self.limiter.acquire()
            started, code = time.monotonic(), "error"
            try:
                # Undecoded: we read plain JSON, whatever models this client version ships.
                response = self.api.call_api(
                    path, method,
                    query_params=list((query or {}).items()),
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=False,
                    _request_timeout=self.settings.timeout_s,
                )
                code = str(response.status)
                return json.loads(response.data or b"null")
            except api_exception() as exc:
                code = str(exc.status or "error")
                if exc.status not in TRANSIENT_STATUS or _invalid_patch(exc):
                    raise
                problem = f"{method} {path}: HTTP {exc.status} {exc.reason}"
                retry_after = _retry_after(exc)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problem = f"{method} {path}: {type(exc).__name__}: {exc}"
                retry_after = None
            except AttributeError as exc:
                # The client turns a TLS failure into ApiException(status=0) without a body,
                # then fails decoding that body: the TLS problem is in the exception before.
                cause = exc.__context__
                if not isinstance(cause, api_exception()):
                    raise
                problem = f"{method} {path}: TLS: {cause.reason}"
                retry_after = None
            finally:
                label = self.settings.name or self.settings.cluster
                KUBE_REQUESTS.labels(label, verb, code).inc()
                KUBE_LATENCY.labels(label, verb).observe(time.monotonic() - started)
            if attempt + 1 < attempts:
                delay = self.settings.retry_base_s * 2**attempt
                # The server's own Retry-After (429, 503) wins: it knows when it has room.
                time.sleep(retry_after if retry_after is not None
                           else random.uniform(delay / 2, delay))  # jitter keeps workers apart
                log.info("retrying after %s", problem)
        raise TransientBackendError(
            f"The cluster {self.settings.cluster} is not answering; the portal keeps trying.",
            detail=problem,
        )

    # -- verbs

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply: one request creates the object or brings the portal's fields
        back into shape. The portal owns these objects, so it takes its fields back from any
        other manager (force). Safe to repeat."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"),
                             meta["name"])
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        if manifest["apiVersion"].startswith(CUSTOM_GROUPS):
            query["fieldValidation"] = "Strict"
        try:
            return self.request("PATCH", path, body=manifest, query=query,
                                content_type="application/apply-patch+yaml")
        except api_exception() as exc:
            raise _refusal(exc, manifest, self.settings.cluster) from exc

    def create(self, manifest: Manifest) -> bool:
        """Create the object unless it exists (True when created). For objects the portal
        may create but not change, such as its admission policies."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            self.request("POST", path, body=manifest, query={"fieldManager": FIELD_MANAGER})
        except api_exception() as exc:
            if exc.status == 409:
                return False
            raise _refusal(exc, manifest, self.settings.cluster) from exc
        return True

    def scale_to_zero(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        """Stop a workload's pods but keep the object (and what it says) for the user."""
        try:
            self.request("PATCH", resource_path(api_version, kind, namespace, name),
                         body={"spec": {"replicas": 0}},
                         content_type="application/merge-patch+json")
        except api_exception() as exc:
            if exc.status != 404:
                raise _refusal(exc, None, self.settings.cluster) from exc

    def annotate(self, api_version: str, kind: str, name: str, namespace: str,
                 annotations: dict[str, str | None],
                 labels: dict[str, str | None] | None = None) -> None:
        """Set annotations and labels (None removes one) apart from the portal's applied
        fields: those a controller reads as requests (Flux's reconcile.fluxcd.io/*), the
        quarantine's mark."""
        meta: dict[str, Any] = {"annotations": annotations}
        if labels:
            meta["labels"] = labels
        try:
            self.request("PATCH", resource_path(api_version, kind, namespace, name),
                         body={"metadata": meta},
                         query={"fieldManager": f"{FIELD_MANAGER}-requests"},
                         content_type="application/merge-patch+json")
        except api_exception() as exc:
            raise _refusal(exc, None, self.settings.cluster) from exc

    def get(self, api_version: str, kind: str, name: str,
            namespace: str | None = None) -> Manifest | None:
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except api_exception() as exc:
            if exc.status == 404:
                return None
            raise _refusal(exc, None, self.settings.cluster) from exc

    def list(self, api_version: str, kind: str, *, label_selector: str = "",
             field_selector: str = "", namespace: str | None = None) -> list[Manifest]:
        """Every object of a kind (all namespaces unless one is given) matching the selectors;
        a kind the cluster does not serve (no Cluster API installed) lists as empty.

        A real server leaves `kind` and `apiVersion` off the items of a list of built-in
        kinds; they are filled in here, so callers can tell objects apart the same way
        whatever the server."""
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        try:
            answer = self.request("GET", resource_path(api_version, kind, namespace),
                                  query=query)
        except api_exception() as exc:
            if exc.status == 404:
                return []
            raise _refusal(exc, None, self.settings.cluster) from exc
        if not isinstance(answer, dict) or "items" not in answer:
            raise BackendError(
                f"{self.settings.cluster} answered a list of {kind} with something that is not "
                "a Kubernetes list.", detail=repr(answer)[:500])
        items = answer["items"] or []
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def delete(self, api_version: str, kind: str, name: str,
               namespace: str | None = None) -> Manifest | None:
        """Ask for deletion; None when the object is already gone (404)."""
        try:
            return self.request(
                "DELETE", resource_path(api_version, kind, namespace, name),
                query={"propagationPolicy": "Foreground"} if kind == "Cluster" else None,
            )
        except api_exception() as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:  # already being deleted
                return {}
            raise _refusal(exc, None, self.settings.cluster) from exc

    def version(self) -> Manifest:
        try:
            return self.request("GET", "/version")
        except api_exception() as exc:  # a 401 from a cluster that no longer takes the credential
            raise _refusal(exc, None, self.settings.cluster) from exc

    def create_token(self, namespace: str, account: str, seconds: int) -> Manifest | None:
        """A TokenRequest for a ServiceAccount (its answer); None when the account is missing."""
        try:
            return self.request(
                "POST", resource_path("v1", "ServiceAccount", namespace, account) + "/token",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                      "spec": {"expirationSeconds": seconds}})
        except api_exception() as exc:
            if exc.status == 404:
                return None
            raise _refusal(exc, None, self.settings.cluster) from exc

    def served(self, api_version: str, kind: str) -> bool:
        """Whether the server serves this kind (its CRD is installed), from discovery."""
        prefix, plural, _ = RESOURCES[(api_version, kind)]
        try:
            found = self.request("GET", prefix)
        except api_exception() as exc:
            if exc.status == 404:
                return False
            raise _refusal(exc, None, self.settings.cluster) from exc
        return any(r.get("name") == plural for r in (found or {}).get("resources") or [])


def _invalid_patch(exc: ApiException) -> bool:
    """Server-side apply answers 500 when a field is not in a CRD's schema ("failed to create
    typed patch object … field not declared in schema"): no retry will change that."""
    return exc.status == 500 and "failed to create typed patch object" in _status(exc)[0]


def _retry_after(exc: ApiException) -> float | None:
    """Seconds the server asked us to wait (Retry-After), capped; None when it did not say."""
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX_S) if value is not None else None
    except ValueError:
        return None


def _status(exc: ApiException) -> tuple[str, Manifest]:
    body = exc.body.decode() if isinstance(exc.body, bytes) else (exc.body or "")
    try:
        status = json.loads(body)
    except ValueError:
        status = {}
    return body, status if isinstance(status, dict) else {}


def _not_found(status: Manifest, manifest: Manifest | None, cluster: str) -> str:
    """Which of three different 404s this is: the kind is not served at all (Cluster API not
    installed), the object's namespace is missing, or the object itself vanished."""
    details = status.get("details") or {}
    if not details.get("kind"):  # "the server could not find the requested resource"
        provider = next((name for prefix, name in PROVIDERS.items()
                         if manifest and manifest["apiVersion"].startswith(prefix)), "")
        if provider.startswith("Cluster API"):
            return f"{provider} is not installed on {cluster}; dedicated clusters need it."
        if provider:
            return f"{provider} is not installed on {cluster}; virtual clusters need it."
        what = f"{manifest['kind']} ({manifest['apiVersion']})" if manifest else "this kind"
        return f"{cluster} does not serve {what}; the component that provides it is missing."
    if details["kind"] == "namespaces" and manifest and (
            details.get("name") == manifest["metadata"].get("namespace")):
        return (f"The namespace {details['name']} is missing on {cluster}; "
                "an administrator must create it.")
    kind = manifest["kind"] if manifest else details["kind"]
    return (f"{kind} {details.get('name', '')} vanished from {cluster} while the portal "
            "worked on it.")


def _refusal(exc: ApiException, manifest: Manifest | None = None,
             cluster: str = "the cluster") -> BackendError:
    """A refusal the cluster will repeat: say it in words, keep the raw answer for admins."""
    what = ""
    if manifest:
        what = f" {manifest['kind']} {manifest['metadata'].get('name', '')}"
    body, status = _status(exc)
    causes = [c.get("reason") for c in (status.get("details") or {}).get("causes") or []]
    if "custom resource definition is terminating" in body:
        kind = manifest["kind"] if manifest else "this kind"
        message = (f"The definition of {kind} (its CRD) is being deleted on {cluster}: nothing "
                   "of that kind can be created until an administrator installs it again.")
    elif exc.status == 403 and ("NamespaceTerminating" in causes
                                or "because it is being terminated" in body):
        message = ("Its namespace is being deleted on the cluster; nothing new can be created "
                   "there.")
    elif exc.status in (401, 403):
        message = "The cluster refused the portal's credentials or permissions."
        if "exceeded quota" in body:
            message = "Quota exceeded on the cluster."
    elif exc.status == 404:
        message = _not_found(status, manifest, cluster)
    elif exc.status == 422 or _invalid_patch(exc):
        message = f"The cluster rejected{what} as invalid."
    else:
        message = f"The cluster refused{what} (HTTP {exc.status})."
    return BackendError(message, detail=f"HTTP {exc.status} {exc.reason}: {body[:2000]}")
