"""Kubernetes API requests the portal spends per instance, counted by the API emulator.

Provisions namespace instances through the real backend and client over HTTP, and prints the
requests per provision, per deletion (until the namespace is gone) and per reconcile pass at
10, 100 and 1,000 running instances. No database is needed.

    python bench/kube.py
"""

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")

import django  # noqa: E402

django.setup()

from kubernetes import client as k8s  # noqa: E402

from clusters.backends import InstanceSpec, NotebookSpec  # noqa: E402
from clusters.backends.kubernetes import KubernetesBackend  # noqa: E402
from clusters.backends.kubernetes.client import ClientSettings, KubeClient  # noqa: E402
from clusters.models import Cluster  # noqa: E402
from tests.kit import kubeemu  # noqa: E402


def spec(i: int) -> InstanceSpec:
    return InstanceSpec(
        key=f"inst-{i}", name=f"job-{i}", owner=f"user{i % 200}", workspace=str(i % 200),
        kind="namespace", gpus=1, gpu_model="", cpu=8, memory_gib=64, storage_gib=100,
    )


def main() -> None:
    with kubeemu.start(namespace_delete_delay=0.0) as emu:
        api = k8s.ApiClient(emu.client_configuration(retries=False))
        # Counting, not pacing: the per-cluster rate limit is lifted for the benchmark.
        kube = KubeClient(api, ClientSettings(cluster="bench", qps=1e6, burst=10**6))
        emu.add_hook(kubeemu.admit_ingresses)  # plays the ingress controller
        emu.add_hook(kubeemu.serve_endpoints)  # and the EndpointSlice controller
        backend = KubernetesBackend(Cluster(name="bench", display_name="Bench",
                                            backend="kubernetes",
                                            ingress_domain="apps.example.com"), kube)

        def counted(action) -> int:
            emu.requests.reset()
            action()
            return emu.requests.total

        def reconcile_pass(specs: list[InstanceSpec]) -> int:
            # What services.reconcile_instances asks of a cluster in one pass.
            return counted(lambda: (backend.reconcile_instances(specs),
                                    backend.list_instance_keys()))

        sample = [spec(i) for i in range(10)]
        provision = [counted(lambda s=s: backend.ensure_instance(s)) for s in sample]

        def delete(s: InstanceSpec) -> None:
            while backend.delete_instance(s.key, s).phase != "gone":
                time.sleep(0.01)

        deletion = [counted(lambda s=s: delete(s)) for s in sample]

        def deploy_notebook(n: int) -> int:
            host = spec(500 + n)
            backend.ensure_instance(host)
            emu.requests.reset()
            notebook = NotebookSpec(key=f"nb-{n}", name=f"nb{n}", instance=host,
                                    image="quay.io/jupyter/minimal-notebook", cpu=2,
                                    memory_gib=4, gpus=1, token="t")
            state = backend.ensure_notebook(notebook)
            while state.phase != "running":
                time.sleep(0.1)  # the task looks again later; the emulator's pods start
                state = backend.notebook_state(notebook)
            return emu.requests.total

        notebook = [deploy_notebook(n) for n in range(5)]

        running: list[InstanceSpec] = []
        reconcile: dict[int, int] = {}
        started = time.perf_counter()
        for size in (10, 100, 1000):
            for i in range(len(running), size):
                running.append(spec(1000 + i))
                backend.ensure_instance(running[-1])
            reconcile[size] = reconcile_pass(running)
            print(f"reconcile at {size} instances: {reconcile[size]} requests "
                  f"({time.perf_counter() - started:.0f}s so far)")

    print(f"provision: {provision} requests each; delete: {deletion} requests each; "
          f"notebook: {notebook} requests each")
    print(
        f"kube: provision_requests={max(provision)} delete_requests={max(deletion)} "
        f"reconcile_requests_10={reconcile[10]} reconcile_requests_1000={reconcile[1000]} "
        f"notebook_requests={max(notebook)}"
    )


if __name__ == "__main__":
    main()
