"""Manifests as data: pure functions from an instance spec to Kubernetes objects.

No API calls here, so every object the portal sends can be tested as a literal dict and
validated against the Kubernetes OpenAPI schema.
"""

import re
from dataclasses import dataclass
from typing import Any

from ..base import InstanceSpec, NotebookSpec, ServiceSpec, token_digest
from .charts import PLACEHOLDER, render_values
from .names import dns_label, instance_object_name, label_value

Manifest = dict[str, Any]

MANAGED_BY = "gpupaas"
INSTANCE_LABEL = "gpupaas.io/instance"
PORTAL_LABEL = "gpupaas.io/portal"
# Pod Security Admission is pinned to a version so a cluster upgrade cannot loosen or
# tighten what instances may run without us noticing.
PSA_VERSION = "v1.31"
RBAC = "rbac.authorization.k8s.io"
# On every tenant namespace: the tag its Ingress hosts must carry (see policies.py).
HOST_TAG_LABEL = "gpupaas.io/host-tag"
# On a namespace instance whose size names a GPU model: what its pods must select
# (policies.gpu_model_policy).
GPU_MODEL_ANNOTATION = "gpupaas.io/gpu-model"
# On an instance's root (its Namespace or Cluster API Cluster): its spec, so that an
# administrator can adopt it should the portal's database lose its row; and, on one the
# database does not know, when the reconcile pass quarantined it.
RECORD_ANNOTATION = "gpupaas.io/record"
QUARANTINED_ANNOTATION = "gpupaas.io/quarantined-at"
QUARANTINED_LABEL = "gpupaas.io/quarantined"  # kubectl get ns -l gpupaas.io/quarantined
# The ServiceAccount users of a namespace instance act as, through the portal's proxy: bound
# to `admin` in its namespace only, and reached with short-lived TokenRequest tokens.
ACCESS_ACCOUNT = "gpupaas-access"
VCLUSTER_RELEASE = "vcluster"
# The vcluster chart the portal installs (its values below follow this version's schema).
VCLUSTER_VERSION = "0.20.6"


@dataclass(frozen=True)
class ClusterSettings:
    """What the builders need to know about the target cluster."""

    portal_id: str = "gpupaas"
    gpu_resource_name: str = "nvidia.com/gpu"
    ingress_namespace: str = "ingress-nginx"
    storage_class: str = ""
    capi_namespace: str = "gpupaas-clusters"
    vcluster_image: str = f"ghcr.io/loft-sh/vcluster-oss:{VCLUSTER_VERSION}"
    vcluster_chart_version: str = VCLUSTER_VERSION
    vcluster_repository: str = "https://charts.loft.sh"
    # False: the portal runs in this cluster and reaches each vcluster through its Service.
    # True: the portal is outside; it goes through the ingress controller (SSL passthrough).
    vcluster_via_ingress: bool = False
    # Where the portal runs, let in to the vcluster API by a NetworkPolicy.
    portal_namespace: str = "gpupaas-system"
    # Where Flux's helm-controller runs (it installs catalogue services into vclusters).
    flux_namespace: str = "flux-system"
    gpu_operator_version: str = "v25.3.4"
    ingress_nginx_version: str = "4.12.1"
    ingress_domain: str = ""
    ingress_class: str = "nginx"
    # HTTPS with the ingress controller's default certificate (a wildcard for the domain):
    # no per-notebook secret that nothing would create.
    ingress_https: bool = False
    # Who may reach notebooks: label selectors of namespaces ("k=v,k2=v2") and CIDRs. Neither
    # given: the ingress controller's namespace.
    ingress_from_selectors: tuple[str, ...] = ()
    ingress_from_cidrs: tuple[str, ...] = ()
    gpu_model_label: str = "nvidia.com/gpu.product"


def object_name(spec: InstanceSpec) -> str:
    """The namespace (or Cluster API Cluster) of an instance."""
    return instance_object_name(key=spec.key, owner=spec.owner, name=spec.name)


def selector(cs: ClusterSettings) -> str:
    """Label selector for everything this portal created on a cluster."""
    return f"app.kubernetes.io/managed-by={MANAGED_BY},{PORTAL_LABEL}={cs.portal_id}"


def labels(spec: InstanceSpec, cs: ClusterSettings) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        PORTAL_LABEL: cs.portal_id,
        INSTANCE_LABEL: spec.key,
        "gpupaas.io/workspace": label_value(spec.workspace),
        "gpupaas.io/owner": label_value(spec.owner),
    }


