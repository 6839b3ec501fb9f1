"""Page cost as rows grow, measured through a real server process.

Seeds 10,000 instances across 200 workspaces (200 of them in the measured user's), runs
gunicorn (uvicorn workers, ASGI) against PostgreSQL, and reports per page the SQL query
count (at 1 row and at 10,000) and p50/p99 latency at 20 concurrent clients, beside a
trivial signed-in view; the same for the JSON API's instance list (`GET /api/v1/instances`,
with a personal access token); and the query count of the administrators' overview and
workspace list at 1 and 200 workspaces.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/gpupaas_bench python bench/pages.py

The database named in DATABASE_URL is dropped and created again.
"""

import http.client
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.setdefault(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gpupaas_bench"
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")

CLIENTS = 20
REQUESTS_PER_CLIENT = int(os.environ.get("BENCH_REQUESTS", "60"))
WORKSPACES = 200
TOTAL_INSTANCES = 10_000
MEASURED_INSTANCES = 200
OVERVIEW_URL, WORKSPACES_URL = "/admin/overview/", "/admin/workspaces/workspace/"
ADMIN_PAGES = (OVERVIEW_URL, WORKSPACES_URL)


def recreate_database() -> None:
    import psycopg

    parts = urlsplit(DATABASE_URL)
    name = parts.path.lstrip("/")
    admin = f"{parts.scheme}://{parts.netloc}/postgres".replace("postgres://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API_URL = "/api/v1/instances"


def get(conn: http.client.HTTPConnection, path: str, cookie: str) -> tuple[int, int, float]:
    """GET `path` as a signed-in user: `cookie` is a session cookie, or a bearer token."""
    start = time.perf_counter()
    credential = ({"Authorization": cookie} if cookie.startswith("Bearer ")
                  else {"Cookie": cookie})
    conn.request("GET", path, headers={**credential, "Host": "127.0.0.1"})
    response = conn.getresponse()
    response.read()
    elapsed = (time.perf_counter() - start) * 1000
    return response.status, int(response.getheader("X-Query-Count", "-1")), elapsed


def query_count(port: int, path: str, cookie: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, queries, _ = get(conn, path, cookie)
    assert status == 200, f"{path} answered {status}"
    return queries


def latencies(port: int, path: str, cookie: str,
              requests_per_client: int = REQUESTS_PER_CLIENT) -> list[float]:
    results: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        get(conn, path, cookie)  # warm the connection
        barrier.wait()
        mine = []
        for _ in range(requests_per_client):
            status, _, ms = get(conn, path, cookie)
            assert status == 200
            mine.append(ms)
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A client whose request failed (not a 200) stopped early: say so rather than time fewer.
    assert len(results) == CLIENTS * requests_per_client, f"{path}: some requests failed"
    return results


def where_time_goes(path: str, credential: dict[str, str], client, n: int = 50) -> str:
    """One request's time in this process (no concurrency), split into SQL (the database's
    answers, as the driver waits for them), template rendering, and the rest (middleware,
    view code, serialising the answer)."""
    from django.db import connection
    from django.template.backends.django import Template

    sql = render = 0.0
    original = Template.render

    def timed_render(self, *args, **kwargs):
        nonlocal render
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            render += time.perf_counter() - start

    def timed_sql(execute, *args):
        nonlocal sql
        start = time.perf_counter()
        try:
            return execute(*args)
        finally:
            sql += time.perf_counter() - start

    for _ in range(5):
        client.get(path, HTTP_HOST="127.0.0.1", **credential)
    Template.render = timed_render
    try:
        with connection.execute_wrapper(timed_sql):
            start = time.perf_counter()
            for _ in range(n):
                assert client.get(path, HTTP_HOST="127.0.0.1", **credential).status_code == 200
            total = time.perf_counter() - start
    finally:
        Template.render = original
    # Templates that include others are counted once: the outermost render holds them.
    render = min(render, total)
    ms = lambda seconds: seconds / n * 1000  # noqa: E731
    return (f"{path}: total_ms={ms(total):.1f} sql_ms={ms(sql):.1f} "
            f"templates_ms={ms(render):.1f} rest_ms={ms(total - sql - render):.1f}")


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    recreate_database()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from api.services import create_api_token
    from instances.models import ComputeProfile, Instance
    from portal.catalogue import seed_catalogue, seed_groups
    from workspaces.models import Workspace

    call_command("migrate", verbosity=0)
    seed_catalogue()
    profile = ComputeProfile.objects.get(gpus=1)
    User = get_user_model()
    alice = User.objects.create_user("alice", "alice@example.com", "bench-password-1")
    alice.groups.add(seed_groups()["Users"])
    Workspace.objects.create(owner=alice, max_gpus=100_000, max_instances=100_000)

    def instance(workspace: Workspace, i: int, status: str) -> Instance:
        return Instance(
            workspace=workspace, name=f"job-{i}", profile=profile, launched_by=workspace.owner,
            cluster=profile.cluster, kind=profile.kind, gpus=1, cpu=profile.cpu,
            memory_gib=profile.memory_gib, storage_gib=profile.storage_gib, status=status,
            status_message="Running with simulated GPU 0 on Local machine.",
        )

    statuses = [s for s, _ in Instance.Status.choices if s != "deleted"]
    alice_ws = alice.workspace
    Instance.objects.create(**{
        f.name: getattr(instance(alice_ws, 0, "running"), f.name)
        for f in Instance._meta.fields if f.name != "id"
    })
    client = Client()
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    bearer = "Bearer " + create_api_token(user=alice, name="bench", days=1, scope="read")[1]
    admin = User.objects.create_superuser("admin", "admin@example.com", "bench-password-1")
    admin_client = Client()
    admin_client.force_login(admin)
    admin_cookie = f"sessionid={admin_client.cookies['sessionid'].value}"

    port = free_port()
    # The API's per-token budget stays on (its cost is measured), set above the benchmark's
    # traffic.
    env = {**os.environ, "QUERY_COUNT_HEADER": "1", "DEBUG": "false",
           "API_RATE_LIMIT": "1000000/m"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "gpupaas.asgi:application", "--bind",
         f"127.0.0.1:{port}", "--worker-class", "uvicorn_worker.UvicornWorker",
         "--workers", "2", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    try:
        deadline = time.monotonic() + 120  # a loaded machine starts slowly
        while True:
            try:
                query_count(port, "/healthz/", "")
                break
            except (OSError, AssertionError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        query_count(port, "/ping/", cookie)  # a session's first request records its activity
        at_one = {path: query_count(port, path, cookie) for path in ("/", "/instances/")}
        # A token's first use (and one every TOUCH_EVERY_S after) writes its last use: one
        # query more, whatever the rows; counted apart so the list's own count compares.
        token_first_use = query_count(port, API_URL, bearer)
        at_one[API_URL] = query_count(port, API_URL, bearer)
        for path in ADMIN_PAGES:
            query_count(port, path, admin_cookie)  # the admin session's first request
        at_one |= {path: query_count(port, path, admin_cookie) for path in ADMIN_PAGES}

        others = []
        for w in range(WORKSPACES - 1):
            user = User(username=f"user{w}", email=f"user{w}@example.com")
            user.set_unusable_password()
            others.append(user)
        User.objects.bulk_create(others)
        workspaces = Workspace.objects.bulk_create(Workspace(owner=u) for u in others)
        rows = [instance(alice_ws, i, statuses[i % len(statuses)])
                for i in range(1, MEASURED_INSTANCES)]
        remaining = TOTAL_INSTANCES - MEASURED_INSTANCES
        rows += [instance(workspaces[i % len(workspaces)], i, statuses[i % len(statuses)])
                 for i in range(remaining)]
        Instance.objects.bulk_create(rows, batch_size=2000)
        from django.db import connection

        with connection.cursor() as cursor:
            # Settle the database after the bulk insert, so its write-back is not measured.
            cursor.execute("ANALYZE")
            cursor.execute("CHECKPOINT")
        total = Instance.objects.count()
        mine = Instance.objects.filter(workspace=alice_ws).count()
        print(f"seeded: instances={total} workspaces={Workspace.objects.count()} measured={mine}")

        # Some of the others failed, for the overview's last-24-hours list.
        Instance.objects.filter(workspace__in=workspaces[:50], status="running").update(
            status="failed", status_message="Benchmark failure.")
        at_many = {path: query_count(port, path, cookie) for path in ("/", "/instances/")}
        query_count(port, API_URL, bearer)  # the token's last use, written again if due
        at_many[API_URL] = query_count(port, API_URL, bearer)
        at_many |= {path: query_count(port, path, admin_cookie) for path in ADMIN_PAGES}
        for path in ("/instances/", "/", "/ping/"):  # warm every worker and cache
            latencies(port, path, cookie, requests_per_client=3)
        latencies(port, API_URL, bearer, requests_per_client=3)
        list_ms = latencies(port, "/instances/", cookie)
        landing_ms = latencies(port, "/", cookie)
        trivial_ms = latencies(port, "/ping/", cookie)
        api_ms = latencies(port, API_URL, bearer)
    finally:
        server.terminate()
        server.wait(10)

    # Where a request's time goes, one at a time in this process, on the same database (with
    # the server's request budget: the token already spent the default one).
    from django.conf import settings

    settings.API_RATE_LIMIT = settings.API_USER_RATE_LIMIT = "1000000/m"
    bearer_header = {"HTTP_AUTHORIZATION": bearer}
    for path, credential in (("/ping/", {}), ("/instances/", {}), ("/", {}),
                             (API_URL, bearer_header), ("/api/v1/me", bearer_header)):
        print("in-process " + where_time_goes(path, credential, client))
    for name, values in (("landing", landing_ms), ("list", list_ms), ("trivial", trivial_ms),
                         ("api_list", api_ms)):
        print(f"{name}: n={len(values)} p50_ms={p(values, 50):.1f} p99_ms={p(values, 99):.1f}")
    list_p99, trivial_p99 = p(list_ms, 99), p(trivial_ms, 99)
    print(
        f"pages: landing_queries={at_many['/']}/{at_one['/']} "
        f"list_queries={at_many['/instances/']}/{at_one['/instances/']} "
        f"list_p99_ms={list_p99:.1f} trivial_p99_ms={trivial_p99:.1f} "
        f"ratio={list_p99 / trivial_p99:.2f} "
        f"overview_queries={at_many[OVERVIEW_URL]}/{at_one[OVERVIEW_URL]} "
        f"workspace_admin_queries={at_many[WORKSPACES_URL]}/{at_one[WORKSPACES_URL]}"
    )
    api_p99 = p(api_ms, 99)
    print(
        f"api: list_queries={at_many[API_URL]}/{at_one[API_URL]} "
        f"token_last_use_write={token_first_use - at_one[API_URL]} list_p99_ms={api_p99:.1f} "
        f"trivial_p99_ms={trivial_p99:.1f} ratio={api_p99 / trivial_p99:.2f}"
    )


if __name__ == "__main__":
    main()
