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


def preload() -> bool:
    """Import the Kubernetes backend (with the official client, seconds of CPU) now, where
    this portal has a Kubernetes cluster: a web or Celery worker then pays for it as it
    starts, not in its first request or task, and not in every worker at once in the burst
    after a deploy. Elsewhere nothing is imported (see kubernetes/__init__.py). One query;
    False where the database cannot say."""
    from django.db import DatabaseError

    try:
        wanted = Cluster.objects.filter(backend=Cluster.Backend.KUBERNETES).exists()
    except DatabaseError:
        return False
    if wanted:
        from .kubernetes import backend  # noqa: F401
    return wanted


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