def _meta(spec: InstanceSpec, cs: ClusterSettings, name: str, namespace: str) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": labels(spec, cs)}


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(value * 1000)}m"


def host_tag(spec: InstanceSpec) -> str:
    """What every notebook host of this instance ends with, before the domain."""
    return f"i{spec.key.rsplit('-', 1)[-1]}"


def namespace(spec: InstanceSpec, cs: ClusterSettings) -> Manifest:
    psa = {
        f"pod-security.kubernetes.io/{mode}{suffix}": value
        for mode in ("enforce", "audit", "warn")
        for suffix, value in (("", "restricted"), ("-version", PSA_VERSION))
    }
    meta: Manifest = {"name": object_name(spec), "labels": {
        **labels(spec, cs), **psa, HOST_TAG_LABEL: host_tag(spec)},
        "annotations": {RECORD_ANNOTATION: spec.record()}}
    if spec.kind == "namespace" and spec.gpu_model:
        meta["annotations"][GPU_MODEL_ANNOTATION] = spec.gpu_model
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def resource_quota(spec: InstanceSpec, cs: ClusterSettings) -> Manifest:
    # Requests only: what the scheduler reserves is what the instance holds. Limits are
    # bounded per container by the LimitRange, so a pod without limits is never refused.
    cpu, memory = _quantity(spec.cpu), f"{spec.memory_gib}Gi"
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(spec, cs, "instance-quota", object_name(spec)),
        "spec": {
            "hard": {
                "requests.cpu": cpu,
                "requests.memory": memory,
                f"requests.{cs.gpu_resource_name}": str(spec.gpus),
                "requests.storage": f"{spec.storage_gib}Gi",
                "pods": "100",
                # Instances are reached through the portal and the ingress, never directly.
                "services.loadbalancers": "0",
                "services.nodeports": "0",
            }
        },
    }


def limit_range(spec: InstanceSpec, cs: ClusterSettings) -> Manifest:
    # LimitRanger gives a container without limits the default limit and then requires
    # request <= limit: a default limit below what a user's pod requests would refuse it.
    # So the default limit (and the max) is the whole instance, and the default request is
    # small, for pods that set nothing.
    whole = {"cpu": _quantity(spec.cpu), "memory": f"{spec.memory_gib}Gi"}
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(spec, cs, "instance-defaults", object_name(spec)),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": dict(whole),
                    "defaultRequest": {"cpu": "100m", "memory": "256Mi"},
                    "max": dict(whole),
                }
            ]
        },
    }


def _match_labels(selector: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in selector.split(",") if "=" in part)


def ingress_sources(cs: ClusterSettings) -> list[Manifest]:
    """The peers besides the namespace itself that may reach its pods: the ingress
    controller's namespace unless the cluster names its own sources."""
    peers: list[Manifest] = [{"namespaceSelector": {"matchLabels": _match_labels(s)}}
                             for s in cs.ingress_from_selectors]
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in cs.ingress_from_cidrs]
    return peers or [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": cs.ingress_namespace}}}]


def network_policies(spec: InstanceSpec, cs: ClusterSettings) -> list[Manifest]:
    ns = object_name(spec)
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(spec, cs, "default-deny-ingress", ns),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(spec, cs, "allow-namespace-and-ingress", ns),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {}}, *ingress_sources(cs)]
                }
            ],
        },
    }
    return [deny, allow]


