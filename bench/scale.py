"""Scale, on the Kubernetes API emulator and PostgreSQL, as Coder's scale tests do.

1,000 users in 200 workspaces (each workspace's owner, and four collaborators on its first
instance), 10,000 existing namespace instances running on one emulated cluster, then:

- reconcile: one full pass (`manage.py reconcile`'s two calls) at 10 and at 10,000 running
  instances: its wall time, and the requests it sends to the API (counted at the kit's
  proxy in front of the emulator);
- burst: 200 launches (`POST /api/v1/instances`, each client with its own personal token)
  from 50 concurrent clients in 50 workspaces, four each, one after another, against the
  portal served as the image serves it (gunicorn with uvicorn workers), provisioned by two
  Celery workers of the production configuration (`celery -A gpupaas worker --concurrency
  4`, as deploy/kubernetes/base/worker.yaml runs them). `accept_per_s` is the POSTs
  answered 201 over the burst's wall time; `running_per_min` is the 200 over the time from
  the first launch to the last Running, per minute; `launch_to_running_p99_s` is from each
  instance's creation to its Running (both database timestamps, one clock);
- browse: 50 signed-in users at once on the landing page and the instance list while the
  burst runs, and the same users on a trivial signed-in view (/ping/) interleaved; the
  p99 of the pages over the p99 of the trivial view, in the same run.

    python bench/scale.py

The database named in DATABASE_URL (default gpupaas_bench_scale) is dropped and created
again; the broker is CELERY_BROKER_URL (default redis://127.0.0.1:6379/15), its queue emptied
after.
The load runs in a process of its own, the emulator in this one. Last line:

    scale: accept_per_s=<a> running_per_min=<b> launch_to_running_p99_s=<c>
           browse_p99_ratio=<d> reconcile_s_10000=<e> reconcile_requests_10000=<f>
"""

import http.client
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gpupaas_bench_scale")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")

USERS, WORKSPACES = 1_000, 200
EXISTING = int(os.environ.get("BENCH_EXISTING", "10000"))
# BENCH_PROFILE=1: print where the big reconcile pass spends its time, and stop there.
PROFILE = os.environ.get("BENCH_PROFILE") == "1"
CLIENTS, LAUNCHES_EACH, BROWSERS = 50, 4, 50
HOST = "127.0.0.1"

from bench.launch import cpu_seconds, percentile, wait_up  # noqa: E402
from bench.pages import free_port, recreate_database  # noqa: E402


