"""The production backend: instances as namespaces, virtual clusters or Cluster API clusters."""

import datetime
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

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
    ServiceSpec,
    Workload,
)
from . import manifests as m
from . import policies, prometheus
from .client import ClientSettings, KubeClient, RateLimiter, api_client
from .credentials import NEEDS, bearer_token, expiry_in_words, token_claims
from .status import (
    condition,
    endpoints_ready,
    explain_events,
    explain_pod,
    explain_replica_failure,
    secret_value,
    workload_available,
)

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
Target = tuple[str, str, str, str | None]  # apiVersion, kind, name, namespace
LISTED_KINDS = [
    ("v1", "Namespace"), ("v1", "ResourceQuota"), ("v1", "LimitRange"),
    ("networking.k8s.io/v1", "NetworkPolicy"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ServiceAccount"),
    (m.FLUX_SOURCE, "HelmRepository"), (m.FLUX_HELM, "HelmRelease"), (m.CAPI, "Cluster"),
]
CAPI_CLUSTER = (m.CAPI, "Cluster")
# What Test connection looks for, per profile kind that needs it.
COMPONENTS = [
    ("vcluster", "Flux", [(m.FLUX_HELM, "HelmRelease"), (m.FLUX_SOURCE, "HelmRepository")]),
    ("dedicated", "Cluster API", [(m.CAPI, "Cluster"), (m.CAPI, "MachineDeployment")]),
    ("dedicated", "its Helm add-on provider (CAAPH)", [(m.CAAPH, "HelmChartProxy")]),
]
# Asks Flux's helm-controller to forget a release's failures and try again.
RESET_ANNOTATION = "reconcile.fluxcd.io/resetAt"
# Flux's reasons for a chart that did not install or upgrade.
CHART_FAILED = {"InstallFailed": "install", "UpgradeFailed": "upgrade",
                "ArtifactFailed": "fetch", "InitFailed": "start installing"}

_clients: dict[int, tuple[Any, KubeClient]] = {}
_clients_lock = threading.Lock()
# How long a user's proxy token lives (the API server's minimum); the proxy reuses it while
# enough of that is left (access.services.ACCESS_TOKEN_MARGIN_S).
ACCESS_TOKEN_S = 600


def client_for(cluster: Cluster) -> KubeClient:
    """One client per cluster and process, rebuilt when the cluster is edited; the rate limit
    is per cluster, shared by all the process's threads."""
    with _clients_lock:
        cached = _clients.get(cluster.pk)
        if cached and cached[0] == cluster.updated_at:
            return cached[1]
        try:
            kubeconfig = None if cluster.in_cluster else yaml.safe_load(cluster.kubeconfig)
            api = api_client(kubeconfig, in_cluster=cluster.in_cluster,
                             allow_exec=settings.KUBECONFIG_EXEC_ALLOWED)
        except Exception as exc:  # a broken kubeconfig is the admin's to fix, in words
            raise BackendError(
                f"The portal cannot use the credentials of {cluster}: {exc}", detail=repr(exc)
            ) from exc
        client = KubeClient(
            api,
            ClientSettings(
                cluster=str(cluster), name=cluster.name, qps=settings.KUBE_QPS,
                burst=settings.KUBE_BURST,
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
        vcluster_chart_version=settings.VCLUSTER_CHART_VERSION,
        vcluster_repository=settings.VCLUSTER_CHART_REPOSITORY,
        vcluster_via_ingress=settings.VCLUSTER_API_VIA_INGRESS,
        portal_namespace=settings.PORTAL_NAMESPACE,
        flux_namespace=settings.FLUX_NAMESPACE,
        gpu_operator_version=settings.GPU_OPERATOR_CHART_VERSION,
        ingress_nginx_version=settings.INGRESS_NGINX_CHART_VERSION,
        ingress_domain=cluster.ingress_domain,
        ingress_class=cluster.ingress_class,
        ingress_https=cluster.ingress_https,
        ingress_from_selectors=tuple(cluster.ingress_from_selector_list),
        ingress_from_cidrs=tuple(cluster.ingress_from_cidr_list),
        gpu_model_label=cluster.gpu_model_label,
    )


# In the order notebook_objects gives them; deleted in this order too.
NOTEBOOK_KINDS = [("v1", "Secret"), ("v1", "PersistentVolumeClaim"), ("v1", "Service"),
                  ("networking.k8s.io/v1", "Ingress"), ("apps/v1", "Deployment")]
ENDPOINT_SLICE = ("discovery.k8s.io/v1", "EndpointSlice")
# GPU feature discovery's labels for shared GPUs.
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
MIG_PREFIX = "nvidia.com/mig-"


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
        if self.account:  # the vclusters' NetworkPolicy lets in the namespace it runs in
            self.cs = replace(self.cs, portal_namespace=self.account[0])

    # -- what the cluster offers

    def inventory(self) -> GpuInventory:
        """Schedulable units of the GPU resource by model, and the truth about them: with
        time-slicing one GPU is advertised as several replicas, and MIG slices are either
        resources of their own (`nvidia.com/mig-*`, mixed strategy) or stand in for whole
        GPUs (single strategy)."""
        gpus: Counter[str] = Counter()
        shared: Counter[tuple[str, int]] = Counter()  # (model, replicas) -> physical GPUs
        mig_single: Counter[str] = Counter()
        mig: Counter[str] = Counter()
        for node in self.kube.list("v1", "Node"):
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            labels = node["metadata"].get("labels") or {}
            model = labels.get(self.cluster.gpu_model_label, "unknown model")
            count = int(allocatable.get(self.cs.gpu_resource_name, 0) or 0)
            if count:
                gpus[model] += count
                replicas = int(labels.get(REPLICAS_LABEL) or 1)
                if replicas > 1:
                    shared[(model, replicas)] += count // replicas
                if labels.get(MIG_STRATEGY_LABEL) == "single":
                    mig_single[model] += count
            for resource, value in allocatable.items():
                if resource.startswith(MIG_PREFIX) and int(value or 0):
                    mig[f"{resource} on {model}"] += int(value)
        sharing = tuple(
            [f"{model} is time-sliced: {n} GPU{'s' if n != 1 else ''} shared {r} ways"
             for (model, r), n in sorted(shared.items())]
            + [f"{model} units are MIG slices, not whole GPUs" for model in sorted(mig_single)]
            + [f"MIG slices: {n} × {name}" for name, n in sorted(mig.items())]
        )
        model = gpus.most_common(1)[0][0] if gpus else ""
        devices = tuple(name for name, count in sorted(gpus.items()) for _ in range(count))
        return GpuInventory(total=sum(gpus.values()), model=model, simulated=False,
                            devices=devices, sharing=sharing)

    def check_connection(self) -> str:
        try:
            version = self.kube.version().get("gitVersion", "unknown version")
            missing = self.missing_permissions()
            policy = self.policy_report()
        except BackendError as exc:
            return f"{exc.message} ({exc.detail[:300]})"
        except ApiException as exc:
            return f"The cluster answered HTTP {exc.status}: {exc.reason}"
        notes = ""
        try:
            inventory = self.inventory()
            gpus = Counter(inventory.devices)
            offered = ", ".join(f"{n} × {model}" for model, n in sorted(gpus.items())) or "none"
            notes = "".join(f" {note}." for note in inventory.sharing)
        except BackendError as exc:  # say what is missing rather than only this refusal
            offered = f"unknown ({exc.message})"
        lacking = "; ".join(f"{kind} profiles lack {', '.join(needs)}"
                            for kind, needs in missing.items())
        return (f"Connected: Kubernetes {version}; allocatable GPUs: {offered}.{notes} "
                f"{expiry_in_words(self.claims).capitalize()}; permissions: "
                f"{lacking or 'all that every profile kind needs'}.{policy}"
                f"{self._components()}")

    def _components(self) -> str:
        """Which of the controllers vcluster and dedicated profiles need are installed, as far
        as their CRDs tell (discovery: served or not)."""
        words = []
        for kind, name, kinds in COMPONENTS:
            try:
                absent = [f"{k} {v.rsplit('/', 1)[-1]}" for v, k in kinds
                          if not self.kube.served(v, k)]
            except BackendError as exc:
                words.append(f" Could not tell whether {name} is installed: {exc.message}")
                continue
            served = ", ".join(f"{k} {v.rsplit('/', 1)[-1]}" for v, k in kinds)
            if absent:
                words.append(f" {name} is not installed (no {', '.join(absent)}): {kind} "
                             "profiles cannot run here.")
            else:
                words.append(f" {name}: {served} served.")
        return "".join(words)

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

    def policy_report(self) -> str:
        """Whether the administrator's admission policies are on the cluster and their
        parameter says what the portal's settings say; the portal reads them, never writes."""
        if not self.cs.ingress_domain:
            return " No ingress domain: notebooks cannot run here until one is set."
        missing, changed = [], []
        for wanted in policies.admission_policies():  # each policy, and its binding
            found = self.kube.get(policies.ADMISSION, wanted["kind"], wanted["metadata"]["name"])
            what = f"{wanted['metadata']['name']}" + (
                " (binding)" if wanted["kind"].endswith("Binding") else "")
            if found is None:
                missing.append(what)
            elif not _contains(found.get("spec"), wanted["spec"]):
                changed.append(what)
        if missing or changed:
            said = "; ".join(part for part in (
                f"missing: {', '.join(missing)}" if missing else "",
                f"not as shipped: {', '.join(changed)}" if changed else "") if part)
            return (f" Admission policies {said}; apply the YAML on this cluster's page "
                    "(docs/kubernetes.md, 'Admission policies').")
        found = self.kube.get("v1", "ConfigMap", policies.PARAMS_NAME, policies.PORTAL_ACCOUNT[0])
        wanted = policies.cluster_params(self.cs)["data"]
        if found is None:
            return (f" The policies' parameter {policies.PORTAL_ACCOUNT[0]}/"
                    f"{policies.PARAMS_NAME} is missing, so every Ingress and GPU pod in an "
                    "instance is refused; apply it from this cluster's page.")
        differ = [f"{key} is {(found.get('data') or {}).get(key, '')!r} on the cluster, "
                  f"{value!r} here" for key, value in wanted.items()
                  if (found.get("data") or {}).get(key, "") != value]
        if differ:
            return (f" The policies' parameter {policies.PARAMS_NAME} differs from the portal: "
                    f"{'; '.join(differ)}. Apply it again from this cluster's page.")
        return " Admission policies installed."

    def access_token(self, spec: InstanceSpec) -> tuple[str, float]:
        """A short-lived token of the instance's access account (TokenRequest), with which the
        proxy forwards its users' requests: the API server scopes it to the namespace by the
        account's one RoleBinding, and it expires on its own. (token, seconds it lives, as
        the server granted them: no clock of the cluster's is compared with ours)."""
        ns = m.object_name(spec)
        answer = self.kube.create_token(ns, m.ACCESS_ACCOUNT, ACCESS_TOKEN_S)
        if answer is None:  # an instance made before access accounts: add it now, once
            self._apply_all([m.access_account(spec, self.cs), m.owner_role_binding(spec, self.cs)])
            answer = self.kube.create_token(ns, m.ACCESS_ACCOUNT, ACCESS_TOKEN_S)
        status = (answer or {}).get("status") or {}
        if not status.get("token"):
            raise BackendError(f"{self.cluster} gave no token for {ns}/{m.ACCESS_ACCOUNT}.")
        granted = ((answer or {}).get("spec") or {}).get("expirationSeconds")
        return status["token"], float(granted or ACCESS_TOKEN_S)

    # -- instances

    def ensure_instance(self, spec: InstanceSpec) -> InstanceState:
        if spec.kind == "dedicated":
            return self._ensure_dedicated(spec)
        applied = self._apply_all(self._instance_objects(spec))
        return self._namespaced_state(spec, applied[-1])

    def instance_state(self, spec: InstanceSpec) -> InstanceState:
        """How far an applied instance got, read without writing: one GET of the object whose
        status tells (the vcluster's HelmRelease, the Cluster API Cluster), plus what explains
        a wait. Only when that object is missing (deleted meanwhile) is the instance applied
        again; drift in its other objects is the reconcile pass's to restore."""
        if spec.kind == "dedicated":
            cluster = self.kube.get(*CAPI_CLUSTER, m.object_name(spec), self.cs.capi_namespace)
            return (self._dedicated_state(spec, cluster) if cluster is not None
                    else self.ensure_instance(spec))
        if spec.kind == "namespace":  # running once applied: nothing to wait for
            return self.ensure_instance(spec)
        last = self._instance_objects(spec)[-1]
        meta = last["metadata"]
        found = self.kube.get(last["apiVersion"], last["kind"], meta["name"],
                              meta.get("namespace"))
        return (self._namespaced_state(spec, found) if found is not None
                else self.ensure_instance(spec))

    def _namespaced_state(self, spec: InstanceSpec, last: Manifest) -> InstanceState:
        """A namespace or vcluster instance's state, from the last of its objects."""
        ns = m.object_name(spec)
        plural = "s" if spec.gpus != 1 else ""
        if spec.kind == "namespace":
            return InstanceState(
                "running", f"Ready: namespace {ns} with room for {spec.gpus} GPU{plural}.",
                detail=f"namespace {ns} on {self.cluster}",
            )
        return self._vcluster_state(spec, last)

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
                    if obj["metadata"]["name"] == m.PORTAL_BINDING and obj["kind"] == "RoleBinding":
                        # Its own binding is created, never applied: cluster-wide the portal
                        # may create RoleBindings but not patch them; inside, this grants it.
                        self.kube.create(obj)
                        applied.append(obj)
                    else:
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

    # -- virtual clusters: a Flux HelmRelease of the vcluster chart

    def _vcluster_state(self, spec: InstanceSpec, release: Manifest | None) -> InstanceState:
        """Running once Flux reports the release of the current spec Ready and the kubeconfig
        vcluster exported answers over verified TLS; failed when Flux gave up on the chart
        (its own words) or nothing was ready in time."""
        ns = m.object_name(spec)
        if release is None:
            return InstanceState("provisioning", "Waiting for the virtual cluster's release.")
        meta, status = release["metadata"], release.get("status") or {}
        ready = condition(release, "Ready")
        what = f"HelmRelease {ns}/{m.VCLUSTER_RELEASE}"
        failed = _release_failure(release)
        if failed:  # Flux stopped retrying: its remediation retries are spent
            # Condition times are whole seconds: a failure within the second after this
            # attempt began is this attempt's.
            stalled_at = _timestamp(condition(release, "Stalled").get("lastTransitionTime")) + 1
            if not spec.waiting_since or spec.waiting_since <= stalled_at:
                return failed
            # Someone asked to retry since: Flux resets its failure count and tries again
            # (asked once per attempt; the annotation says when).
            asked = (meta.get("annotations") or {}).get(RESET_ANNOTATION, "")
            if _timestamp(asked) <= stalled_at:
                now = datetime.datetime.now(datetime.UTC).isoformat()
                self.kube.annotate(m.FLUX_HELM, "HelmRelease", m.VCLUSTER_RELEASE, ns, {
                    "reconcile.fluxcd.io/requestedAt": now, RESET_ANNOTATION: now})
            return InstanceState(
                "provisioning", "Installing the virtual cluster: Flux was asked to try its "
                "chart again.", detail=failed.detail)
        current = status.get("observedGeneration", -1) >= meta.get("generation", 0)
        if ready.get("status") == "True" and current:
            return self._vcluster_credentials(spec, release)
        why = ready.get("message") if current and ready.get("message") else (
            "waiting for Flux's helm-controller to install the chart")
        detail = f"{what}: Ready={ready}" if ready else ""
        # The chart's pods say more than Flux while it waits for them: unschedulable, an
        # image that cannot be pulled (which no retry mends).
        explained = explain_events(self.kube.list("v1", "Event", namespace=ns))
        if explained:
            why, detail, final = explained
            if final:
                return InstanceState("failed", why, detail=detail)
            why = why[0].lower() + why[1:].rstrip(".")
        late = self._late(spec, release, settings.VCLUSTER_READY_TIMEOUT_S)
        if late:
            return InstanceState(
                "failed", f"The virtual cluster was not ready after {late}: {why}",
                detail=detail)
        return InstanceState("provisioning", f"Installing the virtual cluster: {why}",
                             detail=detail)

    def _vcluster_credentials(self, spec: InstanceSpec, release: Manifest) -> InstanceState:
        ns = m.object_name(spec)
        secret_name = m.vcluster_kubeconfig_secret_name()
        kubeconfig = secret_value(self.kube.get("v1", "Secret", secret_name, ns), "config")
        if not kubeconfig:
            return InstanceState(
                "provisioning", "Waiting for the virtual cluster's credentials.",
                detail=f"no key config in secret {ns}/{secret_name} yet")
        inner, server = self._inner_client(kubeconfig, what=f"the virtual cluster {ns}")
        try:
            version = inner.version().get("gitVersion", "unknown version")
        except BackendError as exc:
            problem = _tls_problem(exc.detail)
            why = (f"its API at {server} failed TLS verification ({problem})" if problem
                   else f"its API at {server} refused the credentials vcluster exported "
                   f"({exc.detail[:8]})" if exc.detail.startswith(("HTTP 401", "HTTP 403"))
                   else f"its API at {server} does not answer yet")
            late = self._late(spec, release, settings.VCLUSTER_READY_TIMEOUT_S)
            if late:
                return InstanceState("failed", f"The virtual cluster was not ready after "
                                     f"{late}: {why}.", detail=exc.detail)
            return InstanceState("provisioning", f"Waiting for the virtual cluster: {why}.",
                                 detail=exc.detail)
        return InstanceState(
            "running", f"Ready: virtual cluster in namespace {ns}.",
            detail=f"vcluster chart {self.cs.vcluster_chart_version} in {ns}, Kubernetes "
                   f"{version} at {server}",
            kubeconfig=kubeconfig,
        )

    def _inner_client(self, kubeconfig: str, *, what: str) -> tuple[KubeClient, str]:
        """A client for a virtual or dedicated cluster's own API, verified over TLS: a
        kubeconfig that is not HTTPS or turns verification off is refused, never used."""
        try:
            config = yaml.safe_load(kubeconfig)
            api = api_client(config, from_cluster=True)
        except ValueError as exc:  # check_kubeconfig: a cluster's kubeconfig is data only
            raise BackendError(f"The kubeconfig of {what} is refused: {exc}.",
                               detail=repr(exc)) from exc
        except Exception as exc:
            raise BackendError(f"The credentials of {what} cannot be used: {exc}",
                               detail=repr(exc)) from exc
        server = api.configuration.host
        if not server.startswith("https://") or not api.configuration.verify_ssl:
            raise BackendError(
                f"The kubeconfig of {what} does not verify its server over TLS ({server}); "
                "the portal never connects insecurely.",
                detail=f"server {server}, verify_ssl={api.configuration.verify_ssl}")
        settings_ = replace(self.kube.settings, cluster=what, retries=min(
            self.kube.settings.retries, 1))
        return KubeClient(api, settings_, self.kube.limiter), server

    def _late(self, spec: InstanceSpec, obj: Manifest, limit: float) -> str:
        """'15 minutes' when the object (or this provisioning attempt, if later) is older
        than `limit` seconds; '' otherwise."""
        created = _timestamp((obj.get("metadata") or {}).get("creationTimestamp"))
        since = max(created, spec.waiting_since)
        if not since or time.time() - since <= limit:
            return ""
        return _duration(limit)

    # -- dedicated clusters: Cluster API

    def _ensure_dedicated(self, spec: InstanceSpec) -> InstanceState:
        if not spec.cluster_class:
            raise BackendError("This size names no ClusterClass; ask your administrator.")
        if not spec.worker_class:
            raise BackendError("This size names no worker class of its ClusterClass; ask your "
                               "administrator.")
        try:
            for addon in m.capi_addons(self.cs):
                self.kube.apply(addon)
            cluster = self.kube.apply(m.capi_cluster(spec, self.cs))
        except BackendError as exc:
            raise self._explain_capi_refusal(exc) from exc
        return self._dedicated_state(spec, cluster)

    def _explain_capi_refusal(self, exc: BackendError) -> BackendError:
        """The portal's account holds rights in the Cluster API namespace only through the
        cluster-api role bound there, so a missing namespace answers 403, not 404: a list of
        namespaces by name (a cluster-wide right it has) says which of the two it is."""
        if not exc.message.startswith("The cluster refused the portal's credentials"):
            return exc
        ns = self.cs.capi_namespace
        try:
            exists = self.kube.list("v1", "Namespace", field_selector=f"metadata.name={ns}")
        except BackendError:
            return exc
        if not exists:
            return BackendError(f"The namespace {ns} is missing on {self.cluster}; an "
                                "administrator must create it.", detail=exc.detail)
        return BackendError(
            f"The portal may not manage Cluster API clusters in {ns} on {self.cluster}; an "
            f"administrator must bind it to {m.PORTAL_CLUSTER_API_ROLE} there.", detail=exc.detail)

    def _dedicated_state(self, spec: InstanceSpec, cluster: Manifest) -> InstanceState:
        """Running only when the control plane is available, every GPU worker machine is
        ready and a node of the workload cluster reports allocatable GPUs. Until then the
        controllers' own words say what is happening; past DEDICATED_READY_TIMEOUT_S they
        say why it failed."""
        name, ns = m.object_name(spec), self.cs.capi_namespace
        status = cluster.get("status") or {}
        failure = ((status.get("deprecated") or {}).get("v1beta1") or {}).get("failureMessage")
        if failure:
            return InstanceState("failed", f"The dedicated cluster could not be created: "
                                 f"{failure}", detail=f"Cluster {ns}/{name}: {failure}")
        late = self._late(spec, cluster, settings.DEDICATED_READY_TIMEOUT_S)
        control_plane = condition(cluster, "ControlPlaneAvailable")
        if control_plane.get("status") != "True":
            why = control_plane.get("message") or f"phase {status.get('phase', 'Pending')}"
            if late:
                return InstanceState(
                    "failed", f"The dedicated cluster's control plane was not ready after "
                    f"{late}: {why}", detail=f"Cluster {ns}/{name}: {control_plane}")
            return InstanceState("provisioning",
                                 f"Creating the dedicated cluster's control plane ({why}).")
        pools = self.kube.list(m.CAPI, "MachineDeployment", namespace=ns,
                               label_selector=f"{m.CLUSTER_NAME_LABEL}={name}")
        waiting = [pool for pool in pools if not _pool_ready(pool)]
        if not pools or waiting:
            why = (_pool_message(waiting[0]) if waiting else
                   condition(cluster, "WorkersAvailable").get("message")
                   or "Cluster API has not created them yet")
            if late:
                return InstanceState("failed", f"Machines not provisioned after {late}: {why}",
                                     detail=f"MachineDeployments of {ns}/{name}: {why}")
            return InstanceState("provisioning", f"Waiting for the GPU workers ({why}).")
        kubeconfig = self.workload_kubeconfig(spec)
        if not kubeconfig:
            return InstanceState("provisioning",
                                 "Waiting for the dedicated cluster's credentials.")
        inner, _ = self._inner_client(kubeconfig, what=f"the dedicated cluster {name}")
        try:
            nodes = inner.list("v1", "Node")
        except BackendError as exc:
            return InstanceState("provisioning", "Waiting for the dedicated cluster's API to "
                                 "answer.", detail=exc.detail)
        gpus = {node["metadata"]["name"]: int(
            ((node.get("status") or {}).get("allocatable") or {}).get(
                self.cs.gpu_resource_name, 0) or 0) for node in nodes}
        total = sum(gpus.values())
        if not total:
            why = self._addon_problem(name) or (
                f"no node reports allocatable {self.cs.gpu_resource_name} yet")
            if late:
                return InstanceState("failed", f"No GPU nodes after {late}: {why}",
                                     detail=f"nodes of {name}: {gpus}")
            return InstanceState("provisioning",
                                 f"Workers joined; waiting for GPU nodes ({why}).")
        with_gpus = sum(1 for n in gpus.values() if n)
        return InstanceState(
            "running", f"Ready: dedicated cluster {name} with {total} GPU"
            f"{'s' if total != 1 else ''} on {with_gpus} node{'s' if with_gpus != 1 else ''}.",
            detail=f"Cluster API cluster {ns}/{name}; notebooks under "
                   f"{m.dedicated_domain(spec, self.cs)}",
        )

    def _addon_problem(self, name: str) -> str:
        """What an add-on's HelmReleaseProxy says, when it is not ready (CAAPH's words)."""
        proxies = self.kube.list(m.CAAPH, "HelmReleaseProxy", namespace=self.cs.capi_namespace,
                                 label_selector=f"{m.CLUSTER_NAME_LABEL}={name}")
        for proxy in proxies:
            ready = condition(proxy, "Ready")
            if ready.get("status") == "False" and ready.get("message"):
                chart = (proxy.get("spec") or {}).get("chartName", proxy["metadata"]["name"])
                return f"add-on {chart}: {ready['message']}"
        return ""

    def workload_kubeconfig(self, spec: InstanceSpec) -> str:
        """The dedicated cluster's admin kubeconfig, read now from the secret Cluster API
        keeps (and rotates): the portal never keeps a copy that could go stale."""
        secret = self.kube.get("v1", "Secret", m.capi_kubeconfig_secret_name(spec),
                               self.cs.capi_namespace)
        return secret_value(secret, "value")

    def _targets(self, key: str, spec: InstanceSpec | None) -> list[Target]:
        if spec is not None:
            if spec.kind == "dedicated":
                return [(m.CAPI, "Cluster", m.object_name(spec), self.cs.capi_namespace)]
            if spec.kind == "vcluster":  # Flux uninstalls the chart first, then the namespace
                return [(m.FLUX_HELM, "HelmRelease", m.VCLUSTER_RELEASE, m.object_name(spec)),
                        ("v1", "Namespace", m.object_name(spec), None)]
            return [("v1", "Namespace", m.object_name(spec), None)]
        return [(o["apiVersion"], o["kind"], o["metadata"]["name"],
                 o["metadata"].get("namespace")) for o in self._roots_of(key)]

    def _roots(self, selector: str) -> list[Manifest]:
        """The objects whose deletion removes an instance: Namespaces and Cluster API Clusters."""
        return (self.kube.list("v1", "Namespace", label_selector=selector)
                + self.kube.list(m.CAPI, "Cluster", label_selector=selector))

    def _roots_of(self, key: str) -> list[Manifest]:
        """One instance's roots, found by its label (what a key without a spec has)."""
        return self._roots(f"{m.selector(self.cs)},{m.INSTANCE_LABEL}={key}")

    def delete_instance(self, key: str, spec: InstanceSpec | None = None) -> InstanceState:
        """Ask for each of the instance's roots to go, in order, and say what is still there.
        A root's deletion waits for the one before it to be gone: the vcluster's release is
        uninstalled by Flux before its namespace goes."""
        for target in self._targets(key, spec):
            _, kind, name, _ = target
            try:
                answer = self.kube.delete(*target)
            except BackendError as exc:
                # Once its namespace is being deleted, the portal's own RoleBinding there is
                # gone first: the release goes with the namespace (Flux's finalizer still
                # uninstalls it), so on to the namespace.
                if kind == "HelmRelease" and exc.detail.startswith("HTTP 403"):
                    continue
                raise
            if answer is None:
                continue
            if kind == "HelmRelease":
                return InstanceState("deleting",
                                     "Waiting for Flux to uninstall the virtual cluster.")
            if kind == "Cluster":
                phase = (answer.get("status") or {}).get("phase") if answer else ""
                return InstanceState("deleting", f"Waiting for Cluster API to remove the "
                                     f"dedicated cluster {name}"
                                     + (f" (phase {phase})." if phase else "."))
            return InstanceState("deleting", f"Waiting for the cluster to remove {kind} {name}.")
        return InstanceState("gone", "Resources released.")

    def list_instance_keys(self) -> set[str]:
        return {o["metadata"]["labels"][m.INSTANCE_LABEL] for o in self._roots(m.selector(self.cs))
                if m.INSTANCE_LABEL in (o["metadata"].get("labels") or {})}

    def reconcile_instances(self, specs: list[InstanceSpec]) -> dict[str, InstanceState]:
        """One list per kind, whatever the number of instances; then recreate what drifted
        away and report instances whose namespace or cluster vanished."""
        selector = m.selector(self.cs)
        present = {
            _ref(obj): obj for api_version, kind in LISTED_KINDS
            for obj in self.kube.list(api_version, kind, label_selector=selector)
        }
        states: dict[str, InstanceState] = {}
        for spec in specs:
            if spec.kind == "dedicated":
                ref = ("Cluster", self.cs.capi_namespace, m.object_name(spec))
                states[spec.key] = _dedicated_health(ref[2], present.get(ref))
                continue
            desired = self._instance_objects(spec)
            if _ref(desired[0]) not in present:
                states[spec.key] = InstanceState(
                    "gone", "Its namespace was deleted outside the portal.")
                continue
            if spec.kind == "vcluster":
                release = present.get(("HelmRelease", m.object_name(spec), m.VCLUSTER_RELEASE))
                failed = _release_failure(release)
                if failed:
                    states[spec.key] = failed
                    continue
            restored = [obj for obj in desired if _ref(obj) not in present
                        or _binds_otherwise(obj, present[_ref(obj)])]
            self._apply_all(restored)
            states[spec.key] = InstanceState(
                "running", f"Ready: namespace {m.object_name(spec)}.",
                detail="restored " + ", ".join(f"{o['kind']} {o['metadata']['name']}"
                                               for o in restored) if restored else "",
            )
        return states

    # -- notebooks

    def _notebook_client(self, spec: Workload) -> KubeClient:
        """Notebooks of a namespace instance live on this cluster; those of a virtual or
        dedicated cluster live inside it, reached with its own kubeconfig over verified TLS:
        the one vcluster exported (kept since it turned running), or the dedicated cluster's
        read now from Cluster API's secret."""
        instance = spec.instance
        if instance.kind == "namespace":
            return self.kube
        if instance.kind == "dedicated":
            kubeconfig = self.workload_kubeconfig(instance)
            what = f"the dedicated cluster {m.object_name(instance)}"
        else:
            kubeconfig = spec.instance_kubeconfig
            what = f"the virtual cluster {m.object_name(instance)}"
        if not kubeconfig:
            raise BackendError("The instance's cluster has no credentials yet.")
        client, _ = self._inner_client(kubeconfig, what=what)
        return replace_settings(client, self.kube.settings)

    def _require_domain(self) -> None:
        if not self.cs.ingress_domain:
            raise BackendError(
                f"{self.cluster} has no ingress domain, so a notebook there would have no "
                "address; an administrator must set one.")

    def _ensure_notebook_namespace(self, kube: KubeClient, spec: Workload) -> None:
        if spec.instance.kind != "namespace":
            kube.apply({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": m.NOTEBOOK_NAMESPACE,
                                     "labels": m.labels(spec.instance, self.cs)}})

    def ensure_notebook(self, spec: Workload) -> NotebookState:
        if isinstance(spec, ServiceSpec):
            return self._ensure_service(spec)
        # Checked before anything is written: nothing may be left holding a GPU for a
        # notebook that can never be reached.
        self._require_domain()
        kube = self._notebook_client(spec)
        self._ensure_notebook_namespace(kube, spec)
        for obj in m.notebook_objects(spec, self.cs):
            kube.apply(obj)
        return NotebookState("deploying", "created", "Created; waiting for the cluster to "
                             "schedule it.")

    def notebook_state(self, spec: Workload) -> NotebookState:
        """Ready means what the user needs: the Deployment is Available and its Service has
        a ready endpoint. (An Ingress load-balancer status is not waited for: bare-metal
        controllers never set one.) Otherwise its pod says why not."""
        if isinstance(spec, ServiceSpec):
            return _service_state(spec, self.kube.get(
                m.FLUX_HELM, "HelmRelease", m.service_object_name(spec),
                m.service_release_namespace(spec, self.cs)))
        kube, name = self._notebook_client(spec), m.notebook_name(spec)
        ns = m.notebook_namespace(spec)
        deployment = kube.get("apps/v1", "Deployment", name, ns)
        if deployment is None:
            return NotebookState("gone", "", "The notebook's objects are missing.")
        # Endpoints matter only once the Deployment is available: not listed before.
        if workload_available(deployment) and endpoints_ready(kube.list(
                *ENDPOINT_SLICE, namespace=ns,
                label_selector=f"kubernetes.io/service-name={name}")):
            return self._running(spec)
        refused = explain_replica_failure(deployment)
        if refused:
            text, detail, final = refused
            return NotebookState("failed" if final else "deploying", "starting", text,
                                 detail=detail)
        pods = kube.list("v1", "Pod", namespace=ns,
                         label_selector=f"{m.NOTEBOOK_LABEL}={spec.key}")
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
        for pod in pods[:1]:
            explained = explain_pod(pod, model=spec.instance.gpu_model)
            if explained:
                text, detail, final = explained
                return NotebookState("failed" if final else "deploying", "starting", text,
                                     detail=detail)
            meta = pod["metadata"]
            # Exactly this pod's events: never those of a notebook whose name starts alike.
            fields = f"involvedObject.kind=Pod,involvedObject.name={meta['name']}"
            if meta.get("uid"):
                fields += f",involvedObject.uid={meta['uid']}"
            events = kube.list("v1", "Event", namespace=ns, field_selector=fields)
            scheduled = condition(pod, "PodScheduled")
            explained = explain_events(events, scheduled_at=scheduled.get(
                "lastTransitionTime", "") if scheduled.get("status") == "True" else "")
            if explained:
                text, detail, final = explained
                return NotebookState("failed" if final else "deploying", "starting", text,
                                     detail=detail)
            reasons = {e.get("reason") for e in events}
            if "Pulling" in reasons and "Pulled" not in reasons:
                return NotebookState("deploying", "pulling", f"Pulling the image {spec.image}.")
        if workload_available(deployment):
            return NotebookState("deploying", "starting",
                                 f"Waiting for the Service {name} to have a ready endpoint.")
        return NotebookState("deploying", "starting", "Starting JupyterLab.")

    def _running(self, spec: NotebookSpec) -> NotebookState:
        return NotebookState("running", "reachable", "Running.",
                             url=m.notebook_url(spec, self.cs))

    def delete_notebook(self, spec: Workload) -> NotebookState:
        if isinstance(spec, ServiceSpec):
            return self._delete_service(spec)
        kube, name = self._notebook_client(spec), m.notebook_name(spec)
        ns = m.notebook_namespace(spec)
        names = {"Secret": f"{name}-token", "PersistentVolumeClaim": f"{name}-home"}
        remaining = []
        for api_version, kind in reversed(NOTEBOOK_KINDS):  # the GPU first
            answer = kube.delete(api_version, kind, names.get(kind, name), ns)
            if answer is not None and (answer.get("metadata") or {}).get("finalizers"):
                remaining.append(kind)
        if remaining:
            return NotebookState("deleting", "", f"Waiting for the cluster to remove "
                                 f"{', '.join(remaining)}.")
        return NotebookState("gone", "", "Removed.")

    def release_notebook(self, spec: Workload) -> None:
        """Scale the failed notebook's Deployment to zero: its GPU is free at once, and its
        objects and home volume stay for the user to look at or delete. A service's release
        is uninstalled (Flux removes what its chart made); its volume and repository stay,
        and Start or Retry installs it again."""
        if isinstance(spec, ServiceSpec):
            self.kube.delete(m.FLUX_HELM, "HelmRelease", m.service_object_name(spec),
                             m.service_release_namespace(spec, self.cs))
            return
        self._notebook_client(spec).scale_to_zero(
            "apps/v1", "Deployment", m.notebook_name(spec), m.notebook_namespace(spec))

    def reconcile_notebooks(self, specs: list[Workload]) -> dict[str, NotebookState]:
        """A constant number of lists per API server (this cluster for namespace instances,
        each virtual or dedicated cluster for its own), and writes only for what drifted.
        Services are one list of HelmReleases, all on this cluster."""
        states: dict[str, NotebookState] = {}
        services = [spec for spec in specs if isinstance(spec, ServiceSpec)]
        try:
            states.update(self._reconcile_services(services) if services else {})
        except BackendError as exc:
            log.warning("service reconcile on %s failed: %s", self.cluster, exc.detail)
        groups: dict[str, list[NotebookSpec]] = {}
        for spec in specs:
            if isinstance(spec, ServiceSpec):
                continue
            target = "" if spec.instance.kind == "namespace" else spec.instance.key
            groups.setdefault(target, []).append(spec)
        for target, group in groups.items():
            try:
                states.update(self._reconcile_notebooks_on(
                    self._notebook_client(group[0]), group,
                    namespace=m.NOTEBOOK_NAMESPACE if target else None))
            except BackendError as exc:  # one unreachable instance cluster spoils no other
                log.warning("notebook reconcile on %s failed: %s", target or self.cluster,
                            exc.detail)
        return states

    def _reconcile_notebooks_on(self, kube: KubeClient, specs: list[NotebookSpec], *,
                                namespace: str | None) -> dict[str, NotebookState]:
        selector = m.selector(self.cs)
        # Never Secrets: the portal may not list them across namespaces. A notebook's token
        # Secret is restored with its Deployment.
        present = {
            _ref(obj): obj for api_version, kind in [*NOTEBOOK_KINDS, ENDPOINT_SLICE]
            if kind != "Secret"
            for obj in kube.list(api_version, kind, namespace=namespace,
                                 label_selector=selector)
        }
        slices: dict[tuple[str | None, str], list[Manifest]] = {}
        for (kind, ns, _), obj in present.items():
            if kind == "EndpointSlice":
                service = (obj["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
                slices.setdefault((ns, service), []).append(obj)
        states = {}
        namespace_ready = False
        for spec in specs:
            restored = []
            objects = m.notebook_objects(spec, self.cs)
            deployment_missing = not any(
                o["kind"] == "Deployment" and _ref(o) in present for o in objects)
            for obj in objects:
                there = not deployment_missing if obj["kind"] == "Secret" else _ref(obj) in present
                if there:
                    continue
                if not namespace_ready:
                    self._ensure_notebook_namespace(kube, spec)
                    namespace_ready = True
                kube.apply(obj)
                restored.append(obj["kind"])
            name, ns = m.notebook_name(spec), m.notebook_namespace(spec)
            deployment = present.get(("Deployment", ns, name))
            if deployment is None:
                states[spec.key] = NotebookState("deploying", "created",
                                                 "Its server was recreated.")
            elif not workload_available(deployment):
                states[spec.key] = NotebookState("deploying", "starting",
                                                 "Its server has no ready replica.")
            elif "Service" not in restored and not endpoints_ready(slices.get((ns, name), [])):
                states[spec.key] = NotebookState("deploying", "starting",
                                                 "Its Service has no ready endpoint.")
            else:
                states[spec.key] = self._running(spec)
        return states


    def stop_orphan_notebooks(self, live_keys: Callable[[], set[str]]) -> int:
        """Scale to zero the notebook servers on this cluster that no notebook row owns (a
        row deleted by hand, a database restored from an older backup): their GPUs are free
        at once; their objects and home volume stay, for an administrator to look at. One
        list, by label, before the rows are read; notebooks inside virtual and dedicated
        clusters go with their instance."""
        found = self.kube.list("apps/v1", "Deployment",
                               label_selector=f"{m.selector(self.cs)},{m.NOTEBOOK_LABEL}")
        live = live_keys()
        stopped = 0
        for deployment in found:
            meta = deployment["metadata"]
            key = (meta.get("labels") or {}).get(m.NOTEBOOK_LABEL, "")
            if key in live or (deployment.get("spec") or {}).get("replicas") == 0:
                continue
            log.warning("notebook server %s/%s has no notebook (%s): scaled to zero",
                        meta.get("namespace"), meta["name"], key)
            self.kube.scale_to_zero("apps/v1", "Deployment", meta["name"], meta["namespace"])
            stopped += 1
        return stopped + self._stop_orphan_services(live_keys)

    # -- catalogue services: a Flux HelmRelease of the profile's chart

    def _ensure_service(self, spec: ServiceSpec) -> NotebookState:
        """Its volume (made by the portal, where its pods run), then its HelmRepository and
        HelmRelease on this cluster; Flux's helm-controller installs the chart."""
        if not self.kube.served(m.FLUX_HELM, "HelmRelease"):
            raise BackendError(
                f"{self.cluster} has no Flux (HelmRelease v2 is not served), which installs "
                "catalogue services; an administrator must install it.")
        try:
            objects = m.service_objects(spec, self.cs)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"Its profile's values template cannot be used: {exc}",
                               detail=repr(exc)) from exc
        claim = m.service_claim(spec, self.cs)
        if claim is not None:
            kube = self._notebook_client(spec)
            self._ensure_notebook_namespace(kube, spec)
            kube.apply(claim)
        if spec.instance.kind == "namespace":  # who Flux installs it as
            self.kube.apply(m.access_account(spec.instance, self.cs))
        for obj in objects:
            self.kube.apply(obj)
        return NotebookState("deploying", "created",
                             "Created; waiting for Flux to install its chart.")

    def _delete_service(self, spec: ServiceSpec) -> NotebookState:
        ns, name = m.service_release_namespace(spec, self.cs), m.service_object_name(spec)
        release = self.kube.delete(m.FLUX_HELM, "HelmRelease", name, ns)
        if release is not None and (release.get("metadata") or {}).get("finalizers"):
            return NotebookState("deleting", "", "Waiting for Flux to uninstall its chart.")
        self.kube.delete(m.FLUX_SOURCE, "HelmRepository", name, ns)
        if spec.storage_gib:
            self._notebook_client(spec).delete("v1", "PersistentVolumeClaim",
                                               m.service_claim_name(spec),
                                               m.service_namespace(spec))
        return NotebookState("gone", "", "Removed.")

    def _service_releases(self) -> list[Manifest]:
        return self.kube.list(m.FLUX_HELM, "HelmRelease",
                              label_selector=f"{m.selector(self.cs)},{m.SERVICE_LABEL}")

    def _reconcile_services(self, specs: list[ServiceSpec]) -> dict[str, NotebookState]:
        """One list of the portal's service releases, each found by the namespace and name
        its spec gives (never by a label, which a tenant could copy onto a release of their
        own). A missing release is reported for the service's own task to apply again (a
        service stopped meanwhile is not brought back); one whose account was taken off (a
        tenant may edit releases in their namespace) is applied again at once."""
        releases = {(r["metadata"].get("namespace"), r["metadata"]["name"]): r
                    for r in self._service_releases()}
        states = {}
        for spec in specs:
            release = releases.get((m.service_release_namespace(spec, self.cs),
                                    m.service_object_name(spec)))
            if release is None:
                states[spec.key] = NotebookState("deploying", "created",
                                                 "Its release was missing; applying it again.")
                continue
            if spec.instance.kind == "namespace" and (release.get("spec") or {}).get(
                    "serviceAccountName") != m.ACCESS_ACCOUNT:
                log.warning("service release %s lost its account: applied again", spec.key)
                try:
                    self._ensure_service(spec)
                except BackendError as exc:  # one broken service spoils no other
                    log.warning("service %s not applied again: %s", spec.key, exc.detail)
            states[spec.key] = _service_state(spec, release)
        return states

    def _stop_orphan_services(self, live_keys: Callable[[], set[str]]) -> int:
        """Uninstall service releases no service row owns; their volumes stay."""
        found = self._service_releases()
        live = live_keys()
        stopped = 0
        for release in found:
            meta = release["metadata"]
            key = (meta.get("labels") or {}).get(m.SERVICE_LABEL, "")
            if key in live or meta.get("deletionTimestamp"):
                continue
            log.warning("service release %s/%s has no service (%s): uninstalled",
                        meta.get("namespace"), meta["name"], key)
            self.kube.delete(m.FLUX_HELM, "HelmRelease", meta["name"], meta["namespace"])
            self.kube.delete(m.FLUX_SOURCE, "HelmRepository", meta["name"], meta["namespace"])
            stopped += 1
        return stopped

    def service_proxy_path(self, spec: ServiceSpec) -> str:
        """The API server's service proxy for the Service its chart made. A service's origin
        (access.origins) sends its users' requests there with the instance's own credential
        (the namespace's access account, or the inner cluster's), so no Ingress, DNS or
        network path to its pods is needed."""
        try:
            target = m.service_target(spec, self.cs)
        except ValueError as exc:
            raise BackendError(f"The service cannot be reached: {exc}.") from exc
        return f"/api/v1/namespaces/{m.service_namespace(spec)}/services/{target}/proxy"

    def gpu_utilisation(self, spec: InstanceSpec, gpu_indices: tuple[int, ...]) -> float | None:
        """The busiest of the instance's GPUs since the last look, from the DCGM exporter's
        series in the cluster's Prometheus; None without one (activity alone decides).
        A namespace's pods are labelled with it; a vcluster's pods run in its host
        namespace, so the same query serves both. A dedicated cluster's GPUs are not in
        this Prometheus."""
        if not self.cluster.prometheus_url or spec.kind == "dedicated":
            return None
        return prometheus.namespace_utilisation(
            self.cluster.prometheus_url, m.object_name(spec),
            window_s=max(int(settings.IDLE_CHECK_S), 60))

    def jupyter_api(self, spec: NotebookSpec, path: str) -> Any:
        """A notebook's Jupyter REST API, through the API server's service proxy over the
        portal's own connection: no Ingress, DNS or network path to the pod is needed.
        The API server drops the Authorization header it authenticated, so Jupyter's token
        goes as the `token` parameter (seen only by those who may read its Secret)."""
        kube = self._notebook_client(spec)
        where, _, query = path.partition("?")
        proxy = (f"/api/v1/namespaces/{m.notebook_namespace(spec)}/services/"
                 f"{m.notebook_name(spec)}:http/proxy{where}")
        try:
            return kube.request("GET", proxy, query={**dict(parse_qsl(query)),
                                                     "token": spec.token})
        except ApiException as exc:
            raise BackendError("The notebook did not answer through the cluster's API.",
                               detail=f"HTTP {exc.status}: {exc.reason}") from exc

    def stop_instance(self, spec: InstanceSpec) -> None:
        """A namespace instance holds GPUs through running pods only. Its quota drops to no
        GPU, the portal's notebooks scale to zero, and pods asking for GPUs are deleted:
        their controllers' new pods are refused by the quota until it starts again. Every
        object and volume stays."""
        if spec.kind != "namespace":
            raise BackendError(f"A {spec.kind} instance cannot be stopped; delete it to free "
                               "its GPUs.")
        self._apply_all([m.resource_quota(replace(spec, gpus=0), self.cs)])
        self._stop_pods(m.object_name(spec))

    def _stop_pods(self, ns: str) -> None:
        for workload in self.kube.list("apps/v1", "Deployment", namespace=ns,
                                       label_selector=m.NOTEBOOK_LABEL):
            self.kube.scale_to_zero("apps/v1", "Deployment", workload["metadata"]["name"], ns)
        resource = self.cs.gpu_resource_name
        for pod in self.kube.list("v1", "Pod", namespace=ns):
            spec_of = pod.get("spec") or {}
            containers = [*(spec_of.get("containers") or []),
                          *(spec_of.get("initContainers") or [])]
            if any(resource in ((c.get("resources") or {}).get("requests") or {}) or
                   resource in ((c.get("resources") or {}).get("limits") or {})
                   for c in containers):
                self.kube.delete("v1", "Pod", pod["metadata"]["name"], ns)

    def _root_of(self, key: str) -> Manifest | None:
        found = self._roots_of(key)
        return found[0] if found else None

    def instance_record(self, key: str) -> InstanceSpec | None:
        root = self._root_of(key)
        annotations = (root or {}).get("metadata", {}).get("annotations") or {}
        return InstanceSpec.from_record(annotations.get(m.RECORD_ANNOTATION, ""))

    def quarantine_instance(self, key: str) -> str:
        """Marked on its root; a namespace instance is stopped as Stop does (a record-less
        one from before records: its notebooks and GPU pods, its quota left as it is)."""
        root = self._root_of(key)
        if root is None:
            return "Nothing of it is left on the cluster."
        meta = root["metadata"]
        marked_at = datetime.datetime.now(datetime.UTC).isoformat()
        self.kube.annotate(root["apiVersion"], root["kind"], meta["name"],
                           meta.get("namespace") or "", {m.QUARANTINED_ANNOTATION: marked_at},
                           labels={m.QUARANTINED_LABEL: "true"})
        spec = self.instance_record(key)
        if root["kind"] != "Namespace" or (spec is not None and spec.kind != "namespace"):
            return (f"{root['kind']} {meta['name']} is marked and kept as it is: a virtual or "
                    "dedicated cluster holds its GPUs until it is deleted.")
        if spec is not None:
            self.stop_instance(spec)
        else:
            self._stop_pods(meta["name"])
        return (f"Namespace {meta['name']} is marked and stopped: its GPU pods are deleted and "
                "its notebooks scaled to zero; every object and volume is kept.")

    def release_quarantine(self, key: str) -> None:
        root = self._root_of(key)
        if root is not None:
            meta = root["metadata"]
            self.kube.annotate(root["apiVersion"], root["kind"], meta["name"],
                               meta.get("namespace") or "", {m.QUARANTINED_ANNOTATION: None},
                               labels={m.QUARANTINED_LABEL: None})

    def release_instance(self, key: str) -> None:
        # GPUs are held by running pods, not by a namespace or its quota; a failed instance
        # keeps its objects (and data) for a retry, and deletion removes them.
        return None


def _contains(found: Any, wanted: Any) -> bool:
    """Whether `found` says all `wanted` says (the server adds its defaults around it)."""
    if isinstance(wanted, dict):
        return isinstance(found, dict) and all(
            _contains(found.get(key), value) for key, value in wanted.items())
    if isinstance(wanted, list):
        return isinstance(found, list) and len(found) == len(wanted) and all(
            _contains(f, w) for f, w in zip(found, wanted, strict=True))
    return found == wanted


def _binds_otherwise(desired: Manifest, found: Manifest) -> bool:
    """A RoleBinding whose subjects are not the portal's: changed by hand, or written by an
    older portal (which bound users and groups it impersonated, before access accounts)."""
    return desired["kind"] == "RoleBinding" and found.get("subjects") != desired["subjects"]


def _dedicated_health(name: str, cluster: Manifest | None) -> InstanceState:
    """A running dedicated instance is only as good as its Cluster API Cluster (v1beta2: its
    summary condition is Available)."""
    if cluster is None:
        return InstanceState("gone", "Its cluster was deleted outside the portal.")
    available = condition(cluster, "Available")
    if available.get("status") == "False":
        why = available.get("message") or available.get("reason") or "no reason given"
        return InstanceState("failed", f"The dedicated cluster {name} is no longer ready: {why}",
                             detail=f"Cluster condition Available=False: {available}")
    return InstanceState("running", f"Ready: dedicated cluster {name}.")


def _service_state(spec: ServiceSpec, release: Manifest | None) -> NotebookState:
    """A service follows its HelmRelease, in Flux's words: running once Ready for the
    current spec (Flux waits for what the chart made to be ready), failed once Flux gave up
    (Stalled: its remediation retries are spent)."""
    if release is None:
        return NotebookState("gone", "", "Its release is missing.")
    meta, status = release["metadata"], release.get("status") or {}
    ready, stalled = condition(release, "Ready"), condition(release, "Stalled")
    what = f"HelmRelease {meta.get('namespace')}/{meta['name']}"
    detail = f"{what}: Ready={ready}" if ready else ""
    if stalled.get("status") == "True":
        why = ready.get("message") or stalled.get("message") or "no reason given"
        action = CHART_FAILED.get(ready.get("reason", ""), "install")
        return NotebookState("failed", "starting", f"Its chart failed to {action}: {why}",
                             detail=f"{detail}; Stalled={stalled}")
    current = status.get("observedGeneration", -1) >= meta.get("generation", 0)
    if ready.get("status") == "True" and current:
        return NotebookState("running", "reachable", "Running.", detail=detail)
    why = (ready.get("message") if current and ready.get("message")
           else "waiting for Flux's helm-controller to install the chart")
    return NotebookState("deploying", "starting", f"Installing its chart: {why}",
                         detail=detail)


def _release_failure(release: Manifest | None) -> InstanceState | None:
    """A running vcluster whose release Flux gave up on (a failed upgrade, say)."""
    if release is None or condition(release, "Stalled").get("status") != "True":
        return None
    ready, stalled = condition(release, "Ready"), condition(release, "Stalled")
    why = ready.get("message") or stalled.get("message") or "no reason given"
    action = CHART_FAILED.get(ready.get("reason", ""), "install")
    meta = release["metadata"]
    return InstanceState(
        "failed", f"The virtual cluster's chart failed to {action}: {why}",
        detail=f"HelmRelease {meta.get('namespace')}/{meta['name']}: Ready "
               f"{ready.get('reason')}, Stalled {stalled.get('reason')}: {why}")


def _pool_ready(pool: Manifest) -> bool:
    wanted = (pool.get("spec") or {}).get("replicas", 1)
    return (pool.get("status") or {}).get("readyReplicas", 0) >= max(wanted, 1)


def _pool_message(pool: Manifest) -> str:
    """Why a worker pool is not ready, in its controller's words."""
    for kind in ("MachinesReady", "Available", "ScalingUp"):
        found = condition(pool, kind)
        if found.get("message") and found.get("status") != ("True" if kind != "ScalingUp"
                                                            else "False"):
            return found["message"]
    status = pool.get("status") or {}
    wanted = (pool.get("spec") or {}).get("replicas", 1)
    return f"{status.get('readyReplicas', 0)} of {wanted} machines ready"


def _timestamp(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _duration(seconds: float) -> str:
    """'15 minutes', '1 minute', '30 seconds'."""
    if seconds >= 60:
        minutes = round(seconds / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    whole = max(int(seconds), 1)
    return f"{whole} second{'s' if whole != 1 else ''}"


def _tls_problem(detail: str) -> str:
    """The certificate problem in a failed request's detail, in the TLS library's words
    ('certificate verify failed: unable to get local issuer certificate'), or ''."""
    found = re.search(r"(certificate verify failed: [^('\"]+|Hostname mismatch[^'\"]*|"
                      r"IP address mismatch[^'\"]*)", detail)
    return found.group(1).strip().rstrip(".") if found else ""


def replace_settings(client: KubeClient, base: Any) -> KubeClient:
    """The inner client with the host's pacing and retries, keeping its own name."""
    client.settings = replace(base, cluster=client.settings.cluster)
    return client