def access_account(spec: InstanceSpec, cs: ClusterSettings) -> Manifest:
    """Who the instance's users are on the cluster: the portal's proxy forwards their requests
    with a short-lived token of this account (TokenRequest), never impersonating anyone. It
    mounts its token into no pod."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(spec, cs, ACCESS_ACCOUNT, object_name(spec)),
        "automountServiceAccountToken": False,
    }


def owner_role_binding(spec: InstanceSpec, cs: ClusterSettings) -> Manifest:
    # The built-in `admin` ClusterRole, bound in this namespace only, to the access account:
    # full control of the instance, nothing outside it (no quota or namespace edits).
    ns = object_name(spec)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(spec, cs, "owner-admin", ns),
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": ACCESS_ACCOUNT, "namespace": ns}],
    }


def namespace_objects(spec: InstanceSpec, cs: ClusterSettings) -> list[Manifest]:
    """A `namespace` instance (or a vcluster's host namespace), in the order they are created.
    A vcluster's users reach the virtual cluster only: nothing binds them in the host
    namespace, where the vcluster's own StatefulSet, Secrets and values live."""
    objects = [
        namespace(spec, cs),
        resource_quota(spec, cs),
        limit_range(spec, cs),
        *network_policies(spec, cs),
    ]
    if spec.kind == "namespace":
        objects += [access_account(spec, cs), owner_role_binding(spec, cs)]
    return objects


# --- vcluster (through Flux) -------------------------------------------------------------------

FLUX_HELM = "helm.toolkit.fluxcd.io/v2"
FLUX_SOURCE = "source.toolkit.fluxcd.io/v1"
# The vcluster pods the chart makes carry these labels (chart templates/statefulset.yaml).
VCLUSTER_POD_LABELS = {"app": "vcluster", "release": VCLUSTER_RELEASE}
VCLUSTER_PORT = 8443


@dataclass(frozen=True)
class Reservation:
    """What a kind of instance spends of its own quota on itself, before any notebook."""

    cpu_millis: int = 0
    memory_mib: int = 0
    storage_gib: int = 0

    def __bool__(self) -> bool:
        return bool(self.cpu_millis or self.memory_mib or self.storage_gib)

    @property
    def cpu(self) -> str:
        """Cores as people write them: 0.22."""
        return f"{self.cpu_millis / 1000:g}"

    def __str__(self) -> str:
        """'0.22 CPU and 320 MiB memory'."""
        return f"{self.cpu} CPU and {self.memory_mib} MiB memory"


# The virtual cluster's requests, set in its values below and counted by the instance's
# ResourceQuota like any pod: the control plane (its copy-binaries init container asks less,
# and a pod's quota is the larger of its init and its running containers) and CoreDNS.
VCLUSTER_CONTROL_PLANE = {"cpu": "200m", "memory": "256Mi"}
VCLUSTER_COREDNS = {"cpu": "20m", "memory": "64Mi"}
VCLUSTER_DATA_GIB = 5
VCLUSTER_RESERVED = Reservation(cpu_millis=220, memory_mib=320, storage_gib=VCLUSTER_DATA_GIB)


def reserved(kind: str) -> Reservation:
    """What an instance of this kind holds back from its notebooks."""
    return VCLUSTER_RESERVED if kind == "vcluster" else Reservation()


def vcluster_api_host(spec: InstanceSpec, cs: ClusterSettings) -> str:
    """Where the portal reaches the virtual cluster's API: its Service, from inside the host
    cluster; or, for a portal outside it, a host under the ingress domain that the ingress
    controller passes through (TLS end to end). It ends in the instance's host tag, as the
    host policy requires of every Ingress in the namespace."""
    if cs.vcluster_via_ingress:
        return f"vc-{host_tag(spec)}.{cs.ingress_domain}"
    return f"{VCLUSTER_RELEASE}.{object_name(spec)}.svc"


def vcluster_server(spec: InstanceSpec, cs: ClusterSettings) -> str:
    host = vcluster_api_host(spec, cs)
    return f"https://{host}" if cs.vcluster_via_ingress else f"https://{host}:443"


def _image(reference: str) -> Manifest:
    """`registry/repository:tag` as the vcluster chart takes an image."""
    name, _, tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (
        reference, "", "")
    registry, _, repository = name.partition("/")
    return {"registry": registry, "repository": repository, "tag": tag}


# Pod Security `restricted` for every container the chart runs in the host namespace.
VCLUSTER_UID = 12345
_RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": VCLUSTER_UID,
    "runAsGroup": VCLUSTER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def vcluster_values(spec: InstanceSpec, cs: ClusterSettings) -> Manifest:
    """The chart's values (vcluster 0.20 schema): a non-root control plane that passes the
    namespace's Pod Security `restricted`, its requests pinned (the instance quota counts
    them, see VCLUSTER_RESERVED), its kubeconfig exported for the address the portal uses
    and its certificate valid for that address, Ingresses synced to the host (notebooks are
    reached through the host's ingress controller), and no quota or limits of its own (the
    namespace has the instance's)."""
    host = vcluster_api_host(spec, cs)
    sans = [host] if cs.vcluster_via_ingress else [
        host, f"{host}.cluster.local", f"{VCLUSTER_RELEASE}.{object_name(spec)}"]
    volume: Manifest = {"enabled": True, "size": f"{VCLUSTER_DATA_GIB}Gi"}
    if cs.storage_class:
        volume["storageClass"] = cs.storage_class
    control_plane: Manifest = {
        "distro": {"k8s": {
            "enabled": True,
            "securityContext": _RESTRICTED_CONTAINER,
            "resources": {"requests": {"cpu": "40m", "memory": "64Mi"},
                          "limits": {"cpu": "100m", "memory": "256Mi"}},
        }},
        "backingStore": {"database": {"embedded": {"enabled": True}}},
        "statefulSet": {
            "image": _image(cs.vcluster_image),
            "security": {
                "podSecurityContext": {"runAsNonRoot": True, "runAsUser": VCLUSTER_UID,
                                       "runAsGroup": VCLUSTER_UID, "fsGroup": VCLUSTER_UID,
                                       "seccompProfile": {"type": "RuntimeDefault"}},
                "containerSecurityContext": _RESTRICTED_CONTAINER,
            },
            "resources": {"requests": {**VCLUSTER_CONTROL_PLANE, "ephemeral-storage": "400Mi"},
                          "limits": {"memory": "2Gi", "ephemeral-storage": "8Gi"}},
            "persistence": {"volumeClaim": volume},
        },
        "proxy": {"extraSANs": sans},
        "coredns": {"deployment": {"resources": {
            "requests": dict(VCLUSTER_COREDNS), "limits": {"cpu": "1", "memory": "170Mi"}}}},
    }
    if cs.vcluster_via_ingress:
        ingress: Manifest = {"enabled": True, "host": host}
        if cs.ingress_class:
            ingress["spec"] = {"ingressClassName": cs.ingress_class}
        control_plane["ingress"] = ingress
    return {
        "controlPlane": control_plane,
        "sync": {"toHost": {"ingresses": {"enabled": True}}},
        "policies": {
            "podSecurityStandard": "restricted",
            "resourceQuota": {"enabled": False},
            "limitRange": {"enabled": False},
        },
        "exportKubeConfig": {"server": vcluster_server(spec, cs)},
        "telemetry": {"enabled": False},
    }


def vcluster_objects(spec: InstanceSpec, cs: ClusterSettings) -> list[Manifest]:
    """The virtual cluster, declared for Flux: a NetworkPolicy that lets the portal (and
    Flux's helm-controller, which installs catalogue services inside) reach its API, the
    chart's HelmRepository, and the HelmRelease of the pinned chart (last: the one whose
    status says how it went). Flux's helm-controller installs the chart."""
    ns = object_name(spec)
    portal_peers: list[Manifest] = [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": name}}} for name in (cs.portal_namespace,
                                                          cs.flux_namespace)]
    if cs.vcluster_via_ingress:  # through the ingress controller (already let in)
        portal_peers = ingress_sources(cs)
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(spec, cs, "allow-portal-to-vcluster", ns),
            "spec": {
                "podSelector": {"matchLabels": dict(VCLUSTER_POD_LABELS)},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": portal_peers,
                             "ports": [{"protocol": "TCP", "port": VCLUSTER_PORT}]}],
            },
        },
        {
            "apiVersion": FLUX_SOURCE,
            "kind": "HelmRepository",
            "metadata": _meta(spec, cs, VCLUSTER_RELEASE, ns),
            "spec": {"url": cs.vcluster_repository, "interval": "1h"},
        },
        {
            "apiVersion": FLUX_HELM,
            "kind": "HelmRelease",
            "metadata": _meta(spec, cs, VCLUSTER_RELEASE, ns),
            "spec": {
                "releaseName": VCLUSTER_RELEASE,
                "interval": "10m",
                "timeout": "10m",
                "chart": {"spec": {
                    "chart": "vcluster",
                    "version": cs.vcluster_chart_version,
                    "sourceRef": {"kind": "HelmRepository", "name": VCLUSTER_RELEASE},
                    "interval": "1h",
                }},
                # A failed install is retried twice, then Flux stops (Stalled) and the portal
                # reports the failure in Flux's words.
                "install": {"remediation": {"retries": 2}},
                "upgrade": {"remediation": {"retries": 2}},
                "values": vcluster_values(spec, cs),
            },
        },
    ]


