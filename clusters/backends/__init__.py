from clusters.models import Cluster

from .base import (
    BackendError,
    ClusterBackend,
    GpuInventory,
    InstanceSpec,
    InstanceState,
    TransientBackendError,
)


def get_backend(cluster: Cluster) -> ClusterBackend:
    if cluster.backend == Cluster.Backend.LOCAL:
        from .local import LocalBackend

        return LocalBackend(cluster)
    raise BackendError(
        f"The {cluster.get_backend_display()} backend is not available yet for {cluster}.",
    )


__all__ = [
    "BackendError",
    "ClusterBackend",
    "GpuInventory",
    "InstanceSpec",
    "InstanceState",
    "TransientBackendError",
    "get_backend",
]
