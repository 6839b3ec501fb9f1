"""The embedded default: an instance is a sandbox directory plus GPU slots on this machine.

Layout under LOCAL_SANDBOX_ROOT (the portal runs as root: tenants may pass through, not list):

    <cluster>/<instance key>/            the sandbox, 0700, owned by the workspace's OS user;
                                         a notebook's HOME, `work/` its JupyterLab root
    .portal/<cluster>/<instance key>/    the portal's control folders (runtime.json, logs),
                                         0700 root: tenants can neither read nor forge them
    .portal/<cluster>/<instance key>.lock  serialises starting servers against deletion;
                                         says "deleted" once the instance is gone for good
"""

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings

from clusters.models import Cluster, GpuAllocation

from ..base import (
    BackendError,
    GpuInventory,
    InstanceSpec,
    InstanceState,
    NotebookSpec,
    NotebookState,
    ServiceSpec,
    Terminal,
    Workload,
)
from . import environments, jupyter, limits, services
from .gpus import allocate_slots, local_inventory, release_slots, utilisation
from .tenants import (
    Tenant,
    ensure_tenant,
    isolated,
    mode_line,
    own,
    protect_portal_files,
    traversable,
)

DELETED = "deleted"


@dataclass(frozen=True)
class MachineLimits:
    cpus: int
    memory_gib: int

    def cap(self, cpu: Decimal, memory_gib: int) -> tuple[Decimal, int]:
        """What a sandbox sized at `cpu` and `memory_gib` may really use here."""
        return min(Decimal(cpu), Decimal(self.cpus)), min(memory_gib, self.memory_gib)