def vcluster_kubeconfig_secret_name() -> str:
    """The secret vcluster writes its admin kubeconfig to (key `config`)."""
    return f"vc-{VCLUSTER_RELEASE}"


# --- dedicated (Cluster API) -------------------------------------------------------------------

CAPI = "cluster.x-k8s.io/v1beta2"
CAAPH = "addons.cluster.x-k8s.io/v1alpha1"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
# Set on every dedicated Cluster of this portal: the add-ons' HelmChartProxies select by it.
ADDONS_LABEL = "gpupaas.io/addons"
WORKER_POOL = "gpu-workers"
# The ingress-nginx add-on's IngressClass, inside every dedicated cluster.
DEDICATED_INGRESS_CLASS = "nginx"


def capi_cluster(spec: InstanceSpec, cs: ClusterSettings) -> Manifest:
    """A Cluster API Cluster (v1beta2, the storage version) from the profile's ClusterClass,
    with a GPU worker pool big enough for the profile's GPUs, labelled for the add-ons."""
    nodes = max(1, -(-spec.gpus // max(spec.gpus_per_node, 1)))
    return {
        "apiVersion": CAPI,
        "kind": "Cluster",
        "metadata": {
            "name": object_name(spec),
            "namespace": cs.capi_namespace,
            "labels": {**labels(spec, cs), ADDONS_LABEL: cs.portal_id},
            "annotations": {RECORD_ANNOTATION: spec.record()},
        },
        "spec": {
            "topology": {
                "classRef": {"name": spec.cluster_class},
                "version": spec.kubernetes_version,
                "controlPlane": {"replicas": 1},
                "workers": {
                    "machineDeployments": [
                        {"class": spec.worker_class, "name": WORKER_POOL, "replicas": nodes}
                    ]
                },
            }
        },
    }


def capi_kubeconfig_secret_name(spec: InstanceSpec) -> str:
    """The secret Cluster API writes the workload cluster's kubeconfig to (key `value`)."""
    return f"{object_name(spec)}-kubeconfig"


def dedicated_domain(spec: InstanceSpec, cs: ClusterSettings) -> str:
    """Each dedicated cluster's own ingress domain: its ingress controller is its own, so its
    notebooks' hosts must resolve to it (a wildcard record `*.<domain>`, which the
    ingress-nginx add-on asks external-dns for)."""
    return f"{object_name(spec)}.{cs.ingress_domain}"


def capi_addons(cs: ClusterSettings) -> list[Manifest]:
    """The add-ons every dedicated cluster of this portal gets, as Cluster API Add-on
    Provider Helm (CAAPH) HelmChartProxies selecting the portal's Clusters by label: the
    NVIDIA GPU Operator (driver, device plugin, GPU feature discovery: nodes then advertise
    `nvidia.com/gpu` and their model) and ingress-nginx (notebooks' Ingresses), each pinned."""
    selector = {"matchLabels": {ADDONS_LABEL: cs.portal_id}}
    meta = {"namespace": cs.capi_namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, PORTAL_LABEL: cs.portal_id}}
    ingress_values = (
        "controller:\n"
        "  ingressClassResource:\n"
        f"    name: {DEDICATED_INGRESS_CLASS}\n"
        "    default: true\n"
        "  service:\n"
        "    type: LoadBalancer\n"
    )
    if cs.ingress_domain:  # CAAPH renders `{{ .Cluster... }}` for each selected cluster
        ingress_values += (
            "    annotations:\n"
            "      external-dns.alpha.kubernetes.io/hostname: "
            f"'*.{{{{ .Cluster.metadata.name }}}}.{cs.ingress_domain}'\n")
    return [
        {
            "apiVersion": CAAPH,
            "kind": "HelmChartProxy",
            "metadata": {**meta, "name": f"gpupaas-{cs.portal_id}-gpu-operator"},
            "spec": {
                "clusterSelector": selector,
                "repoURL": "https://helm.ngc.nvidia.com/nvidia",
                "chartName": "gpu-operator",
                "version": cs.gpu_operator_version,
                "releaseName": "gpu-operator",
                "namespace": "gpu-operator",
                "options": {"install": {"createNamespace": True}, "wait": True,
                            "timeout": "15m"},
            },
        },
        {
            "apiVersion": CAAPH,
            "kind": "HelmChartProxy",
            "metadata": {**meta, "name": f"gpupaas-{cs.portal_id}-ingress-nginx"},
            "spec": {
                "clusterSelector": selector,
                "repoURL": "https://kubernetes.github.io/ingress-nginx",
                "chartName": "ingress-nginx",
                "version": cs.ingress_nginx_version,
                "releaseName": "ingress-nginx",
                "namespace": "ingress-nginx",
                "options": {"install": {"createNamespace": True}, "wait": True},
                "valuesTemplate": ingress_values,
            },
        },
    ]


# --- notebooks ---------------------------------------------------------------------------------

NOTEBOOK_LABEL = "gpupaas.io/notebook"
TOKEN_ANNOTATION = "gpupaas.io/token-sha256"
NOTEBOOK_PORT = 8888
# Inside a virtual or dedicated cluster notebooks get a namespace of their own.
NOTEBOOK_NAMESPACE = "notebooks"
NOTEBOOK_HOME = "/home/jovyan"  # the Jupyter Docker Stacks' user


def notebook_name(spec: NotebookSpec) -> str:
    """`nb-<name>-<id>`: a DNS label, so it also serves as the notebook's host name."""
    number = spec.key.rsplit("-", 1)[-1]
    return f"nb-{dns_label(spec.name, 63 - 4 - len(number))}-{number}"


def notebook_namespace(spec: NotebookSpec) -> str:
    if spec.instance.kind == "namespace":
        return object_name(spec.instance)
    return NOTEBOOK_NAMESPACE


def notebook_host(spec: NotebookSpec, cs: ClusterSettings) -> str:
    """`nb-<name>-<id>-<random>-i<instance>.<domain>`: unguessable (the random part is
    stored on the notebook), and ending in the instance's tag, which the host policy
    requires of every Ingress in its namespace."""
    tail = f"-{spec.host_suffix}-{host_tag(spec.instance)}" if spec.host_suffix else ""
    head = notebook_name(spec)[:63 - len(tail)].rstrip("-")
    return f"{head}{tail}.{notebook_domain(spec.instance, cs)}"


def notebook_domain(spec: InstanceSpec, cs: ClusterSettings) -> str:
    """The host cluster's ingress domain, or a dedicated cluster's own."""
    return dedicated_domain(spec, cs) if spec.kind == "dedicated" else cs.ingress_domain


def notebook_ingress_class(spec: InstanceSpec, cs: ClusterSettings) -> str:
    """The host cluster's ingress class (a vcluster syncs Ingresses to it), or the one the
    ingress-nginx add-on installs in a dedicated cluster."""
    return DEDICATED_INGRESS_CLASS if spec.kind == "dedicated" else cs.ingress_class


def notebook_url(spec: NotebookSpec, cs: ClusterSettings) -> str:
    scheme = "https" if cs.ingress_https else "http"
    return f"{scheme}://{notebook_host(spec, cs)}/lab"


# What Jupyter needs of ingress-nginx: uploads are 1 MiB chunks, base64 in JSON (the default
# 1m body limit answers 413), and kernel websockets stay open for hours between messages.
NGINX_ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/proxy-body-size": "64m",
    "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
    "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
}


