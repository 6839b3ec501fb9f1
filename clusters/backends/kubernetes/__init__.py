"""The production backend: instances as namespaces, virtual clusters or Cluster API clusters."""

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import yaml
from django.conf import settings
from kubernetes.client.rest import ApiException

from clusters.models import Cluster

from ..base import (
    BackendError,
    GpuInventory,
    InstanceSpec,
    InstanceState,
    NotebookSpec,
    NotebookState,
)
from . import manifests as m
from .client import ClientSettings, KubeClient, RateLimiter, api_client
from .credentials import NEEDS, bearer_token, expiry_in_words, token_claims
from .status import (
    condition,
    explain_events,
    point_kubeconfig_at,
    secret_value,
    workload_ready,
)

Manifest = dict[str, Any]
Target = tuple[str, str, str, str | None]  # apiVersion, kind, name, namespace
LISTED_KINDS = [
    ("v1", "Namespace"), ("v1", "ResourceQuota"), ("v1", "LimitRange"),
    ("networking.k8s.io/v1", "NetworkPolicy"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"), ("v1", "Service"),
    ("apps/v1", "StatefulSet"), ("cluster.x-k8s.io/v1beta1", "Cluster"),
]

_clients: dict[int, tuple[Any, KubeClient]] = {}
_clients_lock = threading.Lock()


def client_for(cluster: Cluster) -> KubeClient:
    """One client per cluster and process, rebuilt when the cluster is edited; the rate limit
    is per cluster, shared by all the process's threads."""
    with _clients_lock:
        cached = _clients.get(cluster.pk)
        if cached and cached[0] == cluster.updated_at:
            return cached[1]
        try:
            kubeconfig = None if cluster.in_cluster else yaml.safe_load(cluster.kubeconfig)
            api = api_client(kubeconfig, in_cluster=cluster.in_cluster)
        except Exception as exc:  # a broken kubeconfig is the admin's to fix, in words
            raise BackendError(
                f"The portal cannot use the credentials of {cluster}: {exc}", detail=repr(exc)
            ) from exc
        client = KubeClient(
            api,
            ClientSettings(
                cluster=str(cluster), qps=settings.KUBE_QPS, burst=settings.KUBE_BURST,
                timeout_s=settings.KUBE_REQUEST_TIMEOUT_S, retries=settings.KUBE_RETRIES,
                retry_base_s=settings.KUBE_RETRY_BASE_S,
            ),
            RateLimiter(settings.KUBE_QPS, settings.KUBE_BURST),
        )
        _clients[cluster.pk] = (cluster.updated_at, client)
        return client


def cluster_settings(cluster: Cluster) -> m.ClusterSettings:
    return m.ClusterSettings(
        portal_id=settings.PORTAL_ID,
        gpu_resource_name=cluster.gpu_resource_name,
        ingress_namespace=cluster.ingress_namespace,
        storage_class=cluster.storage_class,
        capi_namespace=cluster.capi_namespace,
        vcluster_image=settings.VCLUSTER_IMAGE,
        ingress_domain=cluster.ingress_domain,
        ingress_class=cluster.ingress_class,
        ingress_tls_secret=cluster.ingress_tls_secret,
    )


NOTEBOOK_KINDS = [("v1", "Secret"), ("apps/v1", "Deployment"), ("v1", "Service"),
                  ("networking.k8s.io/v1", "Ingress")]


def _ref(obj: Manifest) -> tuple[str, str | None, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace"), meta["name"]


class KubernetesBackend:
    def __init__(self, cluster: Cluster, kube: KubeClient | None = None) -> None:
        self.cluster = cluster
        self.cs = cluster_settings(cluster)
        self.kube = kube or client_for(cluster)
        # The portal's own ServiceAccount, which it binds to the manager role in each
        # namespace it creates; None for other credentials (an admin's certificate).
        self.claims = token_claims(bearer_token(self.kube.api.configuration))
        self.account = self.claims.service_account if self.claims else None

    # -- what the cluster offers

    def inventory(self) -> GpuInventory:
        gpus: Counter[str] = Counter()
        for node in self.kube.list("v1", "Node"):
            count = int((node.get("status") or {}).get("allocatable", {}).get(
                self.cs.gpu_resource_name, 0))
            if count:
                labels = node["metadata"].get("labels") or {}
                gpus[labels.get(self.cluster.gpu_model_label, "unknown model")] += count
        model = gpus.most_common(1)[0][0] if gpus else ""
        devices = tuple(name for name, count in sorted(gpus.items()) for _ in range(count))
        return GpuInventory(total=sum(gpus.values()), model=model, simulated=False,
                            devices=devices)

    def check_connection(self) -> str:
        try:
            version = self.kube.version().get("gitVersion", "unknown version")
            missing = self.missing_permissions()
        except BackendError as exc:
            return f"{exc.message} ({exc.detail[:300]})"
        except ApiException as exc:
            return f"The cluster answered HTTP {exc.status}: {exc.reason}"
        try:
            gpus = Counter(self.inventory().devices)
            offered = ", ".join(f"{n} × {model}" for model, n in sorted(gpus.items())) or "none"
        except BackendError as exc:  # say what is missing rather than only this refusal
            offered = f"unknown ({exc.message})"
        lacking = "; ".join(f"{kind} profiles lack {', '.join(needs)}"
                            for kind, needs in missing.items())
        return (f"Connected: Kubernetes {version}; allocatable GPUs: {offered}. "
                f"{expiry_in_words(self.claims).capitalize()}; permissions: "
                f"{lacking or 'all that every profile kind needs'}.")

    def missing_permissions(self) -> dict[str, list[str]]:
        """Per profile kind, the cluster-wide permissions the credential lacks, in words
        (`create namespaces`), asked of the server with one SelfSubjectAccessReview each."""
        missing: dict[str, list[str]] = {}
        for kind, needs in NEEDS.items():
            for verb, group, resource, name in needs:
                review = self.kube.request(
                    "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    body={"apiVersion": "authorization.k8s.io/v1",
                          "kind": "SelfSubjectAccessReview",
                          "spec": {"resourceAttributes": {
                              "verb": verb, "group": group, "resource": resource,
                              "name": name}}})
                if not (review.get("status") or {}).get("allowed"):
                    what = f"{resource}/{name}" if name else resource
                    missing.setdefault(kind, []).append(
                        f"{verb} {what}" + (f" ({group})" if group else ""))
        return missing

    # -- instances

    def ensure_instance(self, spec: InstanceSpec) -> InstanceState:
        if spec.kind == "dedicated":
            return self._ensure_dedicated(spec)
        applied = self._apply_all(self._instance_objects(spec))
        ns = m.object_name(spec)
        plural = "s" if spec.gpus != 1 else ""
        if spec.kind == "namespace":
            return InstanceState(
                "running", f"Ready: namespace {ns} with room for {spec.gpus} GPU{plural}.",
                detail=f"namespace {ns} on {self.cluster}",
            )
        return self._vcluster_state(spec, ns, applied[-1])

    def _instance_objects(self, spec: InstanceSpec) -> list[Manifest]:
        """A namespace or vcluster instance's objects in order: the namespace, the portal's
        own RoleBinding in it (when it knows its ServiceAccount), then the rest."""
        objects = m.namespace_objects(spec, self.cs)
        if self.account:
            objects.insert(1, m.portal_role_binding(spec, self.cs, account=self.account))
        if spec.kind == "vcluster":
            objects += m.vcluster_objects(spec, self.cs)
        return objects

    def _apply_all(self, objects: list[Manifest]) -> list[Manifest]:
        applied = []
        for obj in objects:
            for pause in (0.1, 0.3, 1.0, None):
                try:
                    applied.append(self.kube.apply(obj))
                    break
                except BackendError as exc:
                    # The API server's RBAC cache honours the portal's fresh RoleBinding in
                    # a new namespace a moment later: a 403 then is worth a short retry.
                    if pause is None or not self.account or not exc.detail.startswith(
                            "HTTP 403"):
                        raise
                    time.sleep(pause)
        return applied

    def _vcluster_state(self, spec: InstanceSpec, ns: str, statefulset: Manifest) -> InstanceState:
        if workload_ready(statefulset):
            secret = self.kube.get("v1", "Secret", m.vcluster_kubeconfig_secret_name(), ns)
            kubeconfig = secret_value(secret, "config")
            if kubeconfig:
                server = f"https://{m.VCLUSTER_RELEASE}.{ns}.svc:443"
                return InstanceState(
                    "running", f"Ready: virtual cluster in namespace {ns}.",
                    detail=f"vcluster {m.VCLUSTER_VERSION} in {ns}",
                    kubeconfig=point_kubeconfig_at(kubeconfig, server),
                )
            return InstanceState("provisioning", "Waiting for the virtual cluster's credentials.")
        return self._waiting(ns, "Starting the virtual cluster's control plane.")

    def _waiting(self, ns: str, message: str) -> InstanceState:
        explained = explain_events(self.kube.list("v1", "Event", namespace=ns))
        if explained is None:
            return InstanceState("provisioning", message)
        text, detail, final = explained
        return InstanceState("failed" if final else "provisioning", text, detail=detail)

    def _ensure_dedicated(self, spec: InstanceSpec) -> InstanceState:
        if not spec.cluster_class:
            raise BackendError("This size names no ClusterClass; ask your administrator.")
        cluster = self.kube.apply(m.capi_cluster(spec, self.cs))
        status = cluster.get("status") or {}
        if status.get("failureMessage"):
            return InstanceState("failed", "The dedicated cluster could not be created.",
                                 detail=status["failureMessage"])
        ready = condition(cluster, "Ready")
        if ready.get("status") == "True":
            secret = self.kube.get("v1", "Secret", m.capi_kubeconfig_secret_name(spec),
                                   self.cs.capi_namespace)
            kubeconfig = secret_value(secret, "value")
            if kubeconfig:
                return InstanceState(
                    "running", f"Ready: dedicated cluster {m.object_name(spec)}.",
                    detail=f"Cluster API cluster {self.cs.capi_namespace}/{m.object_name(spec)}",
                    kubeconfig=kubeconfig,
                )
            return InstanceState("provisioning", "Waiting for the dedicated cluster's credentials.")
        phase = status.get("phase", "Pending")
        why = ready.get("message") or f"phase {phase}"
        return InstanceState("provisioning", f"Creating the dedicated cluster ({why}).")

    def _targets(self, key: str, spec: InstanceSpec | None) -> list[Target]:
        if spec is not None:
            if spec.kind == "dedicated":
                return [("cluster.x-k8s.io/v1beta1", "Cluster", m.object_name(spec),
                         self.cs.capi_namespace)]
            return [("v1", "Namespace", m.object_name(spec), None)]
        found = self._roots(f"{m.selector(self.cs)},{m.INSTANCE_LABEL}={key}")
        return [(o["apiVersion"], o["kind"], o["metadata"]["name"],
                 o["metadata"].get("namespace")) for o in found]

    def _roots(self, selector: str) -> list[Manifest]:
        """The objects whose deletion removes an instance: Namespaces and Cluster API Clusters."""
        return (self.kube.list("v1", "Namespace", label_selector=selector)
                + self.kube.list("cluster.x-k8s.io/v1beta1", "Cluster", label_selector=selector))

    def delete_instance(self, key: str, spec: InstanceSpec | None = None) -> InstanceState:
        remaining = [t for t in self._targets(key, spec) if self.kube.delete(*t) is not None]
        if not remaining:
            return InstanceState("gone", "Resources released.")
        names = ", ".join(f"{kind} {name}" for _, kind, name, _ in remaining)
        return InstanceState("deleting", f"Waiting for the cluster to remove {names}.")

    def list_instance_keys(self) -> set[str]:
        return {o["metadata"]["labels"][m.INSTANCE_LABEL] for o in self._roots(m.selector(self.cs))
                if m.INSTANCE_LABEL in (o["metadata"].get("labels") or {})}

    def reconcile_instances(self, specs: list[InstanceSpec]) -> dict[str, InstanceState]:
        """One list per kind, whatever the number of instances; then recreate what drifted
        away and report instances whose namespace or cluster vanished."""
        selector = m.selector(self.cs)
        present = {
            _ref(obj) for api_version, kind in LISTED_KINDS
            for obj in self.kube.list(api_version, kind, label_selector=selector)
        }
        states: dict[str, InstanceState] = {}
        for spec in specs:
            if spec.kind == "dedicated":
                ref = ("Cluster", self.cs.capi_namespace, m.object_name(spec))
                states[spec.key] = (
                    InstanceState("running", f"Ready: dedicated cluster {ref[2]}.")
                    if ref in present
                    else InstanceState("gone", "Its cluster was deleted outside the portal.")
                )
                continue
            desired = self._instance_objects(spec)
            if _ref(desired[0]) not in present:
                states[spec.key] = InstanceState(
                    "gone", "Its namespace was deleted outside the portal.")
                continue
            restored = [obj for obj in desired if _ref(obj) not in present]
            self._apply_all(restored)
            states[spec.key] = InstanceState(
                "running", f"Ready: namespace {m.object_name(spec)}.",
                detail="restored " + ", ".join(f"{o['kind']} {o['metadata']['name']}"
                                               for o in restored) if restored else "",
            )
        return states

    # -- notebooks

    def _notebook_client(self, spec: NotebookSpec) -> KubeClient:
        """Notebooks of a namespace instance live on this cluster; those of a virtual or
        dedicated cluster live inside it, reached with its own kubeconfig."""
        if spec.instance.kind == "namespace":
            return self.kube
        if not spec.instance_kubeconfig:
            raise BackendError("The instance's cluster has no credentials yet.")
        return KubeClient(api_client(yaml.safe_load(spec.instance_kubeconfig)),
                          self.kube.settings, self.kube.limiter)

    def ensure_notebook(self, spec: NotebookSpec) -> NotebookState:
        kube = self._notebook_client(spec)
        if spec.instance.kind != "namespace":
            kube.apply({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": m.NOTEBOOK_NAMESPACE,
                                     "labels": m.labels(spec.instance, self.cs)}})
        _, deployment, _, ingress = [kube.apply(obj) for obj in m.notebook_objects(spec, self.cs)]
        if self._reachable(deployment, ingress):
            return self._running(spec)
        return NotebookState("deploying", "created", "Created; waiting for the cluster to "
                             "schedule it.")

    def notebook_state(self, spec: NotebookSpec) -> NotebookState:
        kube, name = self._notebook_client(spec), m.notebook_name(spec)
        ns = m.notebook_namespace(spec)
        deployment = kube.get("apps/v1", "Deployment", name, ns)
        ingress = kube.get("networking.k8s.io/v1", "Ingress", name, ns)
        if deployment is None or ingress is None:
            return NotebookState("gone", "", "The notebook's objects are missing.")
        if self._reachable(deployment, ingress):
            return self._running(spec)
        events = [e for e in kube.list("v1", "Event", namespace=ns)
                  if e.get("involvedObject", {}).get("name", "").startswith(name)]
        explained = explain_events(events)
        if explained:
            text, detail, final = explained
            return NotebookState("failed" if final else "deploying", "starting", text,
                                 detail=detail)
        reasons = {e.get("reason") for e in events}
        if "Pulling" in reasons and "Pulled" not in reasons:
            return NotebookState("deploying", "pulling", f"Pulling the image {spec.image}.")
        if workload_ready(deployment):
            host = m.notebook_host(spec, self.cs)
            return NotebookState("deploying", "starting",
                                 f"Waiting for the ingress to admit {host}.")
        return NotebookState("deploying", "starting", "Starting JupyterLab.")

    def _reachable(self, deployment: Manifest, ingress: Manifest) -> bool:
        admitted = ((ingress.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        return bool(deployment.get("status", {}).get("availableReplicas")) and bool(admitted)

    def _running(self, spec: NotebookSpec) -> NotebookState:
        return NotebookState("running", "reachable", "Running.",
                             url=m.notebook_url(spec, self.cs))

    def delete_notebook(self, spec: NotebookSpec) -> NotebookState:
        kube, name = self._notebook_client(spec), m.notebook_name(spec)
        ns = m.notebook_namespace(spec)
        names = {"Secret": f"{name}-token"}
        remaining = []
        for api_version, kind in NOTEBOOK_KINDS:
            answer = kube.delete(api_version, kind, names.get(kind, name), ns)
            if answer is not None and (answer.get("metadata") or {}).get("finalizers"):
                remaining.append(kind)
        if remaining:
            return NotebookState("deleting", "", f"Waiting for the cluster to remove "
                                 f"{', '.join(remaining)}.")
        return NotebookState("gone", "", "Removed.")

    def reconcile_notebooks(self, specs: list[NotebookSpec]) -> dict[str, NotebookState]:
        """Notebooks on this cluster: one list per kind; those inside virtual or dedicated
        clusters are re-applied one by one (each is its own API server)."""
        local = [s for s in specs if s.instance.kind == "namespace"]
        present = set()
        if local:
            selector = f"{m.selector(self.cs)},{m.NOTEBOOK_LABEL}"
            # Never Secrets: the portal may not list them across namespaces. A notebook's
            # token Secret is restored with its Deployment.
            present = {_ref(obj) for api_version, kind in NOTEBOOK_KINDS if kind != "Secret"
                       for obj in self.kube.list(api_version, kind, label_selector=selector)}
        states = {}
        for spec in specs:
            if spec.instance.kind != "namespace":
                states[spec.key] = self.ensure_notebook(spec)
                continue
            objects = m.notebook_objects(spec, self.cs)
            deployment_missing = _ref(objects[1]) not in present
            for obj in objects:
                missing = deployment_missing if obj["kind"] == "Secret" else (
                    _ref(obj) not in present)
                if missing:
                    self.kube.apply(obj)
            states[spec.key] = self._running(spec)
        return states

    def stop_orphan_notebooks(self, live_keys: Callable[[], set[str]]) -> int:
        # A notebook's objects live in its instance's namespace (or cluster), so deleting the
        # instance removes them, and deleting a notebook deletes them by name: the cluster
        # keeps nothing running that the portal no longer owns.
        return 0

    def release_instance(self, key: str) -> None:
        # GPUs are held by running pods, not by a namespace or its quota; a failed instance
        # keeps its objects (and data) for a retry, and deletion removes them.
        return None
