"""Stand-ins for the controllers a virtual or dedicated instance relies on, played through
the API with the test's admin credential, the same way on the emulator and the real server:

- **Flux** (source-controller and helm-controller): marks the portal's HelmReleases Ready
  (or failed, in Flux's own words) and, as vcluster would, writes ``vc-vcluster`` with the
  inner cluster's kubeconfig; on deletion it uninstalls (drops its finalizer).
- **Cluster API** (topology, machines, kubeconfig) and **CAAPH**: makes the worker pool of
  each Cluster (a v1beta2 MachineDeployment, owned by the Cluster), marks the control plane
  and the machines ready (or the machines stuck, with the controller's message), writes
  ``<name>-kubeconfig`` pointing at the inner cluster, and reports the add-on releases.

Objects carry the status fields the upstream CRDs require (v1beta2 / metav1 conditions with
reason, message and lastTransitionTime), so the real server's schema checks them too.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

Obj = dict[str, Any]
FLUX_FINALIZER = "finalizers.fluxcd.io"
CAPI_FINALIZER = "cluster.cluster.x-k8s.io"
HELM = ("helm.toolkit.fluxcd.io", "v2", "helmreleases")
CLUSTERS = ("cluster.x-k8s.io", "v1beta2", "clusters")
POOLS = ("cluster.x-k8s.io", "v1beta2", "machinedeployments")
ADDONS = ("addons.cluster.x-k8s.io", "v1alpha1", "helmreleaseproxies")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(kind: str, status: str, reason: str, message: str = "", **extra: Any) -> Obj:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now(), **extra}


class _Controller:
    def __init__(self, api: k8s.ApiClient, kubeconfig: str) -> None:
        self.objects = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.kubeconfig = kubeconfig

    def _status(self, ref: tuple[str, str, str], obj: Obj, status: Obj) -> None:
        meta = obj["metadata"]
        self.objects.patch_namespaced_custom_object_status(
            *ref[:2], meta["namespace"], ref[2], meta["name"], {"status": status})

    def _create_or_get(self, ref: tuple[str, str, str], obj: Obj) -> Obj:
        """Create `obj`, or read the one an earlier pass made."""
        meta = obj["metadata"]
        try:
            return self.objects.create_namespaced_custom_object(
                *ref[:2], meta["namespace"], ref[2], obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return self.objects.get_namespaced_custom_object(
                *ref[:2], meta["namespace"], ref[2], meta["name"])

    def _finalize(self, ref: tuple[str, str, str], obj: Obj, finalizer: str) -> bool:
        """Add our finalizer to a live object, or drop it from one being deleted (what the
        controller does once its clean-up is done). True when the object is being deleted."""
        meta = obj["metadata"]
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp"):
            if finalizer in finalizers:
                with contextlib.suppress(ApiException):  # 409: changed meanwhile, next pass
                    self.objects.patch_namespaced_custom_object(
                        *ref[:2], meta["namespace"], ref[2], meta["name"],
                        {"metadata": {"resourceVersion": meta["resourceVersion"],
                                      "finalizers": [f for f in finalizers if f != finalizer]}})
            return True
        if finalizer not in finalizers:
            self.objects.patch_namespaced_custom_object(
                *ref[:2], meta["namespace"], ref[2], meta["name"],
                {"metadata": {"finalizers": [*finalizers, finalizer]}})
        return False

    def _secret(self, namespace: str, name: str, key: str, labels: Obj | None = None,
                kind: str = "Opaque") -> None:
        body = {"metadata": {"name": name, "labels": labels or {}}, "type": kind,
                "data": {key: base64.b64encode(self.kubeconfig.encode()).decode()}}
        try:
            self.core.create_namespaced_secret(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise


class Flux(_Controller):
    """Flux's helm-controller for every HelmRelease of the portal (label selector)."""

    def __init__(self, api: k8s.ApiClient, kubeconfig: str, *, selector: str) -> None:
        super().__init__(api, kubeconfig)
        self.selector = selector
        self.fail = ""  # a message: the chart's install fails with it, retries spent

    def reconcile(self) -> int:
        """One pass; returns how many releases it saw."""
        releases = self.objects.list_cluster_custom_object(
            *HELM, label_selector=self.selector)["items"]
        for release in releases:
            if self._finalize(HELM, release, FLUX_FINALIZER):
                continue  # uninstalled
            meta = release["metadata"]
            chart = release["spec"]["chart"]["spec"]
            revision = f"{meta['namespace']}/{meta['name']}.v1"
            status = release.get("status") or {}
            reset = (meta.get("annotations") or {}).get("reconcile.fluxcd.io/resetAt")
            stalled = any(c["type"] == "Stalled" and c["status"] == "True"
                          for c in status.get("conditions") or [])
            if stalled and (not reset or reset == status.get("lastHandledResetAt")):
                continue  # Flux does not try a stalled release again unless asked
            if self.fail:
                status = {"observedGeneration": meta["generation"], "failures": 3,
                          "installFailures": 3, "lastHandledResetAt": reset, "conditions": [
                              cond("Ready", "False", "InstallFailed",
                                   f"Helm install failed for release {revision} with chart "
                                   f"{chart['chart']}@{chart['version']}: {self.fail}"),
                              cond("Stalled", "True", "RetriesExceeded",
                                   "Failed to install after 3 attempt(s)"),
                              cond("Released", "False", "InstallFailed", self.fail)]}
            else:
                status = {"observedGeneration": meta["generation"], "lastHandledResetAt": reset,
                          "conditions": [
                    cond("Ready", "True", "InstallSucceeded",
                         f"Helm install succeeded for release {revision} with chart "
                         f"{chart['chart']}@{chart['version']}"),
                    cond("Released", "True", "InstallSucceeded", "Helm install succeeded")]}
                # What vcluster itself does once its control plane is up (a catalogue
                # service's chart writes no such thing).
                if "gpupaas.io/service" not in (meta.get("labels") or {}):
                    self._secret(meta["namespace"],
                                 f"vc-{release['spec'].get('releaseName')}", "config")
            self._status(HELM, release, status)
        return len(releases)