def notebook_labels(spec: NotebookSpec, cs: ClusterSettings) -> dict[str, str]:
    return {**labels(spec.instance, cs), NOTEBOOK_LABEL: spec.key}


def notebook_objects(spec: NotebookSpec, cs: ClusterSettings) -> list[Manifest]:
    """Secret (token), home volume claim, Service, Ingress and Deployment of one Jupyter
    server, in that order: the cluster refuses anything before a GPU is held."""
    name, ns = notebook_name(spec), notebook_namespace(spec)
    meta = {"name": name, "namespace": ns, "labels": notebook_labels(spec, cs)}
    pod_labels = {NOTEBOOK_LABEL: spec.key}
    limits = {"cpu": _quantity(spec.cpu), "memory": f"{spec.memory_gib}Gi"}
    if spec.gpus:
        limits[cs.gpu_resource_name] = str(spec.gpus)
    ingress_spec: Manifest = {
        "rules": [{
            "host": notebook_host(spec, cs),
            "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": 80}}},
            }]},
        }],
    }
    ingress_class = notebook_ingress_class(spec.instance, cs)
    if ingress_class:
        ingress_spec["ingressClassName"] = ingress_class
    if cs.ingress_https:  # no secretName: the controller's default (wildcard) certificate
        ingress_spec["tls"] = [{"hosts": [notebook_host(spec, cs)]}]
    ingress_meta = dict(meta)
    if "nginx" in ingress_class:
        ingress_meta["annotations"] = dict(NGINX_ANNOTATIONS)
    placement: Manifest = {}
    if spec.gpus:
        # Only nodes with the profile's GPU model, including GPU nodes tainted for GPU work.
        placement["tolerations"] = [{"key": cs.gpu_resource_name, "operator": "Exists",
                                     "effect": "NoSchedule"}]
        if spec.instance.gpu_model:
            placement["nodeSelector"] = {cs.gpu_model_label: spec.instance.gpu_model}
    claim: Manifest = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {**meta, "name": f"{name}-home"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": f"{spec.storage_gib}Gi"}}},
    }
    if cs.storage_class:
        claim["spec"]["storageClassName"] = cs.storage_class
    return [
        {
            "apiVersion": "v1", "kind": "Secret", "metadata": {**meta, "name": f"{name}-token"},
            "type": "Opaque", "stringData": {"token": spec.token},
        },
        claim,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "selector": pod_labels,
                "ports": [{"name": "http", "port": 80, "targetPort": NOTEBOOK_PORT}],
            },
        },
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": ingress_meta,
         "spec": ingress_spec},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": pod_labels},
                # One server per notebook: never two pods writing the same files.
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {
                        "labels": {**notebook_labels(spec, cs), **pod_labels},
                        # A new token changes the template, so the server restarts with it
                        # (a Secret change alone reaches no running pod).
                        "annotations": {TOKEN_ANNOTATION: token_digest(spec.token)},
                    },
                    "spec": {
                        # A notebook needs no Kubernetes API credentials of its own.
                        "automountServiceAccountToken": False,
                        **placement,
                        "securityContext": {
                            "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100,
                            "fsGroup": 100, "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "notebook",
                            "image": spec.image,
                            "args": ["start-notebook.py", "--ServerApp.base_url=/"],
                            "env": [
                                {"name": "JUPYTER_TOKEN", "valueFrom": {"secretKeyRef": {
                                    "name": f"{name}-token", "key": "token"}}},
                                {"name": "JUPYTER_BASE_URL", "value": "/"},
                            ],
                            "ports": [{"name": "http", "containerPort": NOTEBOOK_PORT}],
                            "resources": {"requests": dict(limits), "limits": limits},
                            "readinessProbe": {
                                "httpGet": {"path": "/api", "port": NOTEBOOK_PORT},
                                "periodSeconds": 5,
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "home", "mountPath": NOTEBOOK_HOME},
                                {"name": "shm", "mountPath": "/dev/shm"},
                            ],
                        }],
                        "volumes": [
                            # The user's files outlive restarts of the server.
                            {"name": "home", "persistentVolumeClaim": {
                                "claimName": f"{name}-home"}},
                            # PyTorch data loaders share tensors through /dev/shm; the
                            # runtime's default 64 MiB is far too small. Counts as memory.
                            {"name": "shm", "emptyDir": {
                                "medium": "Memory",
                                "sizeLimit": f"{max(spec.memory_gib // 2, 1)}Gi"}},
                        ],
                    },
                },
            },
        },
    ]


