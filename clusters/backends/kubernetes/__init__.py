"""The production backend: instances as namespaces, virtual clusters or Cluster API clusters
(`backend.py`).

Importing this package, or its light modules (manifests, names, charts, policies, upstream,
the client's helpers), does not import the official `kubernetes` client: that import costs
every process seconds at start (a web worker, a Celery worker, each `manage.py` command),
most of a portal that never talks to a cluster. The backend and the client load it on first
use.
"""

from typing import Any

_BACKEND = ("KubernetesBackend", "cluster_settings", "client_for")


def __getattr__(name: str) -> Any:
    if name in _BACKEND:
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