class ClusterApi(_Controller):
    """Cluster API's controllers (topology, control plane, machines, kubeconfig secret) and
    CAAPH's, for every Cluster of the portal (label selector)."""

    def __init__(self, api: k8s.ApiClient, kubeconfig: str, *, selector: str) -> None:
        super().__init__(api, kubeconfig)
        self.selector = selector
        # A message: the machines never come, and the worker pool says this.
        self.machines_fail = ""
        self.addon_fail = ""  # a message: the GPU operator's release fails with it

    def reconcile(self) -> int:
        clusters = self.objects.list_cluster_custom_object(
            *CLUSTERS, label_selector=self.selector)["items"]
        for cluster in clusters:
            meta = cluster["metadata"]
            if meta.get("deletionTimestamp"):
                for pool in self._pools(meta):  # what the topology controller removes first
                    with contextlib.suppress(ApiException):
                        self.objects.delete_namespaced_custom_object(
                            *POOLS[:2], meta["namespace"], POOLS[2], pool["metadata"]["name"])
                if not self._pools(meta):
                    self._finalize(CLUSTERS, cluster, CAPI_FINALIZER)
                continue
            self._finalize(CLUSTERS, cluster, CAPI_FINALIZER)
            for topology in cluster["spec"]["topology"]["workers"]["machineDeployments"]:
                self._pool(cluster, topology)
            workers = not self.machines_fail
            self._status(CLUSTERS, cluster, {
                "phase": "Provisioned", "observedGeneration": meta["generation"],
                "initialization": {"infrastructureProvisioned": True,
                                   "controlPlaneInitialized": True},
                "conditions": [
                    cond("ControlPlaneAvailable", "True", "Available"),
                    cond("WorkersAvailable", "True" if workers else "False",
                         "Available" if workers else "NotAvailable",
                         "" if workers else f"* MachineDeployment {meta['name']}-gpu-workers: "
                         f"{self.machines_fail}"),
                    cond("Available", "True" if workers else "False",
                         "Available" if workers else "NotAvailable")]})
            self._secret(meta["namespace"], f"{meta['name']}-kubeconfig", "value",
                         {"cluster.x-k8s.io/cluster-name": meta["name"]},
                         kind="cluster.x-k8s.io/secret")
            if self.addon_fail:
                self._addon(cluster)
        return len(clusters)

    def _pools(self, meta: Obj) -> list[Obj]:
        return self.objects.list_namespaced_custom_object(
            *POOLS[:2], meta["namespace"], POOLS[2],
            label_selector=f"cluster.x-k8s.io/cluster-name={meta['name']}")["items"]

    def _pool(self, cluster: Obj, topology: Obj) -> None:
        meta = cluster["metadata"]
        name = f"{meta['name']}-{topology['name']}"
        labels = {"cluster.x-k8s.io/cluster-name": meta["name"],
                  "topology.cluster.x-k8s.io/owned": "",
                  "topology.cluster.x-k8s.io/deployment-name": topology["name"]}
        pool = {
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                         "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2",
                                              "kind": "Cluster", "name": meta["name"],
                                              "uid": meta["uid"]}]},
            "spec": {
                "clusterName": meta["name"], "replicas": topology["replicas"],
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {
                    "clusterName": meta["name"], "version": cluster["spec"]["topology"]["version"],
                    "bootstrap": {"dataSecretName": f"{name}-bootstrap"},
                    "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io",
                                          "kind": "DockerMachineTemplate", "name": name}}},
            },
        }
        made = self._create_or_get(POOLS, pool)
        wanted = topology["replicas"]
        if self.machines_fail:
            status = {"replicas": wanted, "readyReplicas": 0, "availableReplicas": 0,
                      "conditions": [
                          cond("Available", "False", "NotAvailable",
                               f"0 available replicas, at least {wanted} required"),
                          cond("MachinesReady", "False", "NotReady",
                               f"* Machine {name}-x7k2p: {self.machines_fail}")]}
        else:
            status = {"replicas": wanted, "readyReplicas": wanted, "availableReplicas": wanted,
                      "upToDateReplicas": wanted, "phase": "Running",
                      "conditions": [cond("Available", "True", "Available"),
                                     cond("MachinesReady", "True", "Ready")]}
        self._status(POOLS, made, status)

    def _addon(self, cluster: Obj) -> None:
        meta = cluster["metadata"]
        name = f"gpu-operator-{meta['name']}"[:63]
        proxy = {
            "apiVersion": "addons.cluster.x-k8s.io/v1alpha1", "kind": "HelmReleaseProxy",
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": {"cluster.x-k8s.io/cluster-name": meta["name"]}},
            "spec": {"clusterRef": {"apiVersion": "cluster.x-k8s.io/v1beta2",
                                    "kind": "Cluster", "name": meta["name"]},
                     "chartName": "gpu-operator",
                     "repoURL": "https://helm.ngc.nvidia.com/nvidia",
                     "version": "v25.3.4", "namespace": "gpu-operator",
                     "releaseName": "gpu-operator"},
        }
        made = self._create_or_get(ADDONS, proxy)
        self._status(ADDONS, made, {"status": "failed", "conditions": [
            {"type": "Ready", "status": "False", "severity": "Error",
             "reason": "HelmInstallOrUpgradeFailed", "message": self.addon_fail,
             "lastTransitionTime": now()}]})