# --- catalogue services ------------------------------------------------------------------------

SERVICE_LABEL = "gpupaas.io/service"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def service_release_namespace(spec: ServiceSpec, cs: ClusterSettings) -> str:
    """Where its HelmRelease lives, on this cluster: the instance's namespace (for a virtual
    cluster, its host namespace, beside vcluster's kubeconfig Secret), or for a dedicated
    cluster the Cluster API namespace, beside the kubeconfig Secret Cluster API writes (Flux
    reads a release's kubeConfig from its own namespace only)."""
    return cs.capi_namespace if spec.instance.kind == "dedicated" else object_name(spec.instance)


def service_object_name(spec: ServiceSpec) -> str:
    """Its HelmRelease and HelmRepository: `svc-<id>`, or in the Cluster API namespace, which
    every dedicated cluster shares, `svc-<id>-<instance>`."""
    if spec.instance.kind == "dedicated":
        return dns_label(f"{spec.key}-{object_name(spec.instance)}", 63)
    return spec.key


def service_namespace(spec: ServiceSpec) -> str:
    """Where its pods and Service run: the instance's namespace, or inside a virtual or
    dedicated cluster, the namespace notebooks use there."""
    if spec.instance.kind == "namespace":
        return object_name(spec.instance)
    return NOTEBOOK_NAMESPACE


