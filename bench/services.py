"""How long a local TensorBoard takes from "Deploy" to a 200 through its own origin (signed
in as a user opening it from the portal), beside starting TensorBoard by hand; and what the
portal's app proxy adds to a small request, p50 and p99 over REQUESTS requests.

The portal's path is the real one: the deploy service writes the row, the worker's steps
prepare the environment (built once, timed apart as `environment_first_s`) and start the
relay and TensorBoard in a network of their own, the portal's ASGI application (uvicorn)
answers on s<id>-<suffix>.localhost. Uses a throwaway SQLite database; the OS users it
creates are removed at the end.

    python bench/services.py
"""

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="bench-services-"))
WORK.chmod(0o711)
os.environ.pop("DATABASE_URL", None)
os.environ.pop("CACHE_URL", None)
os.environ.update(DJANGO_SETTINGS_MODULE="gpupaas.settings", VAR_DIR=str(WORK / "var"),
                  LOCAL_USE_NVML="false", LOCAL_USER_PREFIX=f"gps{os.getpid()}-",
                  ALLOWED_HOSTS="testserver,127.0.0.1,localhost")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "300"))


def until_ok(get, started: float, limit: float = 180) -> float:
    while True:
        try:
            if get().status_code == 200:
                return time.perf_counter() - started
        except Exception:  # not listening yet
            pass
        if time.perf_counter() - started > limit:
            raise RuntimeError(f"no 200 after {limit} s")
        time.sleep(0.02)


def bare_tensorboard(env_bin: Path, run: int) -> float:
    import httpx

    from clusters.backends.local.jupyter import free_port

    port, logdir = free_port(), WORK / f"bare-{run}"
    logdir.mkdir()
    started = time.perf_counter()
    process = subprocess.Popen([str(env_bin / "tensorboard"), "--logdir", str(logdir),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return until_ok(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2), started)
    finally:
        process.terminate()
        process.wait(15)


def serve_portal() -> str:
    import uvicorn

    from clusters.backends.local.jupyter import free_port
    from gpupaas.asgi import application

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port,
                                           lifespan="off", log_level="warning",
                                           access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    import django

    django.setup()
    import httpx
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from clusters.backends import get_backend
    from clusters.backends.local import environments, tenants
    from instances import services as instance_services
    from instances.models import ComputeProfile
    from notebooks import services
    from notebooks.models import Service, ServiceProfile
    from portal.catalogue import seed_catalogue, seed_groups
    from workspaces.services import ensure_workspace

    call_command("migrate", verbosity=0)
    seed_catalogue()
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    user.groups.add(seed_groups()["Users"])
    workspace = ensure_workspace(user=user)
    instance = instance_services.launch_instance(
        workspace=workspace, name="host", profile=ComputeProfile.objects.get(gpus=1), by=user)
    instance = instance_services.provision_instance(instance_id=instance.pk)
    profile = ServiceProfile.objects.get(name="tensorboard")
    env = environments.environment(f"svc-{profile.name}", profile.packages, jupyter=False)
    environment_first = environments.build_now(env)
    portal = serve_portal()
    browser = Client()
    browser.force_login(user)

    ready, bare = [], []
    for run in range(RUNS):
        bare.append(bare_tensorboard(env.bin, run))
        started = time.perf_counter()
        service = services.deploy_service(instance=instance, name=f"tb-{run}",
                                          profile=profile, by=user)
        while service.status != Service.Status.RUNNING:  # the worker's steps
            service = services.advance_service(service_id=service.pk)
            if service.status == Service.Status.FAILED:
                raise RuntimeError(service.status_message + service.status_detail)
            time.sleep(0.02)
        target = urlsplit(browser.get(f"/services/{service.pk}/open/")["Location"])
        host = {"Host": f"{target.hostname}:{urlsplit(portal).port}"}
        http = httpx.Client(base_url=portal, headers=host, timeout=10)
        http.get(f"{target.path}?{target.query}")
        ready.append(until_ok(lambda http=http: http.get("/"), started))
        print(f"run {run + 1}: portal {ready[-1]:.2f}s, bare tensorboard {bare[-1]:.2f}s")
        if run == RUNS - 1:
            socket = get_backend(instance.cluster).service_socket(
                instance_key=instance.key, key=service.key)
            direct = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)),
                                  base_url="http://localhost", timeout=10)
            through, straight = [], []
            for _ in range(REQUESTS):
                t = time.perf_counter()
                assert http.get("/data/environment").status_code == 200
                through.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                assert direct.get("/data/environment").status_code == 200
                straight.append((time.perf_counter() - t) * 1000)
            print(f"small request, {REQUESTS} times: through the portal p50 "
                  f"{percentile(through, .5):.1f} ms p99 {percentile(through, .99):.1f} ms; "
                  f"straight to its socket p50 {percentile(straight, .5):.1f} ms")
        services.delete_service(service=service, by=user)
        services.teardown_service(service_id=service.pk)

    instance_services.delete_instance(instance=instance, by=user)
    instance_services.teardown_instance(instance_id=instance.pk)
    for name in tenants.portal_users():
        subprocess.run(["userdel", name], check=False)
    local, plain = statistics.median(ready), statistics.median(bare)
    print(f"environment_first_s={environment_first:.1f}")
    print(f"services: local_ready_s={local:.2f} bare_s={plain:.2f} overhead_s={local - plain:.2f} "
          f"proxy_p50_ms={percentile(through, .5):.1f} proxy_p99_ms={percentile(through, .99):.1f}")


if __name__ == "__main__":
    main()
