"""What the portal's Kubernetes proxy costs: real `kubectl get pods -o json` over 100 pods,
straight to the API and through the portal, and how soon a watching kubectl sees a new pod.

The portal runs as in production (gunicorn with a uvicorn worker, over HTTPS, PostgreSQL),
in front of the Kubernetes API emulator (tests/kit/kubeemu/); a real kube-apiserver is not
used here, so the direct figure is the emulator's. The database named in DATABASE_URL
(default gpupaas_bench_proxy) is dropped and created again.

    python bench/proxy.py
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gpupaas_bench_proxy")
os.environ["CELERY_BROKER_URL"] = "memory://"  # the benchmark provisions in-process
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")

from bench.pages import free_port, recreate_database  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "50"))
PODS = 100
WATCH_EVENTS = 20
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def p50(values: list[float]) -> float:
    return statistics.median(values)


def timed_kubectl(env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run([KUBECTL, "get", "pods", "-o", "json"], env=env,
                             capture_output=True, check=True).stdout
        times.append((time.perf_counter() - start) * 1000)
        assert out.count(b'"kind": "Pod"') == PODS, out[:300]
    return times


def watch_latency(env: dict[str, str], emu, namespace: str) -> list[float]:
    """Create a pod, time until the watching kubectl prints it; WATCH_EVENTS times."""
    seen: dict[str, float] = {}
    watch = subprocess.Popen([KUBECTL, "get", "pods", "--watch", "-o", "name"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        for line in watch.stdout:
            seen[line.strip()] = time.perf_counter()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while len(seen) < PODS:
            assert time.monotonic() < deadline, "the watch never listed the pods"
            time.sleep(0.05)
        time.sleep(0.5)  # the watch itself is open once the list is printed
        latencies = []
        for i in range(WATCH_EVENTS):
            name = f"watched-{i}"
            start = time.perf_counter()
            emu.create(pod(name), namespace=namespace)
            while f"pod/{name}" not in seen:
                assert time.perf_counter() - start < 10, f"{name} never arrived"
                time.sleep(0.0005)
            latencies.append((seen[f"pod/{name}"] - start) * 1000)
        return latencies
    finally:
        watch.terminate()
        watch.wait(10)


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"a": "b"}},
            # Pod Security `restricted`, which instance namespaces enforce.
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "securityContext": {
                "allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
            }}]}}


def main() -> None:
    recreate_database()
    import django

    django.setup()
    import yaml
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from access import services as access
    from clusters.models import Cluster
    from instances import services
    from instances.models import ComputeProfile
    from portal.catalogue import seed_groups
    from tests.kit import kubeemu
    from tests.kit.asgi import self_signed
    from workspaces.services import ensure_workspace

    call_command("migrate", verbosity=0)
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    with kubeemu.start() as emu:
        cluster = Cluster(name="emu", display_name="Emulator", backend="kubernetes")
        cluster.set_kubeconfig(emu.kubeconfig(work / "cluster.yaml").read_text())
        cluster.save()
        profile = ComputeProfile.objects.create(
            name="ns", display_name="Namespace", kind="namespace", cluster=cluster, gpus=0,
            cpu=8, memory_gib=64, storage_gib=100, published=True,
        )
        alice = get_user_model().objects.create_user("alice", "alice@example.com", "x")
        alice.groups.add(seed_groups()["Users"])
        instance = services.launch_instance(workspace=ensure_workspace(user=alice),
                                            name="bench", profile=profile, by=alice)
        instance = services.provision_instance(instance_id=instance.pk)
        assert instance.status == "running", instance.status_message
        namespace = f"alice-bench-{instance.pk}"
        for i in range(PODS):
            emu.create(pod(f"pod-{i:03d}"), namespace=namespace)
        _, token = access.issue_access_token(user=alice, instance=instance)

        cert, key = self_signed(work)
        port = free_port()
        portal_config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "portal",
            "clusters": [{"name": "portal", "cluster": {
                "server": f"https://127.0.0.1:{port}/k8s/{instance.pk}/",
                "certificate-authority": str(cert)}}],
            "users": [{"name": "alice", "user": {"token": token}}],
            "contexts": [{"name": "portal", "context": {
                "cluster": "portal", "user": "alice", "namespace": namespace}}],
        }
        (work / "portal.yaml").write_text(yaml.safe_dump(portal_config))
        emu.kubeconfig(work / "direct.yaml", namespace=namespace)
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "gpupaas.asgi:application",
             "--worker-class", "uvicorn_worker.UvicornWorker", "--workers", "1",
             "--bind", f"127.0.0.1:{port}", "--certfile", str(cert), "--keyfile", str(key),
             "--log-level", "warning"],
            cwd=ROOT, env={**os.environ, "PORTAL_ID": settings.PORTAL_ID},
        )
        try:
            base = {"PATH": os.environ["PATH"]}
            direct = {**base, "HOME": str(work / "home-direct"),
                      "KUBECONFIG": str(work / "direct.yaml")}
            proxied = {**base, "HOME": str(work / "home-portal"),
                       "KUBECONFIG": str(work / "portal.yaml")}
            deadline = time.monotonic() + 60
            while subprocess.run([KUBECTL, "get", "ns", namespace], env=proxied,
                                 capture_output=True).returncode != 0:
                assert time.monotonic() < deadline and server.poll() is None, "no portal"
                time.sleep(0.3)
            timed_kubectl(direct, 3)  # warm discovery caches and connections
            timed_kubectl(proxied, 3)
            direct_ms, proxied_ms = [], []
            for _ in range(RUNS):  # interleaved, so load on the machine hits both alike
                direct_ms += timed_kubectl(direct, 1)
                proxied_ms += timed_kubectl(proxied, 1)
            watch_ms = watch_latency(proxied, emu, namespace)
        finally:
            server.terminate()
            server.wait(15)
            shutil.rmtree(work, ignore_errors=True)
    print(f"against: API emulator (tests/kit/kubeemu/); {RUNS} runs each, {PODS} pods")
    print(f"direct p50/p90 ms: {p50(direct_ms):.1f}/"
          f"{statistics.quantiles(direct_ms, n=10)[-1]:.1f}")
    print(f"proxied p50/p90 ms: {p50(proxied_ms):.1f}/"
          f"{statistics.quantiles(proxied_ms, n=10)[-1]:.1f}")
    print(
        f"proxy: direct_p50_ms={p50(direct_ms):.1f} proxied_p50_ms={p50(proxied_ms):.1f} "
        f"overhead_ratio={p50(proxied_ms) / p50(direct_ms):.2f} "
        f"watch_event_ms={p50(watch_ms):.1f}"
    )


if __name__ == "__main__":
    main()
