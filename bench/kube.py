"""Kubernetes API requests the portal spends, counted at the kit's proxy in front of the API.

Against a real kube-apiserver (envtest control plane, with the portal's documented RBAC) when
$KUBEBUILDER_ASSETS names its binaries, else against the API emulator; the first line says
which. Measures, through the real backend and client over HTTP:

- provision: requests to bring up one namespace instance;
- delete: requests of the call that asks for deletion plus the call that sees it gone (the
  polls in between cost as much as the last one; how many there are follows the teardown
  task's countdown);
- reconcile at 10 and 1,000 running instances: one pass of what a reconcile asks of a cluster;
- notebook: requests until one notebook on a namespace instance runs;
- stuck_requests_per_min: one vcluster instance whose control plane never starts, driven by a
  real Celery worker and beat (PostgreSQL and Redis), counted over a 60-second window. Time is
  compressed through settings: the reconcile interval (30 s in production) is 10 s and an
  instance counts as stuck after 20 s (60 s), so the window sees what three minutes of
  production would: reconcile passes and their re-drives included. A first window with
  nothing stuck measures what the reconcile passes cost anyway (a constant number of lists
  per pass, whatever the number of instances); the figure is what the stuck instance adds
  to that, per minute of the compressed time, so an upper bound for production.

    python bench/kube.py       # KUBEBUILDER_ASSETS=... python bench/kube.py for the real one

The database named in DATABASE_URL (default gpupaas_bench_kube) is dropped and created again.
"""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gpupaas_bench_kube")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")
RECONCILE_INTERVAL_S, STUCK_AFTER_S, WINDOW_S = 10, 20, 60
os.environ["RECONCILE_INTERVAL_S"] = str(RECONCILE_INTERVAL_S)
os.environ["RECONCILE_STUCK_AFTER_S"] = str(STUCK_AFTER_S)

import django  # noqa: E402
import yaml  # noqa: E402

from bench.pages import recreate_database  # noqa: E402

recreate_database()
django.setup()

from django.core.management import call_command  # noqa: E402

from clusters.backends import InstanceSpec, NotebookSpec  # noqa: E402
from clusters.backends.kubernetes import KubernetesBackend  # noqa: E402
from clusters.backends.kubernetes.client import ClientSettings, KubeClient, api_client  # noqa: E402
from clusters.models import Cluster  # noqa: E402
from tests.kit import envtest, kubeemu, targets  # noqa: E402


def spec(i: int, kind: str = "namespace") -> InstanceSpec:
    return InstanceSpec(
        key=f"inst-{i}", name=f"job-{i}", owner=f"user{i % 200}", workspace=str(i % 200),
        kind=kind, gpus=1, gpu_model="", cpu=8, memory_gib=64, storage_gib=100,
    )


@contextlib.contextmanager
def api_server():
    """(target, description): the real server when there is one, else the emulator."""
    binaries = envtest.assets()
    if binaries:
        with envtest.running(binaries) as server:
            target = targets.RealTarget(server)
            version = server.plane.admin_request("GET", "/version")["gitVersion"]
            try:
                yield target, (f"a real kube-apiserver {version} (envtest, portal RBAC from "
                               "docs/kubernetes.md)")
            finally:
                target.close()
        return
    with kubeemu.start(namespace_delete_delay=0.0) as emu:
        emu.add_upstream_kinds()
        target = targets.EmulatorTarget(emu)
        try:
            yield target, f"the API emulator ({envtest.skip_reason()})"
        finally:
            target.close()


