"""The embedded default: an instance is a sandbox directory plus GPU slots on this machine."""

import json
import shutil
from pathlib import Path

from django.conf import settings

from clusters.models import Cluster, GpuAllocation

from ..base import GpuInventory, InstanceSpec, InstanceState, NotebookSpec, NotebookState
from . import jupyter
from .gpus import allocate_slots, local_inventory, release_slots


class LocalBackend:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.root = Path(settings.LOCAL_SANDBOX_ROOT) / cluster.name

    def sandbox(self, key: str) -> Path:
        return self.root / key

    def inventory(self) -> GpuInventory:
        return local_inventory()

    def ensure_instance(self, spec: InstanceSpec) -> InstanceState:
        inventory = self.inventory()
        indices = allocate_slots(
            cluster=self.cluster, holder=spec.key, count=spec.gpus, total=inventory.total
        )
        sandbox = self.sandbox(spec.key)
        sandbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        visible = ",".join(str(i) for i in indices)
        listed = ", ".join(str(i) for i in indices)
        # Processes started for this instance (notebooks) read the GPUs they may use from here.
        (sandbox / "instance.json").write_text(
            json.dumps(
                {
                    "key": spec.key,
                    "name": spec.name,
                    "owner": spec.owner,
                    "gpu_indices": indices,
                    "gpu_simulated": inventory.simulated,
                    "env": {"CUDA_VISIBLE_DEVICES": visible},
                },
                indent=2,
            )
        )
        what = "simulated GPU" if inventory.simulated else inventory.model
        plural = "s" if len(indices) != 1 else ""
        slots = f"{what}{plural} {listed}" if indices else "no GPU"
        return InstanceState(
            phase="running",
            message=f"Running with {slots} on {self.cluster}.",
            detail=f"sandbox {sandbox}; CUDA_VISIBLE_DEVICES={visible}",
            gpu_indices=tuple(indices),
            gpu_simulated=inventory.simulated,
        )

    def check_connection(self) -> str:
        inventory = self.inventory()
        kind = "simulated GPU slots" if inventory.simulated else f"× {inventory.model}"
        return f"Local machine: {inventory.total} {kind}."

    def delete_instance(self, key: str, spec: InstanceSpec | None = None) -> InstanceState:
        # Its notebooks go first: nothing may keep running from a sandbox being removed.
        for folder in (self.sandbox(key) / "notebooks").glob("*"):
            jupyter.stop(folder)
        shutil.rmtree(self.sandbox(key), ignore_errors=True)
        release_slots(cluster=self.cluster, holder=key)
        return InstanceState(phase="gone", message="Resources released.")

    def list_instance_keys(self) -> set[str]:
        keys = set(
            GpuAllocation.objects.filter(cluster=self.cluster).values_list("holder", flat=True)
        )
        if self.root.is_dir():
            keys.update(p.name for p in self.root.iterdir() if p.is_dir())
        return keys

    def reconcile_instances(self, specs: list[InstanceSpec]) -> dict[str, InstanceState]:
        # Ensuring is cheap here (no API calls), so observing and restoring are one step.
        return {spec.key: self.ensure_instance(spec) for spec in specs}

    # -- notebooks: a JupyterLab process per notebook, working in the instance's sandbox

    def _notebook_folder(self, spec: NotebookSpec) -> Path:
        return self.sandbox(spec.instance.key) / "notebooks" / spec.key

    def ensure_notebook(self, spec: NotebookSpec) -> NotebookState:
        return jupyter.start(spec, self._notebook_folder(spec), self.sandbox(spec.instance.key)
                             / "work")

    def notebook_state(self, spec: NotebookSpec) -> NotebookState:
        return jupyter.state(spec, self._notebook_folder(spec))

    def release_notebook(self, spec: NotebookSpec) -> None:
        jupyter.stop(self._notebook_folder(spec))  # its files stay in the sandbox

    def delete_notebook(self, spec: NotebookSpec) -> NotebookState:
        folder = self._notebook_folder(spec)
        jupyter.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return NotebookState("gone", "", "Stopped and removed.")

    def reconcile_notebooks(self, specs: list[NotebookSpec]) -> dict[str, NotebookState]:
        # A server that died is started again; its files live on in the sandbox.
        states = {}
        for spec in specs:
            current = self.notebook_state(spec)
            states[spec.key] = (
                current if current.phase in ("running", "deploying")
                else self.ensure_notebook(spec)
            )
        return states
