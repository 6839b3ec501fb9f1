"""kubeemu: a stateful, in-memory Kubernetes API server over real HTTP, for tests.

Driven as production drives a cluster: over HTTP, through the official ``kubernetes``
client and ``kubectl``. In a test::

    from tests.kit import kubeemu

    with kubeemu.start() as emu:
        api = kubernetes.client.ApiClient(emu.client_configuration())
        ...

As a process: ``python -m tests.kit.kubeemu --port 18002 --kubeconfig /tmp/kubeemu.yaml``.
Faults and request counting for the backend tests are the kit's proxy's
(``tests/kit/kubeproxy.py``). README.md (next to this file) says what each module holds,
the line budget, and the known gaps versus a real API server.
"""

from .admission import restricted_violations as _restricted_violations
from .errors import ApiError
from .patch import json_patch, merge_patch, strategic_merge
from .server import Emulator, admit_ingresses, main, serve_endpoints, start
from .serving import Served
from .store import (
    CLUSTER_API,
    DISCOVERY_FILE,
    UPSTREAM_KINDS,
    ResourceInfo,
    Store,
    WriteEvent,
    field_match,
    label_match,
)

__all__ = [
    "CLUSTER_API", "DISCOVERY_FILE", "UPSTREAM_KINDS", "ApiError", "Emulator", "ResourceInfo",
    "Served", "Store", "WriteEvent", "_restricted_violations", "admit_ingresses",
    "field_match", "json_patch", "label_match", "main", "merge_patch", "serve_endpoints",
    "start", "strategic_merge",
]