def main() -> None:
    with api_server() as (target, what):
        print(f"kube bench against {what}", flush=True)
        (ROOT / "var").mkdir(exist_ok=True)
        config = target.kubeconfig(ROOT / "var" / "bench-kubeconfig")
        kubeconfig = yaml.safe_load(config.read_text())
        # Counting, not pacing: the per-cluster rate limit is lifted for the benchmark.
        kube = KubeClient(api_client(kubeconfig), ClientSettings(cluster="bench", qps=1e6,
                                                                burst=10**6))
        target.add_hook(kubeemu.admit_ingresses)  # plays the ingress controller
        target.add_hook(kubeemu.serve_endpoints)  # and the EndpointSlice controller
        backend = KubernetesBackend(Cluster(name="bench", display_name="Bench",
                                            backend="kubernetes",
                                            ingress_domain="apps.example.com"), kube)
        requests = target.requests
        samples = 3 if target.real else 10

        def counted(action) -> int:
            requests.reset()
            action()
            return requests.total

        sample = [spec(i) for i in range(samples)]
        provision = [counted(lambda s=s: backend.ensure_instance(s)) for s in sample]

        def delete(s: InstanceSpec) -> int:
            first = counted(lambda: backend.delete_instance(s.key, s))
            while True:
                time.sleep(0.2)
                requests.reset()
                if backend.delete_instance(s.key, s).phase == "gone":
                    return first + requests.total

        deletion = [delete(s) for s in sample]

        def deploy_notebook(n: int) -> int:
            host = spec(500 + n)
            backend.ensure_instance(host)
            requests.reset()
            notebook = NotebookSpec(key=f"nb-{n}", name=f"nb{n}", instance=host,
                                    image="quay.io/jupyter/minimal-notebook", cpu=2,
                                    memory_gib=4, gpus=1, token="t",
                                    host_suffix=f"bench{n:05d}")
            state = backend.ensure_notebook(notebook)
            deadline = time.monotonic() + 120
            while state.phase != "running" and time.monotonic() < deadline:
                time.sleep(0.5)  # the task looks again later; the pod starts meanwhile
                state = backend.notebook_state(notebook)
            return requests.total

        notebook = [deploy_notebook(n) for n in range(2 if target.real else 5)]

        running: list[InstanceSpec] = []
        reconcile: dict[int, int] = {}
        started = time.perf_counter()
        for size in (10, 1000):
            for i in range(len(running), size):
                running.append(spec(1000 + i))
                backend.ensure_instance(running[-1])
            reconcile[size] = counted(lambda: (backend.reconcile_instances(running),
                                               backend.list_instance_keys()))
            print(f"reconcile at {size} instances: {reconcile[size]} requests "
                  f"({time.perf_counter() - started:.0f}s so far)", flush=True)

        stuck = stuck_requests_per_minute(target, config)

    print(f"provision: {provision} requests each; delete: {deletion} requests each; "
          f"notebook: {notebook} requests each")
    print(
        f"kube: provision_requests={max(provision)} delete_requests={max(deletion)} "
        f"reconcile_requests_10={reconcile[10]} reconcile_requests_1000={reconcile[1000]} "
        f"notebook_requests={max(notebook)} stuck_requests_per_min={stuck}"
    )


def stuck_requests_per_minute(target, config: Path) -> int:
    """One vcluster instance that never comes up, under a real worker and beat."""
    from django.contrib.auth import get_user_model

    from instances import services
    from instances.models import ComputeProfile, Instance
    from portal.catalogue import seed_groups
    from workspaces.services import ensure_workspace

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", "bench@example.com", "x")
    user.groups.add(seed_groups()["Users"])
    workspace = ensure_workspace(user=user)
    cluster = Cluster(name="bench", display_name="Bench", backend="kubernetes",
                      ingress_domain="apps.example.com")
    cluster.set_kubeconfig(config.read_text())
    cluster.save()
    profile = ComputeProfile.objects.create(
        name="vc", display_name="vc", kind="vcluster", cluster=cluster, gpus=1, cpu=8,
        memory_gib=64, storage_gib=100, published=True)
    target.auto_ready = False  # its control plane never starts
    env = {**os.environ, "PORTAL_ID": "bench-stuck"}
    log = open(ROOT / "var" / "bench-kube-worker.log", "w")  # noqa: SIM115
    common = [sys.executable, "-m", "celery", "-A", "gpupaas"]
    import redis

    from gpupaas.celery import app

    redis.Redis.from_url(app.conf.broker_url).delete(app.conf.task_default_queue)
    procs = [
        subprocess.Popen([*common, "worker", "--pool", "threads", "--concurrency", "4",
                          "--without-gossip", "--without-mingle", "--without-heartbeat",
                          "--loglevel", "INFO"], cwd=ROOT, env=env, stdout=log,
                         stderr=subprocess.STDOUT),
        subprocess.Popen([*common, "beat", "--schedule", str(ROOT / "var" / "bench-beat"),
                          "--loglevel", "INFO"], cwd=ROOT, env=env, stdout=log,
                         stderr=subprocess.STDOUT),
    ]
    try:
        # What the worker and beat cost with nothing stuck: the reconcile passes' lists,
        # one set per pass whatever the number of instances. The stuck instance's own cost
        # is what it adds to that.
        time.sleep(5)  # the worker and beat start
        target.requests.reset()
        time.sleep(WINDOW_S)
        baseline = target.requests.total
        instance = services.launch_instance(workspace=workspace, name="stuck", profile=profile,
                                            by=user)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            instance.refresh_from_db()
            if instance.status == Instance.Status.PROVISIONING and instance.status_message:
                break
            time.sleep(0.5)
        print(f"stuck instance: {instance.status} - {instance.status_message}", flush=True)
        target.requests.reset()
        time.sleep(WINDOW_S)
        count = target.requests.total
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    print(f"with nothing stuck: {baseline} requests in {WINDOW_S}s (reconcile passes every "
          f"{RECONCILE_INTERVAL_S}s); with one stuck instance: {count}", flush=True)
    return round(max(count - baseline, 0) * 60 / WINDOW_S)


if __name__ == "__main__":
    main()
