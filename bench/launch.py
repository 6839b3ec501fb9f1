"""Launch throughput: 100 concurrent launch POSTs on one workspace, as at the start of a class.

Five signed-in sessions of one user (five browsers; each signed in through the password
form) send 100 launch POSTs of a 2-GPU size at once against a workspace with an 8-GPU
quota, to the portal served as in production: gunicorn with uvicorn workers (ASGI) on
PostgreSQL, Celery's broker on Redis. Each POST is what a browser sends from the launch
wizard (the form's fields with the CSRF token, htmx's `HX-Request` header as the page's
script adds it). Exactly 4 launches fit; the other 96 must be refused with the reason.

Afterwards it reads from the database what the workspace held:

- `max_gpus_held` is the most GPUs the workspace ever held during the run, replayed from the
  audit trail in commit order (+GPUs per `instance.launched`, -GPUs when an instance failed
  or was deleted). Nothing is deleted in this run, so it must equal the GPUs of the
  instances left holding quota at the end; the bench checks that, and that there is one
  launch audit row per accepted POST and per instance row.
- `accepted` counts the POSTs answered with the way to the new instance's page, and
  `server_errors` the answers of 500 or more and connections that failed.
- `p50_ms`/`p99_ms` are the latencies of the 100 POSTs, accepted and refused alike, timed
  from the moment all 100 were released together.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/gpupaas_bench_launch \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/15 python bench/launch.py

The database named in DATABASE_URL is dropped and created again; no Celery worker runs (the
provisioning tasks the launches enqueue are removed from the broker at the end). Last line:

    launch: accepted=<n> max_gpus_held=<n> p50_ms=<x> p99_ms=<y> server_errors=<n>
"""

import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.setdefault(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gpupaas_bench_launch")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")

POSTS = int(os.environ.get("BENCH_POSTS", "100"))
SESSIONS = 5
QUOTA_GPUS = 8
SIZE_GPUS = 2
WORKERS = os.environ.get("BENCH_WEB_WORKERS", "4")  # as the Dockerfile serves it
PASSWORD = "bench-password-1"
USERNAME = "alice"
HOST = "127.0.0.1"

# The database named above (pages.py reads the same DATABASE_URL, set first here).
from bench.pages import free_port, recreate_database  # noqa: E402