def request(conn: http.client.HTTPConnection, method: str, path: str, headers: dict,
            body: bytes | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    conn.request(method, path, body=body, headers={"Host": HOST, **headers})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - start


def burst(port: int, tokens: list[str], profile: str, out: multiprocessing.Queue) -> None:
    """50 clients, each launching four instances one after another, all released at once."""
    answers: list[tuple[int, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(tokens) + 1)

    def client(n: int, token: str) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        barrier.wait()
        for i in range(LAUNCHES_EACH):
            body = json.dumps({"name": f"burst-{n:02d}-{i}", "profile": profile}).encode()
            try:
                status, seconds = request(conn, "POST", "/api/v1/instances", headers, body)
            except (OSError, http.client.HTTPException):
                status, seconds = 599, 0.0
                conn = http.client.HTTPConnection(HOST, port, timeout=120)
            with lock:
                answers.append((status, seconds))

    threads = [threading.Thread(target=client, args=(n, t)) for n, t in enumerate(tokens)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    out.put(("burst", answers, time.perf_counter() - started))


def browse(port: int, cookies: list[str], stop: multiprocessing.Event,
           out: multiprocessing.Queue) -> None:
    """50 users, each going landing page, instance list, trivial view, round and round."""
    pages: list[float] = []
    trivial: list[float] = []
    failed: list[int] = []
    lock = threading.Lock()

    def user(cookie: str) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        while not stop.is_set():
            for path in ("/", "/instances/", "/ping/"):
                try:
                    status, seconds = request(conn, "GET", path, {"Cookie": cookie})
                except (OSError, http.client.HTTPException):
                    status, seconds = 599, 0.0
                    conn = http.client.HTTPConnection(HOST, port, timeout=120)
                with lock:
                    if status != 200:
                        failed.append(status)
                    (trivial if path == "/ping/" else pages).append(seconds)

    threads = [threading.Thread(target=user, args=(c,)) for c in cookies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(("browse", pages, trivial, failed))


def api_server(conn, kubeconfig: Path) -> None:
    """The emulator and its counting proxy, in a process of their own as an API server is:
    what this process's pass costs is then the portal's work and the API's answers, not the
    two sharing one interpreter. Seeded straight into its store (as the backend would have
    applied the objects), over a pipe."""
    from tests.kit import targets

    with targets.emulated() as target:
        target.kubeconfig(kubeconfig)
        conn.send("up")
        while True:
            command, argument = conn.recv()
            if command == "create":
                for manifest in argument:
                    target.emulator.create(manifest)
                conn.send(len(argument))
            elif command == "reset":
                target.requests.reset()
                conn.send(0)
            elif command == "count":
                conn.send(target.requests.total)
            else:
                conn.send(0)
                return


def main() -> None:
    recreate_database()
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, connections
    from django.test import Client
    from django.utils import timezone

    from api.services import create_api_token
    from clusters.backends import get_backend
    from clusters.models import Cluster
    from instances.models import Collaborator, ComputeProfile, Instance
    from instances.services import _with_relations, instance_spec, reconcile_instances
    from notebooks.services import reconcile_notebooks
    from portal.catalogue import seed_catalogue, seed_groups
    from workspaces.models import Workspace

    call_command("migrate", verbosity=0)
    seed_catalogue()
    users_group = seed_groups()["Users"]
    User = get_user_model()
    cores = len(os.sched_getaffinity(0))
    print(f"scale bench: {cores} cores, load {os.getloadavg()[0]:.1f} at the start", flush=True)

    (ROOT / "var").mkdir(exist_ok=True)
    config = ROOT / "var" / "bench-scale-kubeconfig"
    connections.close_all()
    context = multiprocessing.get_context("fork")
    emulator, pipe = context.Pipe()
    api = context.Process(target=api_server, args=(pipe, config), daemon=True)
    api.start()
    assert emulator.recv() == "up"

    def ask(command: str, argument=None):
        emulator.send((command, argument))
        return emulator.recv()

    try:
        cluster = Cluster(name="scale", display_name="Scale cluster", backend="kubernetes")
        cluster.set_kubeconfig(config.read_text())
        cluster.save()
        profile = ComputeProfile.objects.create(
            name="ns-1", display_name="Namespace, 1 GPU", kind="namespace", cluster=cluster,
            gpus=1, cpu=4, memory_gib=16, storage_gib=20, published=True)
        backend = get_backend(cluster)

        owners = [User(username=f"owner{w:03d}", email=f"owner{w:03d}@example.com")
                  for w in range(WORKSPACES)]
        others = [User(username=f"user{u:03d}", email=f"user{u:03d}@example.com")
                  for u in range(USERS - WORKSPACES)]
        for user in owners + others:
            user.set_unusable_password()
        User.objects.bulk_create(owners + others, batch_size=1000)
        users = list(User.objects.filter(username__startswith=("owner")).order_by("username"))
        users_group.user_set.add(*User.objects.all())
        workspaces = Workspace.objects.bulk_create(
            Workspace(owner=u, max_gpus=1000, max_instances=1000) for u in users)

        def seed(first: int, last: int) -> None:
            """Instances first..last-1 as running rows and as their objects on the cluster
            (made straight in the emulator's store, as the backend would have applied them)."""
            rows = [Instance(
                workspace=workspaces[i % WORKSPACES], name=f"job-{i}", profile=profile,
                launched_by=workspaces[i % WORKSPACES].owner, cluster=cluster,
                kind="namespace", gpus=1, cpu=4, memory_gib=16, storage_gib=20,
                status="running", status_message="Ready.") for i in range(first, last)]
            Instance.objects.bulk_create(rows, batch_size=2000)
            made = _with_relations().filter(name__in=[r.name for r in rows])
            batch: list[dict] = []
            for instance in made.iterator(chunk_size=2000):
                batch += backend._instance_objects(instance_spec(instance))
                if len(batch) > 3000:
                    ask("create", batch)
                    batch = []
            ask("create", batch)

        def one_pass() -> tuple[float, int]:
            ask("reset")
            started, cpu, api_cpu = time.perf_counter(), time.process_time(), cpu_seconds(api.pid)
            instances = reconcile_instances()
            reconcile_notebooks()
            seconds = time.perf_counter() - started
            assert instances.errors == 0 and instances.quarantined == 0, vars(instances)
            print(f"  (CPU: the portal's process {time.process_time() - cpu:.2f} s, the API "
                  f"server's {cpu_seconds(api.pid) - api_cpu:.2f} s)", flush=True)
            return seconds, ask("count")

        seed(0, 10)
        one_pass()  # the client's first connection and discovery, not a pass's cost
        small_s, small_requests = one_pass()
        print(f"reconcile at 10: {small_s:.2f} s, {small_requests} requests", flush=True)
        started = time.perf_counter()
        seed(10, EXISTING)
        print(f"seeded {EXISTING} instances in {time.perf_counter() - started:.0f} s", flush=True)
        now = timezone.now()
        for w, workspace in enumerate(workspaces):  # the other 800 users share one each
            mine = workspace.instances.order_by("pk").first()
            Collaborator.objects.bulk_create(
                Collaborator(instance=mine, email=u.email, user=u, status="accepted",
                             invited_by=workspace.owner, expires_at=now, accepted_at=now)
                for u in others[4 * w:4 * w + 4])
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        if PROFILE:
            import cProfile
            import pstats

            with cProfile.Profile() as profiler:
                one_pass()
            stats = pstats.Stats(profiler).sort_stats("cumulative")
            stats.print_stats(40)
            stats.print_callers("json.*loads|asdict|namespace_objects")
            return
        big_s, big_requests = one_pass()
        print(f"reconcile at {EXISTING}: {big_s:.2f} s, {big_requests} requests", flush=True)

        tokens = [create_api_token(user=w.owner, name="scale", days=1, scope="write")[1]
                  for w in workspaces[:CLIENTS]]
        cookies = []
        for workspace in workspaces[CLIENTS:CLIENTS + BROWSERS]:
            client = Client()
            client.force_login(workspace.owner)
            cookies.append(f"sessionid={client.cookies['sessionid'].value}")

        port = free_port()
        log = open(ROOT / "var" / "bench-scale.log", "w")  # noqa: SIM115
        env = {**os.environ, "DEBUG": "false", "ALLOWED_HOSTS": HOST, "LOG_LEVEL": "WARNING",
               "GUNICORN_BIND": f"{HOST}:{port}", "API_RATE_LIMIT": "1000000/m",
               "API_USER_RATE_LIMIT": "1000000/m", "RECONCILE_INTERVAL_S": "3600"}
        processes = [subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:gpupaas.gunicorn",
             "gpupaas.asgi:application"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT)]
        processes += [subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "gpupaas", "worker", "--loglevel",
             "WARNING", "--concurrency", "4", "-n", f"scale{n}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) for n in (1, 2)]
        try:
            wait_up(port)
            time.sleep(5)  # the workers' own start, not the burst's
            connections.close_all()
            out, stop = context.Queue(), context.Event()
            browsing = context.Process(target=browse, args=(port, cookies, stop, out))
            launching = context.Process(target=burst, args=(port, tokens, profile.name, out))
            browsing.start()
            time.sleep(2)  # browsing under way before the burst
            launching.start()
            results = {}
            name, answers, burst_s = out.get(timeout=600)
            results[name] = (answers, burst_s)
            deadline = time.monotonic() + 600
            launched = Instance.objects.filter(name__startswith="burst-")
            while (launched.filter(status="running").count() < launched.count()
                   and launched.filter(status="failed").count() == 0
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            stop.set()
            _, pages, trivial, failed = out.get(timeout=120)
            browsing.join(30)
            launching.join(30)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(60)
            log.close()
            import redis

            redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    finally:
        ask("stop")
        api.join(30)

    accepted = sum(1 for status, _ in answers if status == 201)
    refused = sorted({status for status, _ in answers if status != 201})
    rows = list(launched.values_list("status", "created_at", "status_changed_at"))
    running = [(created, changed) for status, created, changed in rows if status == "running"]
    if len(running) < 2:
        sys.exit(f"only {len(running)} of {len(rows)} launched instances reached Running: "
                 "see var/bench-scale.log")
    waits = [(changed - created).total_seconds() for created, changed in running]
    span = (max(c for _, c in running) - min(c for c, _ in running)).total_seconds()
    print(f"burst: {accepted} of {len(answers)} accepted (other answers {refused}) in "
          f"{burst_s:.1f} s; POST p50 {percentile([s for _, s in answers], 50) * 1000:.0f} ms; "
          f"{len(running)} Running, {len(rows) - len(running)} not, the last "
          f"{span:.1f} s after the first launch; launch to Running p50 "
          f"{percentile(waits, 50):.1f} s")
    pages_p99, trivial_p99 = percentile(pages, 99), percentile(trivial, 99)
    print(f"browse: {len(pages)} page and {len(trivial)} trivial requests, "
          f"{len(failed)} not 200; pages p50 {percentile(pages, 50) * 1000:.0f} ms p99 "
          f"{pages_p99 * 1000:.0f} ms; trivial p50 {percentile(trivial, 50) * 1000:.0f} ms "
          f"p99 {trivial_p99 * 1000:.0f} ms; load {os.getloadavg()[0]:.1f} at the end")
    print(f"reconcile: requests {small_requests} at 10, {big_requests} at {EXISTING}")
    print(f"scale: accept_per_s={accepted / burst_s:.1f} "
          f"running_per_min={len(running) / span * 60:.0f} "
          f"launch_to_running_p99_s={percentile(waits, 99):.1f} "
          f"browse_p99_ratio={pages_p99 / trivial_p99:.2f} reconcile_s_10000={big_s:.2f} "
          f"reconcile_requests_10000={big_requests}")


if __name__ == "__main__":
    main()
