"""Time to a usable notebook, side by side with JupyterHub, in one run.

JupyterHub (from PyPI) with its SimpleLocalProcessSpawner and configurable-http-proxy (from
npm), and this portal served as `make run` serves it (`manage.py runportal`: gunicorn, a
Celery worker and beat on the embedded default, SQLite and the filesystem broker: run as
root, the portal refuses a Redis or PostgreSQL its tenants could reach), start the same
JupyterLab version on this machine. Alternating runs, one user at a time (BENCH_RUNS, 10
by default), then 10 users at once (BENCH_USERS), twice each:

- JupyterHub: from the spawn request (`POST /hub/api/users/<name>/server`) to a 200 on the
  server's `/api/status` through its proxy;
- ours: from the deploy POST (`POST /api/v1/instances/<id>/notebooks`, what the Deploy
  page's form does) to a 200 on `/api/status` at the URL the API then gives, through the
  real worker. Its trace: the POST answered, Running seen (the API asked every 0.25 s), the
  server answering.

Our notebooks run as each workspace's own OS user when the bench runs as root (JupyterHub's
simple spawner runs them as the hub's user). Needs `npm` and the package registries. Last
line:

    peers: hub_p50_s=<a> ours_p50_s=<b> ratio_p50=<b/a> hub10_p99_s=<c> ours10_p99_s=<d>
           ratio10_p99=<d/c>   (one line)
"""

import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="bench-peers-"))
WORK.chmod(0o711)  # the workspaces' OS users pass through to their sandboxes
CACHE = ROOT / "var" / "bench-peers"  # the hub's venv and node modules, kept between runs
for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL"):
    os.environ.pop(name, None)  # the embedded default, in WORK
os.environ.update(DJANGO_SETTINGS_MODULE="gpupaas.settings", VAR_DIR=str(WORK / "var"),
                  LOCAL_USE_NVML="false", LOCAL_GPU_SLOTS="64", CELERY_TASK_ALWAYS_EAGER="false",
                  LOCAL_USER_PREFIX=f"gpp{os.getpid() % 10000}-", API_RATE_LIMIT="",
                  LOG_LEVEL="WARNING", LOCAL_ENV_ROOT=str(ROOT / "var" / "envs"))