def service_claim_name(spec: ServiceSpec) -> str:
    return f"{spec.key}-data" if spec.storage_gib else ""


def service_params(spec: ServiceSpec, cs: ClusterSettings) -> dict[str, Any]:
    """What its values template's placeholders stand for (charts.PLACEHOLDERS)."""
    limits = {"cpu": _quantity(spec.cpu), "memory": f"{spec.memory_gib}Gi"}
    if spec.gpus:
        limits[cs.gpu_resource_name] = str(spec.gpus)
    model = spec.instance.gpu_model
    return {
        "release": spec.key, "name": spec.name, "gpus": spec.gpus, "gpu_model": model,
        "model": spec.model, "cpu": limits["cpu"], "memory": limits["memory"],
        "resources": {"requests": dict(limits), "limits": limits},
        "node_selector": {cs.gpu_model_label: model} if spec.gpus and model else {},
        "tolerations": [{"key": cs.gpu_resource_name, "operator": "Exists",
                         "effect": "NoSchedule"}] if spec.gpus else [],
        "storage_claim": service_claim_name(spec), "base_path": "/",
    }


def service_target(spec: ServiceSpec, cs: ClusterSettings) -> str:
    """The Service its chart makes, which the portal proxies to: `name:port`."""
    params = service_params(spec, cs)
    name = PLACEHOLDER.sub(lambda found: str(params[found[1]]), spec.service_name)
    # It goes into the service proxy's path: a Service's name (a DNS label), nothing else.
    if not DNS_LABEL.fullmatch(name):
        raise ValueError(f"its Service name {name!r} is not a DNS label")
    return f"{name}:{spec.service_port}"


