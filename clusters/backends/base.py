"""The one protocol every cluster backend speaks.

Backends receive plain specs and return plain states: they know nothing of the portal's
models, so the cluster layer can be tested (and replaced) on its own.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

Phase = Literal["provisioning", "running", "failed", "deleting", "gone"]


@dataclass(frozen=True)
class InstanceSpec:
    """What to create, how big, for whom."""

    key: str  # stable, unique on the cluster; the backend names and labels everything with it
    name: str
    owner: str
    workspace: str
    kind: str  # namespace | vcluster | dedicated
    gpus: int
    gpu_model: str
    cpu: float
    memory_gib: int
    storage_gib: int
    # Dedicated clusters (Cluster API): the ClusterClass topology and its worker pool.
    cluster_class: str = ""
    kubernetes_version: str = ""
    worker_class: str = ""
    gpus_per_node: int = 8
    # When this provisioning attempt began (epoch seconds; 0: unknown): how long a virtual or
    # dedicated cluster has been waiting is counted from here or its object's creation.
    waiting_since: float = 0.0
    profile: str = ""  # the compute profile's id, recorded for adoption (see `record`)

    def record(self) -> str:
        """What the backend writes beside an instance's objects (an annotation, a root-only
        file), so that an administrator can adopt it should the portal's database lose its row
        (a restore from an older backup); the attempt's start is left out."""
        # Its fields are scalars: read directly (asdict's deep copy costs a second of a
        # reconcile pass at 10,000 instances).
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)
                           if f.name != "waiting_since"}, sort_keys=True)

    @classmethod
    def from_record(cls, text: str) -> "InstanceSpec | None":
        """The spec a `record()` wrote (None for anything else: an object from before records,
        or one changed by hand)."""
        try:
            data = json.loads(text)
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except (TypeError, ValueError, KeyError):
            return None


@dataclass(frozen=True)
class InstanceState:
    phase: Phase
    message: str  # plain words for the user
    detail: str = ""  # raw detail for the administrator
    gpu_indices: tuple[int, ...] = ()
    gpu_simulated: bool = False
    kubeconfig: str = ""  # admin credentials of a virtual or dedicated cluster, kept encrypted


NotebookPhase = Literal["deploying", "running", "failed", "deleting", "gone"]


@dataclass(frozen=True)
class NotebookSpec:
    """A Jupyter server to run on an instance."""

    key: str  # stable and unique, like the instance key
    name: str
    instance: InstanceSpec
    image: str
    cpu: float
    memory_gib: int
    gpus: int
    token: str  # the credential users open it with
    gpu_indices: tuple[int, ...] = ()  # local backend: which of the instance's GPU slots
    instance_kubeconfig: str = ""  # vcluster/dedicated: deploy inside that cluster
    # Local backend: the profile's environment (Python packages, commands it needs).
    profile: str = ""
    packages: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    storage_gib: int = 10  # the home volume
    host_suffix: str = ""  # random, stored with the notebook: its host cannot be guessed


@dataclass(frozen=True)
class ServiceSpec:
    """A service from the catalogue (TensorBoard, MLflow…) to run on an instance. It goes
    through the same backend calls as a notebook (ensure, state, delete, release,
    reconcile, orphans), which tell the two apart by the spec's type."""

    key: str  # stable and unique: "svc-<id>"
    name: str
    instance: InstanceSpec
    cpu: float
    memory_gib: int
    gpus: int
    gpu_indices: tuple[int, ...] = ()
    profile: str = ""  # the service profile's name
    packages: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    # Local backend: the command, with {port}, {home} and {work} filled in by the backend.
    command: str = ""
    health_path: str = "/"
    # Kubernetes: the chart Flux installs, its values template (charts.py), and the Service
    # it makes, which the portal proxies to.
    chart_repository: str = ""
    chart: str = ""
    chart_version: str = ""
    values_template: str = ""
    service_name: str = "${release}"
    service_port: int = 80
    storage_gib: int = 0
    model: str = ""
    instance_kubeconfig: str = ""  # vcluster: install inside it


Workload = NotebookSpec | ServiceSpec