RUNS = int(os.environ.get("BENCH_RUNS", "10"))
# How often the bench asks: a server's /api/status (both sides alike), and our API for the
# notebook's status (what a page does every second, a script as often as this). Asked much
# faster, ten clients at once take the CPU the servers start with.
ANSWER_POLL_S, ROW_POLL_S = 0.1, 0.25
USERS = int(os.environ.get("BENCH_USERS", "10"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str = "GET", token: str = "", body: dict | None = None,
         scheme: str = "Bearer", host: str = "") -> tuple[int, object]:
    """`host`: the Host to send (a local notebook's origin on the portal, whose name this
    machine's resolver may not know: the request goes to `url`'s address)."""
    headers = {"Authorization": f"{scheme} {token}", "Content-Type": "application/json"}
    if host:
        headers["Host"] = host
    request = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def until(predicate, limit_s: float = 180, every_s: float = 0.02):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(every_s)
    raise RuntimeError(f"gave up after {limit_s} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- JupyterHub ---------------------------------------------------------------------------


class Hub:
    def __init__(self, jupyterlab: str) -> None:
        hub_env, node = CACHE / "hub", CACHE / "node"
        python = hub_env / "bin" / "python"
        uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
        if not python.exists():
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(hub_env)],
                           check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "jupyterhub",
                        f"jupyterlab=={jupyterlab}"], check=True)
        if not (node / "node_modules" / ".bin" / "configurable-http-proxy").exists():
            subprocess.run(["npm", "install", "--silent", "--prefix", str(node),
                            "configurable-http-proxy"], check=True)
        version = subprocess.run([str(hub_env / "bin" / "jupyterhub"), "--version"],
                                 capture_output=True, text=True).stdout.strip()
        self.version = version
        self.port, self.token = free_port(), secrets.token_hex(32)
        self.url = f"http://127.0.0.1:{self.port}"
        home = WORK / "hub"
        home.mkdir()
        (home / "jupyterhub_config.py").write_text(f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{home}/homes/{{username}}"
c.Spawner.default_url = "/lab"
c.Spawner.args = ["--allow-root"] if {os.geteuid() == 0} else []
c.JupyterHub.db_url = "sqlite:///{home}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{home}/cookie_secret"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{self.token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers", "access:servers"]}}]
""")
        env = {**os.environ, "PATH": f"{hub_env / 'bin'}:{node / 'node_modules' / '.bin'}:"
               + os.environ["PATH"]}
        self.process = subprocess.Popen(
            [str(hub_env / "bin" / "jupyterhub"), "-f", str(home / "jupyterhub_config.py")],
            cwd=home, env=env, stdout=subprocess.DEVNULL,
            stderr=open(home / "hub.log", "w"),  # noqa: SIM115 (open while the hub runs)
            start_new_session=True)
        until(lambda: call(f"{self.url}/hub/api/", token=self.token, scheme="token")[0] == 200,
              60, 0.2)

    def api(self, method: str, path: str) -> tuple[int, object]:
        return call(f"{self.url}/hub/api{path}", method, self.token, scheme="token")

    def user(self, name: str) -> None:
        self.api("POST", f"/users/{name}")

    def start(self, name: str) -> float:
        started = time.perf_counter()
        code, _ = self.api("POST", f"/users/{name}/server")
        assert code in (201, 202), f"spawn answered {code}"
        until(lambda: call(f"{self.url}/user/{name}/api/status", token=self.token,
                           scheme="token")[0] == 200, every_s=ANSWER_POLL_S)
        return time.perf_counter() - started

    def stop(self, name: str) -> None:
        self.api("DELETE", f"/users/{name}/server")
        until(lambda: not (self.api("GET", f"/users/{name}")[1] or {}).get("server"), 60, 0.1)

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)


# --- this portal --------------------------------------------------------------------------


class Portal:
    def __init__(self, users: int) -> None:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("bootstrap", verbosity=0)
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        from api.services import create_api_token
        from clusters.backends.local import environments
        from instances import services
        from instances.models import ComputeProfile
        from notebooks.models import NotebookProfile
        from workspaces.services import ensure_workspace

        minimal = NotebookProfile.objects.get(name="minimal")
        env = environments.environment(minimal.name, minimal.packages)
        environments.build_now(env)  # built once, as on any machine after the first notebook
        self.jupyterlab = subprocess.run(
            [str(env.python), "-c", "import jupyterlab; print(jupyterlab.__version__)"],
            capture_output=True, text=True, check=True).stdout.strip()
        size = ComputeProfile.objects.filter(cluster__backend="local", gpus=1).first()
        self.people = []
        for n in range(users):
            person = get_user_model().objects.create_user(f"user{n}", f"user{n}@example.com")
            person.groups.add(Group.objects.get(name="Users"))
            instance = services.launch_instance(workspace=ensure_workspace(user=person),
                                                name="host", profile=size, by=person)
            services.provision_instance(instance_id=instance.pk)
            _, token = create_api_token(user=person, name="bench", days=1, scope="write")
            self.people.append((instance.pk, token))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runportal"], cwd=ROOT,
            env={**os.environ, "PORT": str(self.port)}, stdout=subprocess.DEVNULL,
            stderr=open(WORK / "portal.log", "w"),  # noqa: SIM115 (open while it runs)
            start_new_session=True)
        until(lambda: call(f"{self.url}/api/v1/me", token=self.people[0][1])[0] == 200, 120,
              0.2)
        self.counter = 0

    def start(self, person: int) -> tuple[float, float, float]:
        """(POST answered, Running seen, /api/status answering), in seconds from the POST."""
        instance, token = self.people[person]
        self.counter += 1
        started = time.perf_counter()
        code, made = call(f"{self.url}/api/v1/instances/{instance}/notebooks", "POST", token,
                          {"name": f"nb-{self.counter}", "profile": "minimal", "cpu": 1,
                           "memory_gib": 1, "gpus": 0})
        assert code == 201, f"deploy answered {code}"
        posted = time.perf_counter() - started
        shown = until(lambda: (found := call(f"{self.url}/api/v1/notebooks/{made['id']}",
                                             token=token)[1])
                      and found["status"] == "running" and found, every_s=ROW_POLL_S)
        running = time.perf_counter() - started
        _, secret = call(f"{self.url}/api/v1/notebooks/{made['id']}/token", "POST", token)
        # At the URL the page gives: the notebook's origin on the portal.
        origin = urlsplit(shown["url"]).netloc
        until(lambda: call(f"{self.url}/api/status", token=secret["token"], scheme="token",
                           host=origin)[0] == 200, every_s=ANSWER_POLL_S)
        self.last = (made["id"], token)
        return posted, running, time.perf_counter() - started

    def stop(self) -> None:
        from notebooks.models import Notebook

        notebook, token = self.last
        call(f"{self.url}/api/v1/notebooks/{notebook}", "DELETE", token)
        until(lambda: Notebook.objects.get(pk=notebook).status == "deleted", 120, 0.2)

    def close(self) -> None:
        from notebooks.models import Notebook

        # Every server gone before the next run (or the next bench) shares the CPU with it.
        until(lambda: not Notebook.objects.exclude(status="deleted").exists(), 120, 0.5)
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        from clusters.backends.local import tenants

        for name in tenants.portal_users():
            subprocess.run(["userdel", name], check=False, capture_output=True)


def together(start, count: int) -> list[float]:
    """`start(i)` for `count` users released at once; each one's time."""
    times: list[float] = [0.0] * count
    gate = threading.Barrier(count)

    def one(i: int) -> None:
        gate.wait()
        result = start(i)
        times[i] = result if isinstance(result, float) else result[-1]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def main() -> None:
    load = os.getloadavg()[0]
    portal = Portal(USERS)
    hub = Hub(portal.jupyterlab)
    print(f"{hub.version} and this portal, JupyterLab {portal.jupyterlab}, on "
          f"{os.cpu_count()} cores, load average {load:.2f} at the start", flush=True)
    try:
        for n in range(USERS):
            hub.user(f"user{n}")
        ours, hubs, trace = [], [], []
        for run in range(RUNS):
            hubs.append(hub.start("user0"))
            hub.stop("user0")
            trace.append(portal.start(0))
            ours.append(trace[-1][-1])
            portal.stop()
            posted, running, answered = trace[-1]
            print(f"run {run + 1}: hub {hubs[-1]:.2f}s; ours {answered:.2f}s (POST answered "
                  f"{posted:.3f}s, Running seen {running:.2f}s, /api/status {answered:.2f}s)",
                  flush=True)
        hub10, ours10 = [], []
        for _ in range(2):
            hub10 += together(lambda i: hub.start(f"user{i}"), USERS)
            for n in range(USERS):
                hub.stop(f"user{n}")
            ours10 += together(portal.start, USERS)
            from notebooks.models import Notebook

            for notebook in Notebook.objects.filter(status="running"):
                call(f"{portal.url}/api/v1/notebooks/{notebook.pk}", "DELETE",
                     portal.people[int(notebook.instance.workspace.owner.username[4:])][1])
            until(lambda: not Notebook.objects.exclude(status="deleted").exists(), 120, 0.5)
            print(f"{USERS} at once: hub p50 {statistics.median(hub10):.2f}s p99 "
                  f"{percentile(hub10, 0.99):.2f}s; ours p50 {statistics.median(ours10):.2f}s "
                  f"p99 {percentile(ours10, 0.99):.2f}s", flush=True)
    finally:
        hub.close()
        portal.close()
    steps = [statistics.median(t[i] for t in trace) for i in range(3)]
    print(f"ours, medians: POST answered {steps[0]:.3f}s; Running seen {steps[1]:.2f}s; "
          f"/api/status answering {steps[2]:.2f}s "
          f"({steps[2] - steps[1]:.2f}s after Running was seen)")
    hub_p50, ours_p50 = statistics.median(hubs), statistics.median(ours)
    hub10_p99, ours10_p99 = percentile(hub10, 0.99), percentile(ours10, 0.99)
    print(f"peers: hub_p50_s={hub_p50:.2f} ours_p50_s={ours_p50:.2f} "
          f"ratio_p50={ours_p50 / hub_p50:.2f} hub10_p99_s={hub10_p99:.2f} "
          f"ours10_p99_s={ours10_p99:.2f} ratio10_p99={ours10_p99 / hub10_p99:.2f}")


if __name__ == "__main__":
    main()
