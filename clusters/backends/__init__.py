from clusters.models import Cluster

from .base import (
    BackendError,
    ClusterBackend,
    GpuInventory,
    InstanceSpec,
    InstanceState,
    NotebookSpec,
    NotebookState,
    ServiceSpec,
    Terminal,
    TransientBackendError,
)


def get_backend(cluster: Cluster) -> ClusterBackend:
    if cluster.backend == Cluster.Backend.LOCAL:
        from .local import LocalBackend

        return LocalBackend(cluster)
    if cluster.backend == Cluster.Backend.KUBERNETES:
        from .kubernetes import KubernetesBackend

        return KubernetesBackend(cluster)
    raise BackendError(f"{cluster} has an unknown backend: {cluster.backend}.")


__all__ = [
    "BackendError",
    "ClusterBackend",
    "GpuInventory",
    "InstanceSpec",
    "InstanceState",
    "NotebookSpec",
    "NotebookState",
    "ServiceSpec",
    "Terminal",
    "TransientBackendError",
    "get_backend",
]