def token_digest(token: str) -> str:
    """Names a notebook token without revealing it: backends record it with what runs, so a
    new token is seen and the server restarted with it."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NotebookState:
    phase: NotebookPhase
    step: str  # created | pulling (or preparing) | starting | reachable: progress users see
    message: str
    url: str = ""
    detail: str = ""


@dataclass(frozen=True)
class GpuInventory:
    total: int
    model: str
    simulated: bool
    devices: tuple[str, ...] = field(default=())
    # What the units are, when they are not whole GPUs: "time-sliced: 4 shares of each of
    # 2 × NVIDIA-A100", "MIG: 7 × nvidia.com/mig-1g.10gb".
    sharing: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Terminal:
    """A login shell inside an instance, as a browser terminal runs it: the command, where,
    with what environment (nothing of the portal's), and as which OS user (None: the
    portal's own)."""

    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    uid: int | None = None
    gid: int | None = None


class BackendError(Exception):
    """The cluster refused for a reason retrying will not fix; `message` is for the user."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message


class TransientBackendError(BackendError):
    """The cluster could not be reached or answered oddly; the same call may succeed later."""


class ClusterBackend(Protocol):
    def inventory(self) -> GpuInventory:
        """GPUs this cluster offers, for the catalogue and the capacity check."""
        ...

    def ensure_instance(self, spec: InstanceSpec) -> InstanceState:
        """Create or patch everything the instance needs; safe to call any number of times."""
        ...

    def instance_state(self, spec: InstanceSpec) -> InstanceState:
        """Observe an instance whose objects were applied, on its way up: read its status,
        write nothing (unless what it is waiting on is missing altogether)."""
        ...

    def delete_instance(self, key: str, spec: InstanceSpec | None = None) -> InstanceState:
        """Start or continue removing an instance; phase `gone` once nothing is left.

        `spec` is absent for orphans, which the portal no longer knows."""
        ...

    def stop_instance(self, spec: InstanceSpec) -> None:
        """Free a running instance's GPUs and keep its data, so that `ensure_instance`
        brings it back as it was (its notebooks are started again one by one)."""
        ...

    def gpu_utilisation(self, spec: InstanceSpec, gpu_indices: tuple[int, ...]) -> float | None:
        """How busy the instance's busiest GPU is now, in percent; None where the cluster
        gives no reading (simulated GPUs, no metrics source)."""
        ...

    def jupyter_api(self, spec: NotebookSpec, path: str) -> Any:
        """A running notebook's Jupyter REST API answer (JSON) for `path`, asked with its
        token; BackendError when it does not answer."""
        ...

    def workload_kubeconfig(self, spec: InstanceSpec) -> str:
        """A dedicated cluster's admin kubeconfig, read now from where its controller keeps it
        ('' until there is one, or for kinds that have none)."""
        ...

    def release_instance(self, key: str) -> None:
        """Free what a failed instance holds (GPU slots, running servers), keeping its data
        so that a retry picks up where it was."""
        ...

    def check_connection(self) -> str:
        """One line for the administrator: what the cluster is and offers, or why it fails."""
        ...

    def list_instance_keys(self) -> set[str]:
        """Keys of every instance this portal created on the cluster (the reconcile pass's
        search for ones its database does not know)."""
        ...

    def instance_record(self, key: str) -> InstanceSpec | None:
        """What the cluster records of an instance the portal does not know (None where it
        recorded nothing: made before records were written)."""
        ...

    def quarantine_instance(self, key: str) -> str:
        """Stop an instance the portal does not know so that it holds no GPU, mark it, and
        keep every object and file: an administrator adopts or deletes it. Says what it did,
        in words. Safe to repeat."""
        ...

    def release_quarantine(self, key: str) -> None:
        """Take the quarantine's mark off an adopted instance (its start undoes the rest)."""
        ...

    def reconcile_instances(self, specs: list[InstanceSpec]) -> dict[str, InstanceState]:
        """Observe the given running instances in one pass and restore drift."""
        ...

    def ensure_notebook(self, spec: NotebookSpec) -> NotebookState:
        """Create or patch the notebook's objects (or start its process); safe to repeat."""
        ...

    def notebook_state(self, spec: NotebookSpec) -> NotebookState:
        """Observe a deployed notebook without changing anything."""
        ...

    def delete_notebook(self, spec: NotebookSpec) -> NotebookState:
        """Start or continue removing a notebook; phase `gone` once nothing is left."""
        ...

    def release_notebook(self, spec: NotebookSpec) -> None:
        """A notebook failed: stop whatever of it still runs, so it holds no GPU, and keep
        what the user may want back (its files)."""
        ...

    def reconcile_notebooks(self, specs: list[NotebookSpec]) -> dict[str, NotebookState]:
        """Observe the given running notebooks in one pass and restore what went missing."""
        ...

    def stop_orphan_notebooks(self, live_keys: Callable[[], set[str]]) -> int:
        """Stop servers this portal started whose notebook is not among `live_keys()`
        (called after listing, so a notebook created meanwhile is never taken for one)."""
        ...