def machine_limits() -> MachineLimits:
    """What this machine has: a sandbox's CPU and memory are limits shared by every sandbox
    here, never more than these, and not reservations."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MachineLimits(cpus=cpus or 1, memory_gib=max(1, memory // 2**30))


class LocalBackend:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.base = Path(settings.LOCAL_SANDBOX_ROOT)
        self.root = self.base / cluster.name
        self.control_root = self.base / ".portal" / cluster.name

    def sandbox(self, key: str) -> Path:
        return self.root / key

    def inventory(self) -> GpuInventory:
        return local_inventory()

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[Path]:
        """Hold the instance's lock; yields the lock file, whose text is the tombstone."""
        self.control_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.control_root / f"{key}.lock"
        with open(path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path

    def _deleted(self, lock: Path) -> bool:
        return lock.read_text() == DELETED

    def _record_path(self, key: str) -> Path:
        # In the root-only control folder: a tenant cannot forge what adoption reads.
        return self.control_root / f"{key}.record.json"

    def ensure_instance(self, spec: InstanceSpec) -> InstanceState:
        with self._locked(spec.key) as lock:
            if self._deleted(lock):
                raise BackendError("This instance was deleted.")
            tenant = ensure_tenant(spec.workspace, self.sandbox(spec.key))
            inventory = self.inventory()
            indices = allocate_slots(
                cluster=self.cluster, holder=spec.key, count=spec.gpus, total=inventory.total
            )
            protect_portal_files()
            for folder in (self.base, self.root):
                traversable(folder)
            sandbox = self.sandbox(spec.key)
            sandbox.mkdir(exist_ok=True, mode=0o700)
            own(sandbox, tenant, 0o700)
            visible = ",".join(str(i) for i in indices)
            # Processes started for this instance (notebooks) read the GPUs they may use here.
            _write_into(sandbox, "instance.json", tenant, json.dumps({
                "key": spec.key, "name": spec.name, "owner": spec.owner,
                "gpu_indices": indices, "gpu_simulated": inventory.simulated,
                "env": {"CUDA_VISIBLE_DEVICES": visible},
            }, indent=2))
            self._record_path(spec.key).write_text(spec.record())
        listed = ", ".join(str(i) for i in indices)
        what = "simulated GPU" if inventory.simulated else inventory.model
        plural = "s" if len(indices) != 1 else ""
        slots = f"{what}{plural} {listed}" if indices else "no GPU"
        runs_as = f"; runs as {tenant.name}" if tenant else "; single-user mode"
        return InstanceState(
            phase="running",
            message=f"Running with {slots} on {self.cluster}.",
            detail=f"sandbox {sandbox}; CUDA_VISIBLE_DEVICES={visible}{runs_as}",
            gpu_indices=tuple(indices),
            gpu_simulated=inventory.simulated,
        )

    def instance_state(self, spec: InstanceSpec) -> InstanceState:
        # A local instance is running once ensured; ensuring again costs no request.
        return self.ensure_instance(spec)

    def check_connection(self) -> str:
        inventory = self.inventory()
        kind = "simulated GPU slots" if inventory.simulated else f"× {inventory.model}"
        return f"Local machine: {inventory.total} {kind}. {mode_line()} {limits.mode_line()}"

    def delete_instance(self, key: str, spec: InstanceSpec | None = None) -> InstanceState:
        with self._locked(key) as lock:
            # Never again: a late worker step must not bring the sandbox or a server back.
            lock.write_text(DELETED)
            # Its notebooks go first: nothing may keep running from a sandbox being removed.
            self._stop_servers(key)
            limits.release(self._shell_limits(key))
            shutil.rmtree(self.sandbox(key), ignore_errors=True)
            shutil.rmtree(self.control_root / key, ignore_errors=True)
            self._record_path(key).unlink(missing_ok=True)
        release_slots(cluster=self.cluster, holder=key)
        return InstanceState(phase="gone", message="Resources released.")

    def workload_kubeconfig(self, spec: InstanceSpec) -> str:
        return ""  # a sandbox has no Kubernetes API

    def gpu_utilisation(self, spec: InstanceSpec, gpu_indices: tuple[int, ...]) -> float | None:
        return utilisation(gpu_indices)

    def stop_instance(self, spec: InstanceSpec) -> None:
        # What a failed instance gives back is what a stopped one does: its servers and its
        # GPU slots; the sandbox (with every notebook's home) stays.
        self.release_instance(spec.key)

    def release_instance(self, key: str) -> None:
        with self._locked(key):
            self._stop_servers(key)
        release_slots(cluster=self.cluster, holder=key)

    def _stop_servers(self, key: str) -> None:
        control = self.control_root / key
        for folder in control.glob("*"):
            jupyter.stop(folder, self._server_id(key, folder.name))
        for pid in jupyter.running_servers(str(self.sandbox(key))).values():
            jupyter.stop_pid(pid)

    def instance_record(self, key: str) -> InstanceSpec | None:
        try:
            return InstanceSpec.from_record(self._record_path(key).read_text())
        except OSError:
            return None

    def quarantine_instance(self, key: str) -> str:
        self.release_instance(key)
        return ("Its servers were stopped and its GPU slots released; its sandbox "
                f"{self.sandbox(key)} is kept.")

    def release_quarantine(self, key: str) -> None:
        return None  # nothing marks a sandbox: its row is the quarantine

    def list_instance_keys(self) -> set[str]:
        keys = set(
            GpuAllocation.objects.filter(cluster=self.cluster).values_list("holder", flat=True)
        )
        if self.root.is_dir():
            keys.update(p.name for p in self.root.iterdir() if p.is_dir())
        return keys

    def reconcile_instances(self, specs: list[InstanceSpec]) -> dict[str, InstanceState]:
        # Ensuring is cheap here (no API calls), so observing and restoring are one step.
        states = {}
        for spec in specs:
            try:
                states[spec.key] = self.ensure_instance(spec)
            except BackendError as exc:
                states[spec.key] = InstanceState("failed", exc.message, detail=exc.detail)
        return states

    def terminal(self, spec: InstanceSpec, gpu_indices: tuple[int, ...]) -> Terminal:
        """A login shell in the sandbox, as the workspace's own OS user: what its notebooks'
        terminals get (the sandbox as HOME, its GPUs, a minimal PATH), nothing of the
        portal's. Only where each workspace has its own OS user: a shell as the portal's
        user would reach the portal's database and secrets."""
        if not isolated():
            raise BackendError(
                "Shells on local sandboxes need the portal to run as root, so that each "
                "workspace has its own OS user; this portal runs in single-user mode.")
        with self._locked(spec.key) as lock:
            sandbox = self.sandbox(spec.key)
            if self._deleted(lock) or not sandbox.is_dir():
                raise BackendError("This instance's sandbox is gone.")
            tenant = ensure_tenant(spec.workspace, sandbox)
        work = sandbox / "work"
        env = {
            "HOME": str(sandbox),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpu_indices),
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            "USER": tenant.name,
            "LOGNAME": tenant.name,
        }
        argv, uid, gid = ["/bin/bash", "--login"], tenant.uid, tenant.gid
        if limits.enforced():  # the instance's size, for all its shells together
            argv = limits.confine(argv, name=self._shell_limits(spec.key), uid=uid, gid=gid,
                                  path=env["PATH"], limits=limits.for_resources(
                                      cpu=spec.cpu, memory_gib=spec.memory_gib,
                                      gpus=gpu_indices))
            uid = gid = None  # it becomes the tenant inside its cgroups
        return Terminal(argv=tuple(argv), cwd=str(work if work.is_dir() else sandbox), env=env,
                        uid=uid, gid=gid)

    def _shell_limits(self, key: str) -> str:
        """The cgroups the instance's shells share: unique per sandbox root and instance."""
        return "sh-" + hashlib.sha256(str(self.sandbox(key)).encode()).hexdigest()[:20]

    # -- notebooks: a JupyterLab process per notebook, working in the instance's sandbox

    def _server_id(self, instance_key: str, notebook_key: str) -> str:
        """The marker on the server's command line: unique per sandbox root and notebook."""
        return f"{self.sandbox(instance_key)}/{notebook_key}"

    def _control(self, spec: Workload) -> Path:
        return self.control_root / spec.instance.key / spec.key

    def ensure_notebook(self, spec: Workload) -> NotebookState:
        """Start a notebook's JupyterLab, or a catalogue service's process (ServiceSpec)."""
        service = isinstance(spec, ServiceSpec)
        name = f"svc-{spec.profile}" if service else spec.profile
        problem = environments.problem(name, spec.packages, spec.requires, jupyter=not service)
        if problem:
            raise BackendError(f"{spec.profile or 'This profile'} is unavailable on this "
                               f"machine: {problem}")
        env = environments.environment(name, spec.packages, jupyter=not service)
        if not env.ready():
            if environments.start_build(env):
                count = len(env.packages)
                return NotebookState(
                    "deploying", "preparing",
                    f"Preparing environment (first time: installing {count} "
                    f"package{'s' if count != 1 else ''}).")
            if not env.ready():
                raise BackendError(f"The {spec.profile} environment could not be built here.",
                                   detail=env.failure())
        with self._locked(spec.instance.key) as lock:
            sandbox = self.sandbox(spec.instance.key)
            # Starting a server (or recreating a sandbox) for a deleted instance would leave
            # a process nobody owns.
            if self._deleted(lock) or not sandbox.is_dir():
                raise BackendError("Its instance is being deleted; nothing was started.")
            tenant = ensure_tenant(spec.instance.workspace, sandbox)
            start = services.start if service else jupyter.start
            return start(
                spec, control=self._control(spec), home=sandbox, env=env, tenant=tenant,
                server_id=self._server_id(spec.instance.key, spec.key))

    def service_socket(self, *, instance_key: str, key: str) -> Path:
        """Where a service's relay listens: in the portal's control folder, root's alone."""
        return services.socket_path(self.control_root / instance_key / key)

    def notebook_state(self, spec: Workload) -> NotebookState:
        state = services.state if isinstance(spec, ServiceSpec) else jupyter.state
        return state(spec, self._control(spec), self._server_id(spec.instance.key, spec.key))

    def jupyter_api(self, spec: NotebookSpec, path: str) -> Any:
        port = jupyter.read_runtime(self._control(spec)).get("port")
        if not port:
            raise BackendError("The notebook's server is not there.")
        try:
            return jupyter.api(port, spec.token, path)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise BackendError("The notebook did not answer.", detail=str(exc)) from exc

    def release_notebook(self, spec: Workload) -> None:
        # Its files stay in the sandbox.
        jupyter.stop(self._control(spec), self._server_id(spec.instance.key, spec.key))

    def delete_notebook(self, spec: Workload) -> NotebookState:
        control = self._control(spec)
        jupyter.stop(control, self._server_id(spec.instance.key, spec.key))
        shutil.rmtree(control, ignore_errors=True)
        return NotebookState("gone", "", "Stopped and removed.")

    def reconcile_notebooks(self, specs: list[Workload]) -> dict[str, NotebookState]:
        # A server that died is started again; its files live on in the sandbox.
        states = {}
        for spec in specs:
            current = self.notebook_state(spec)
            states[spec.key] = (
                current if current.phase in ("running", "deploying")
                else self.ensure_notebook(spec)
            )
        return states

    def stop_orphan_notebooks(self, live_keys: Callable[[], set[str]]) -> int:
        # Servers are listed before the notebooks are read: a server just started already
        # has its row, so it is never taken for an orphan.
        servers = jupyter.running_servers(str(self.root))
        live = live_keys()
        stopped = 0
        for server_id, pid in servers.items():
            if server_id.rsplit("/", 1)[-1] not in live:
                jupyter.stop_pid(pid)
                stopped += 1
        return stopped


def stop_all_servers() -> int:
    """Stop every JupyterLab server under this portal's sandbox root (`make run`'s Ctrl-C);
    the notebooks' reconcile starts them again on the next start."""
    servers = jupyter.running_servers(str(settings.LOCAL_SANDBOX_ROOT))
    for pid in servers.values():
        jupyter.stop_pid(pid)
    return len(servers)


def _write_into(folder: Path, name: str, tenant: Tenant | None, text: str) -> None:
    """Write a file into a tenant's folder as root without following anything the tenant
    planted there: a fresh file, then renamed over whatever had the name."""
    scratch = folder / f".{name}.{secrets.token_hex(4)}"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        if tenant is not None:
            os.fchown(f.fileno(), tenant.uid, tenant.gid)
    os.replace(scratch, folder / name)