def service_claim(spec: ServiceSpec, cs: ClusterSettings) -> Manifest | None:
    """Its own volume, made by the portal (not the chart), so that a stop, which uninstalls
    the release, keeps what it wrote; removed with the service."""
    if not spec.storage_gib:
        return None
    claim: Manifest = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": service_claim_name(spec), "namespace": service_namespace(spec),
                     "labels": {**labels(spec.instance, cs), SERVICE_LABEL: spec.key}},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": f"{spec.storage_gib}Gi"}}},
    }
    if cs.storage_class:
        claim["spec"]["storageClassName"] = cs.storage_class
    return claim


def service_objects(spec: ServiceSpec, cs: ClusterSettings) -> list[Manifest]:
    """Its chart's HelmRepository and the HelmRelease Flux installs it from (last: the one
    whose status says how it went).

    In a namespace instance Flux installs it as the instance's access account, which holds
    `admin` in that namespace and nothing else, so a chart (or a tenant who edits the
    HelmRepository) gets no more than the tenant has. Into a virtual or dedicated cluster it
    installs with that cluster's own kubeconfig (`kubeConfig.secretRef`)."""
    ns, name = service_release_namespace(spec, cs), service_object_name(spec)
    meta = {"name": name, "namespace": ns,
            "labels": {**labels(spec.instance, cs), SERVICE_LABEL: spec.key}}
    repository: Manifest = {"url": spec.chart_repository, "interval": "1h"}
    if spec.chart_repository.startswith("oci://"):
        repository["type"] = "oci"
    release: Manifest = {
        "releaseName": spec.key,
        "interval": "10m",
        # Helm waits for what the chart made to be ready: a model server may first download
        # its weights.
        "timeout": "30m",
        "chart": {"spec": {
            "chart": spec.chart, "version": spec.chart_version,
            "sourceRef": {"kind": "HelmRepository", "name": name}, "interval": "1h",
        }},
        "install": {"remediation": {"retries": 2}},
        "upgrade": {"remediation": {"retries": 2}},
        "values": render_values(spec.values_template, service_params(spec, cs)),
    }
    if spec.instance.kind == "namespace":
        release["serviceAccountName"] = ACCESS_ACCOUNT
    else:
        secret = (capi_kubeconfig_secret_name(spec.instance), "value") if (
            spec.instance.kind == "dedicated") else (vcluster_kubeconfig_secret_name(), "config")
        release.update({
            "kubeConfig": {"secretRef": {"name": secret[0], "key": secret[1]}},
            "targetNamespace": NOTEBOOK_NAMESPACE, "storageNamespace": NOTEBOOK_NAMESPACE,
        })
        release["install"]["createNamespace"] = True
    return [
        {"apiVersion": FLUX_SOURCE, "kind": "HelmRepository", "metadata": meta,
         "spec": repository},
        {"apiVersion": FLUX_HELM, "kind": "HelmRelease", "metadata": meta, "spec": release},
    ]


PORTAL_BINDING = "gpupaas-portal"
PORTAL_MANAGER_ROLE = "gpupaas-portal-manager"
# What it may do in the Cluster API namespace, bound there by an administrator.
PORTAL_CLUSTER_API_ROLE = "gpupaas-portal-cluster-api"


def portal_role_binding(spec: InstanceSpec, cs: ClusterSettings, *,
                        account: tuple[str, str]) -> Manifest:
    """The portal's own rights in an instance namespace: the manager ClusterRole bound there
    to its ServiceAccount (namespace, name). Cluster-wide it holds almost nothing (see
    docs/kubernetes.md), so this binding is the first object after the namespace."""
    namespace, name = account
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(spec, cs, PORTAL_BINDING, object_name(spec)),
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": PORTAL_MANAGER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