class Session:
    """One browser: its cookies, kept as a browser keeps them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=120)

    def request(self, conn: http.client.HTTPConnection, method: str, path: str,
                form: dict[str, str] | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], str]:
        sent = {"Host": f"{HOST}:{self.port}", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
            sent["Referer"] = f"http://{HOST}:{self.port}{path}"
            sent["Origin"] = f"http://{HOST}:{self.port}"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text

    def csrf_token(self, conn: http.client.HTTPConnection, path: str) -> str:
        status, _, page = self.request(conn, "GET", path)
        assert status == 200, f"GET {path} answered {status}"
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, f"no CSRF token on {path}"
        return match.group(1)

    def sign_in(self) -> None:
        conn = self.connection()
        token = self.csrf_token(conn, "/accounts/login/?local")
        status, headers, _ = self.request(conn, "POST", "/accounts/login/?local", {
            "csrfmiddlewaretoken": token, "login": USERNAME, "password": PASSWORD})
        assert status == 302 and "sessionid" in self.cookies, f"sign-in answered {status}"
        conn.close()


def wait_up(port: int) -> None:
    deadline = time.monotonic() + 300  # a busy machine imports the portal slowly
    while True:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not come up")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children: the server's whole cost."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for child in [pid, *children_of(pid)]:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            found += [kid, *children_of(kid)]
    return found


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def held_by_audit(workspace_id: int) -> int:
    """The most GPUs the workspace held at any point, replayed from its audit trail in the
    order the rows were written (each launch and release commits its audit row with it)."""
    from instances.models import Instance
    from workspaces.models import AuditEvent

    gpus = dict(Instance.objects.filter(workspace_id=workspace_id).values_list("pk", "gpus"))
    held = most = 0
    for action, object_id in (AuditEvent.objects.filter(
            workspace_id=workspace_id, object_type="instances.instance")
            .order_by("pk").values_list("action", "object_id")):
        if action == "instance.launched":
            held += gpus[int(object_id)]
        elif action in ("instance.failed", "instance.deleted"):
            held -= gpus[int(object_id)]
        most = max(most, held)
    return most


def main() -> None:
    recreate_database()
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db.models import Sum

    from instances.models import ComputeProfile, Instance
    from portal.catalogue import seed_catalogue, seed_groups
    from workspaces.models import AuditEvent, Workspace

    call_command("migrate", verbosity=0)
    seed_catalogue()
    profile = ComputeProfile.objects.get(gpus=SIZE_GPUS)
    user = get_user_model().objects.create_user(USERNAME, f"{USERNAME}@example.com", PASSWORD)
    user.groups.add(seed_groups()["Users"])
    # The GPU quota is the binding limit: room for more instances than the GPUs allow.
    workspace = Workspace.objects.create(owner=user, max_gpus=QUOTA_GPUS, max_instances=100)

    port = free_port()
    log = open(ROOT / "var" / "bench-launch-server.log", "w")  # noqa: SIM115
    # Served as the image serves it: gunicorn with gpupaas/gunicorn.py (uvicorn workers, the
    # portal's JSON request lines at INFO).
    env = {**os.environ, "DEBUG": "false", "LOCAL_USE_NVML": "false", "ALLOWED_HOSTS": HOST,
           "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "GUNICORN_BIND": f"{HOST}:{port}",
           "WEB_CONCURRENCY": WORKERS}
    # To profile the server under the load: BENCH_SERVER_WRAPPER="py-spy record -o launch.txt
    # --format raw --subprocesses --idle --"
    wrapper = os.environ.get("BENCH_SERVER_WRAPPER", "").split()
    server = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "gunicorn", "-c", "python:gpupaas.gunicorn",
         "gpupaas.asgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    results: list[tuple[int, str, float]] = [(0, "", 0.0)] * POSTS
    try:
        wait_up(port)
        sessions = [Session(port) for _ in range(SESSIONS)]
        for session in sessions:
            session.sign_in()
        # Each request's form token read beforehand (as each browser tab has the wizard
        # open), then all released at once, each on a connection of its own.
        prepared = []
        for i in range(POSTS):
            session = sessions[i % SESSIONS]
            conn = session.connection()
            prepared.append((session, session.csrf_token(conn, "/instances/new/")))
            conn.close()
        barrier = threading.Barrier(POSTS)
        errors: list[str] = []

        def launch(i: int) -> None:
            session, token = prepared[i]
            form = {"csrfmiddlewaretoken": token, "name": f"class-{i:03d}", "description": "",
                    "profile": str(profile.pk)}
            barrier.wait()
            start = time.perf_counter()
            conn = session.connection()
            try:
                status, headers, _ = session.request(
                    conn, "POST", "/instances/new/", form,
                    headers={"HX-Request": "true", "HX-Current-URL":
                             f"http://{HOST}:{port}/instances/new/"})
                where = headers.get("hx-redirect") or headers.get("location", "")
            except (OSError, http.client.HTTPException) as exc:
                status, where = 599, repr(exc)
                errors.append(repr(exc))
            results[i] = (status, where, (time.perf_counter() - start) * 1000)
            conn.close()

        threads = [threading.Thread(target=launch, args=(i,)) for i in range(POSTS)]
        cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu_used, wall = cpu_seconds(server.pid) - cpu_before, time.perf_counter() - wall_before
    finally:
        server.send_signal(signal.SIGINT if wrapper else signal.SIGTERM)
        server.wait(60)
        log.close()
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.CELERY_TASK_DEFAULT_QUEUE)

    if errors:
        print(f"failed connections: {len(errors)}, e.g. {errors[0]}")
    detail = re.compile(r"/instances/\d+/$")
    accepted = sum(1 for status, where, _ in results if status in (204, 302)
                   and detail.search(where))
    refused = sum(1 for status, _, _ in results if status in (200, 400))
    server_errors = sum(1 for status, _, _ in results if status >= 500)
    latencies = [ms for _, _, ms in results]
    holding = Instance.objects.filter(workspace=workspace, status__in=Instance.HOLDS_QUOTA)
    held_now = holding.aggregate(n=Sum("gpus", default=0))["n"]
    launched_audit = AuditEvent.objects.filter(workspace=workspace,
                                               action="instance.launched").count()
    rows = Instance.objects.filter(workspace=workspace).count()
    most = held_by_audit(workspace.pk)
    statuses = sorted({status for status, _, _ in results})
    print(f"server: cpu_ms_per_post={cpu_used * 1000 / POSTS:.1f} burst_s={wall:.2f} "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"answers: {statuses}; accepted={accepted} refused={refused} instance_rows={rows} "
          f"launch_audit_rows={launched_audit} gpus_held_at_end={held_now} "
          f"max_gpus_held_by_audit={most}")
    assert rows == launched_audit == accepted, "accepted POSTs, rows and audit disagree"
    assert most == held_now, "the audit replay and the rows disagree"
    print(f"launch: accepted={accepted} max_gpus_held={most} "
          f"p50_ms={percentile(latencies, 50):.1f} p99_ms={percentile(latencies, 99):.1f} "
          f"server_errors={server_errors}")


if __name__ == "__main__":
    main()
