"""Chaos: the parts a real installation loses, lost at random while users work; then, with
the faults over and the reconcile passes run, nothing lost, nothing leaked, quota exact.

The bench starts what it breaks, never the machine's shared services:

- its own PostgreSQL (``initdb`` on another port, as the ``postgres`` OS user when run as
  root), restarted with ``pg_ctl -m immediate``;
- its own Redis (broker and cache), killed and started again;
- a real Celery worker and beat, the worker killed with SIGKILL mid-task and started again
  as a service manager would;
- the kit's Kubernetes API emulator behind its fault proxy, which answers every request with
  a TCP reset for 10-30 s (the API server down).

Meanwhile clients launch instances (the local backend and Kubernetes namespaces), deploy
notebooks on Kubernetes, download kubeconfigs (access tokens), invite collaborators, stop,
start and delete, through the portal's
services as its web tier calls them. A call that fails because a part is down is a refusal
the user sees; what the portal accepted (wrote) must get to a final state.

At the end, with faults stopped and reconcile passes run until nothing moves (at most
``--settle`` seconds), it checks:

- converged: instances and notebooks in a final state (running, stopped, failed, deleted), in
  per cent of all rows; ``lost``: accepted actions whose outcome is missing (a deletion that
  did not happen, a launch or start that neither runs nor says why it failed, a stop that did
  not stop, an accepted action without its audit row);
- leaked: namespaces, notebook Deployments, sandboxes and GPU slots that no live row accounts
  for, kubeconfig tokens still live on a deleted instance, and anything quarantined (unknown
  to the database);
- quota_errors: a local instance's GPU slots, or a namespace's GPU quota, that differ from
  its size and status; an instance with more than one open usage record, or an open one while
  it holds no GPUs, or none while it runs.

Time is compressed through settings: polls from 0.5 s to 2 s, a stuck row re-driven after
5 s, leases 5 s past their poll, reconcile every 3 s.

    python bench/chaos.py [--minutes 10] [--seed 7] [--settle 240]

Last line: ``chaos: actions=<n> faults=<m> converged=<pct> lost=<k> leaked=<j>
quota_errors=<q> minutes=<t>``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as its own OS user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    """A PostgreSQL of the bench's own, on another port, never the shared one."""

    def __init__(self, base: Path) -> None:
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.data, self.port = base / "pgdata", free_port()
        self.log = base / "postgres.log"
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            shutil.chown(self.data, "postgres")
        subprocess.run(as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A",
                                    "trust", "-U", "postgres"]), check=True,
                       capture_output=True)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/chaos"

    def start(self) -> None:
        subprocess.run(as_postgres([
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o",
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start"]),
            check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                                    "immediate", "-w", "stop"]), capture_output=True)


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()


class Celery:
    """The worker (or beat) as a service manager keeps it: started again when it dies."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "gpupaas",
                                          *self.args], cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def configure(pg: Postgres, redis: Redis, base: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="gpupaas.settings", DATABASE_URL=pg.url,
        CELERY_BROKER_URL=redis.url, CELERY_QUEUE="chaos", CACHE_URL=redis.url,
        VAR_DIR=str(base / "var"), LOCAL_SANDBOX_ROOT=str(base / "sandboxes"),
        LOCAL_USE_NVML="false", LOCAL_GPU_SLOTS="64", LOCAL_ISOLATION="single-user",
        LOCAL_LIMITS="false", PORTAL_ID="chaos", EMAIL_BACKEND=(
            "django.core.mail.backends.locmem.EmailBackend"),
        INSTANCE_POLL_S="0.5", INSTANCE_POLL_MAX_S="2", NOTEBOOK_POLL_S="0.5",
        NOTEBOOK_POLL_MAX_S="2", POLL_LEASE_GRACE_S="5", RECONCILE_STUCK_AFTER_S="5",
        RECONCILE_INTERVAL_S="3", LOG_LEVEL="WARNING", LOG_FORMAT="text",
        DEFAULT_MAX_GPUS="64", DEFAULT_MAX_INSTANCES="50", PORTAL_URL="http://127.0.0.1")


# --- the users ----------------------------------------------------------------------------


class Clients:
    """Users at work: each call is what a page or the API would do; its outcome is noted."""

    def __init__(self, rng: random.Random, users: list, profiles: dict, notebook_profile):
        self.rng, self.users, self.profiles = rng, users, profiles
        self.notebook_profile = notebook_profile
        self.accepted: list[tuple[str, int]] = []  # (action, instance or notebook id)
        self.refused = Counter()
        self.lock = threading.Lock()
        self.slowest = (0.0, "")  # the longest a call took, and which

    def act(self) -> None:
        from django.core.exceptions import ValidationError
        from django.db import connection

        from access import services as access_services
        from instances import collaborators, services
        from instances.models import Instance
        from notebooks import services as notebook_services

        user = self.rng.choice(self.users)
        action = "look"
        began = time.monotonic()
        try:
            mine = list(Instance.objects.filter(workspace__owner=user).exclude(
                status=Instance.Status.DELETED).select_related("cluster").order_by("pk"))
            running = [i for i in mine if i.status == Instance.Status.RUNNING]
            stopped = [i for i in mine if i.status == Instance.Status.STOPPED]
            kube = [i for i in running if i.cluster.backend == "kubernetes"]
            choices = ["launch"] * 4 + ["delete"] * (2 if mine else 0) + (
                ["stop"] * 2 if running else []) + (["start"] * 2 if stopped else []) + (
                ["share"] if running else []) + (["notebook"] * 2 if kube else []) + (
                ["kubeconfig"] if kube else [])
            action = self.rng.choice(choices)
            if action == "launch":
                where = self.rng.choice(list(self.profiles))
                instance = services.launch_instance(
                    workspace=user.workspace, name=f"c{time.monotonic_ns() % 10**10}",
                    profile=self.profiles[where], by=user)
                done = instance.pk
            elif action == "delete":
                target = self.rng.choice(mine)
                services.delete_instance(instance=target, by=user)
                done = target.pk
            elif action == "stop":
                target = self.rng.choice(running)
                if not services.stop_instance(instance=target, by=user):
                    raise ValidationError("not running any more")
                done = target.pk
            elif action == "start":
                target = self.rng.choice(stopped)
                if not services.start_instance(instance=target, by=user):
                    raise ValidationError("not stopped any more")
                done = target.pk
            elif action == "share":
                target = self.rng.choice(running)
                collaborators.invite_collaborator(
                    instance=target, emails=[f"guest{self.rng.randrange(10**6)}@example.com"],
                    by=user, base_url="http://127.0.0.1")
                done = target.pk
            elif action == "kubeconfig":  # a kubeconfig downloaded: a token on the instance
                target = self.rng.choice(kube)
                access_services.issue_access_token(user=user, instance=target)
                done = target.pk
            else:
                target = self.rng.choice(kube)
                notebook = notebook_services.deploy_notebook(
                    instance=target, name=f"nb{time.monotonic_ns() % 10**8}",
                    profile=self.notebook_profile, by=user, gpus=0)
                done = notebook.pk
        except ValidationError:
            self.refused["refused"] += 1  # in words, as the user sees it
            return
        except Exception as exc:  # a part is down: the user sees an error page
            self.refused[f"{action}: {type(exc).__name__}"] += 1
            with contextlib.suppress(Exception):
                connection.close()
            return
        with self.lock:
            self.accepted.append((action, done))
            self.slowest = max(self.slowest, (time.monotonic() - began, action))


# --- the checks ---------------------------------------------------------------------------


FINAL = {"running", "stopped", "failed", "deleted"}


def check(clients: Clients, target) -> dict[str, int | float]:
    """The figures, read afresh (a connection the faults broke is opened again)."""
    from django.db import OperationalError, connection

    for attempt in range(20):
        connection.close()
        try:
            return _check(clients, target)
        except OperationalError:
            if attempt == 19:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _check(clients: Clients, target) -> dict[str, int | float]:
    from django.utils import timezone

    from access.models import AccessToken
    from clusters.backends.local import LocalBackend
    from clusters.models import Cluster, GpuAllocation
    from instances.models import Instance, QuarantinedInstance
    from notebooks.models import Notebook
    from workspaces.models import AuditEvent, UsageRecord

    instances = {i.pk: i for i in Instance.objects.select_related("cluster")}
    notebooks = {n.pk: n for n in Notebook.objects.all()}
    rows = list(instances.values()) + list(notebooks.values())
    final = sum(1 for row in rows if row.status in FINAL)
    converged = 100.0 * final / len(rows) if rows else 100.0

    audits = set(AuditEvent.objects.values_list("action", "object_id"))
    expected_audit = {"launch": "instance.launched", "delete": "instance.deleting",
                      "stop": "instance.stopping", "start": "instance.pending",
                      "share": "collaborator.invited", "notebook": "notebook.deploying",
                      "kubeconfig": "access_token.issued"}
    missing: list[str] = []
    for action, pk in clients.accepted:
        if action == "share":
            if not any(a == "collaborator.invited" for a, _ in audits):
                missing.append(f"share of {pk}: no audit row")
            continue
        if (expected_audit[action], str(pk)) not in audits:
            missing.append(f"{action} {pk}: no {expected_audit[action]} audit row")
        if action == "notebook" and pk not in notebooks:
            missing.append(f"notebook {pk}: no row")
    # What each instance should have come to: its users' last accepted action, in the order
    # the database committed them (two users' calls may return in another order).
    wanted = {"instance.launched": {"running", "failed", "deleted"},
              "instance.pending": {"running", "failed", "deleted"},
              "instance.stopping": {"stopped", "deleted"},
              "instance.deleting": {"deleted"}}
    last: dict[str, str] = {}
    for object_id, action in (AuditEvent.objects.filter(
            object_type="instances.instance", actor__isnull=False, action__in=list(wanted))
            .order_by("id").values_list("object_id", "action")):
        last[object_id] = action
    for object_id, action in last.items():
        instance = instances.get(int(object_id))
        status = instance.status if instance else None
        could_not_stop = (action == "instance.stopping" and status == "running"
                          and instance.status_message.startswith("Could not stop"))
        if status not in wanted[action] and not could_not_stop:
            missing.append(f"instance {object_id}: {status} after an accepted {action}")
    lost = len(missing)

    live = {i.key for i in instances.values() if i.status != "deleted"}
    leaked = QuarantinedInstance.objects.count()
    kube_live = {f"nb-{n.name}-{n.pk}" for n in notebooks.values() if n.status != "deleted"}
    for ns in target.objects("Namespace", label_selector="gpupaas.io/portal=chaos"):
        meta = ns["metadata"]
        leaked += (meta["labels"]["gpupaas.io/instance"] not in live
                   and not meta.get("deletionTimestamp"))
    for deployment in target.objects("Deployment", label_selector="gpupaas.io/notebook"):
        leaked += deployment["metadata"]["name"] not in kube_live
    for cluster in Cluster.objects.filter(backend="local"):
        root = LocalBackend(cluster).root
        if root.is_dir():
            leaked += sum(1 for p in root.iterdir() if p.is_dir() and p.name not in live)
    holding = {i.key: i for i in instances.values() if i.status in Instance.HOLDS_GPUS}
    slots = Counter(GpuAllocation.objects.values_list("holder", flat=True))
    leaked += sum(1 for holder in slots if holder not in holding)
    # A kubeconfig token outliving its instance (the proxy refuses it anyway; the sweep
    # revokes it).
    leaked += AccessToken.objects.filter(instance__status="deleted", revoked_at__isnull=True,
                                         expires_at__gt=timezone.now()).count()

    quota_errors = 0
    for instance in instances.values():
        if instance.cluster.backend == "local":
            want = instance.gpus if instance.status in Instance.HOLDS_GPUS else 0
            quota_errors += slots.get(instance.key, 0) != want
        elif instance.status in ("running", "stopped"):
            [quota] = [q for q in target.objects("ResourceQuota")
                       if q["metadata"]["namespace"].endswith(f"-{instance.pk}")] or [None]
            hard = ((quota or {}).get("spec") or {}).get("hard", {}).get(
                "requests.nvidia.com/gpu")
            quota_errors += hard != str(instance.gpus if instance.status == "running" else 0)
    open_records = Counter(UsageRecord.objects.filter(ended_at__isnull=True, kind="instance")
                           .values_list("object_id", flat=True))
    for instance in instances.values():
        counting = instance.status == "running" and instance.gpus > 0
        quota_errors += open_records.get(instance.pk, 0) != (1 if counting else 0)
    return {"converged": converged, "lost": lost, "leaked": leaked,
            "quota_errors": quota_errors, "rows": len(rows), "missing": missing}


# --- the run ------------------------------------------------------------------------------


def run(args, rng, base, pg, redis, workers):
    configure(pg, redis, base)
    subprocess.run(as_postgres([str(pg.bin / "createdb"), "-h", "127.0.0.1", "-p",
                                str(pg.port), "-U", "postgres", "chaos"]), check=True)

    import django
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from clusters.models import Cluster
    from instances.models import ComputeProfile
    from notebooks.models import NotebookProfile
    from portal.catalogue import seed_catalogue, seed_groups
    from tests.kit import kubeemu, kubeproxy, targets
    from workspaces.services import ensure_workspace

    call_command("migrate", verbosity=0)
    seed_catalogue()
    users = []
    for n in range(4):
        user = get_user_model().objects.create_user(f"user{n}", f"user{n}@example.com", "x")
        user.groups.add(seed_groups()["Users"])
        ensure_workspace(user=user)
        users.append(user)
    with targets.emulated(namespace_delete_delay=0.05) as target:
        target.add_hook(kubeemu.admit_ingresses)
        target.add_hook(kubeemu.serve_endpoints)
        cluster = Cluster(name="kube", display_name="Kubernetes", backend="kubernetes",
                          ingress_domain="apps.example.com")
        cluster.set_kubeconfig(target.kubeconfig(base / "kubeconfig").read_text())
        cluster.save()
        profiles = {
            "local": ComputeProfile.objects.filter(cluster__backend="local", gpus=1).first(),
            "kube": ComputeProfile.objects.create(
                name="ns", display_name="Namespace", kind="namespace", cluster=cluster,
                gpus=1, cpu=2, memory_gib=8, storage_gib=10, published=True),
        }
        notebook_profile = NotebookProfile.objects.create(
            name="chaos", display_name="Chaos", image="quay.io/jupyter/minimal-notebook",
            default_cpu=1, default_memory_gib=2, published=True)
        worker = Celery(["worker", "--pool", "threads", "--concurrency", "4", "--loglevel",
                         "WARNING", "--without-gossip", "--without-mingle",
                         "--without-heartbeat"], base / "worker.log")
        beat = Celery(["beat", "--schedule", str(base / "beat-schedule"), "--loglevel",
                       "WARNING"], base / "beat.log")
        workers += [worker, beat]
        for proc in workers:
            proc.start()
        clients = Clients(rng, users, profiles, notebook_profile)
        faults: Counter[str] = Counter()
        stop = threading.Event()
        started = time.monotonic()

        def work() -> None:
            from django.db import connection
            while not stop.is_set():
                clients.act()
                stop.wait(rng.uniform(0.2, 0.8))
            connection.close()

        def break_things() -> None:
            while not stop.wait(rng.uniform(5, 12)):
                kind = rng.choice(["worker", "redis", "postgres", "api"])
                faults[kind] += 1
                print(f"[{time.monotonic() - started:5.0f}s] fault: {kind}", flush=True)
                if kind == "worker":
                    worker.kill()
                    stop.wait(rng.uniform(1, 3))
                    worker.start()
                elif kind == "redis":
                    redis.stop()
                    stop.wait(rng.uniform(2, 5))
                    redis.start()
                elif kind == "postgres":
                    pg.stop()
                    stop.wait(rng.uniform(2, 5))
                    pg.start()
                else:
                    target.faults = kubeproxy.Faults(rate=1.0, kinds=("reset",))
                    stop.wait(rng.uniform(10, 30) if args.minutes >= 5 else rng.uniform(5, 10))
                    target.faults = None

        threads = [threading.Thread(target=work) for _ in range(2)]
        threads.append(threading.Thread(target=break_things))
        for thread in threads:
            thread.start()
        time.sleep(args.minutes * 60)
        stop.set()
        for thread in threads:
            thread.join()
        # Faults over: everything is up (the last fault's part was started again).
        target.faults = None
        if worker.proc is None or worker.proc.poll() is not None:
            worker.start()
        print(f"[{time.monotonic() - started:5.0f}s] faults over; settling", flush=True)
        deadline = time.monotonic() + args.settle
        result = check(clients, target)
        while time.monotonic() < deadline and result["converged"] < 100:
            time.sleep(3)
            result = check(clients, target)
        # One more pass with nothing moving, then the figures.
        from django.core.management import call_command as run_command
        from django.db import connection
        connection.close()
        run_command("reconcile", stdout=open(os.devnull, "w"))  # noqa: SIM115
        time.sleep(7)  # two beats: the token sweep and the notebooks' pass run too
        result = check(clients, target)
    return result, clients, faults, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--settle", type=float, default=240.0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="gpupaas-chaos-"))
    base.chmod(0o755)
    pg, redis = Postgres(base), Redis()
    workers: list[Celery] = []
    pg.start()
    redis.start()
    try:
        result, clients, faults, started = run(args, rng, base, pg, redis, workers)
    finally:
        for proc in workers:
            proc.kill()
        redis.stop()
        pg.stop()
    minutes = (time.monotonic() - started) / 60
    if result["missing"]:
        print("lost:", "; ".join(result["missing"]))
    clean = (result["converged"], result["lost"], result["leaked"],
             result["quota_errors"]) == (100, 0, 0, 0)
    if clean:  # its database and logs are worth keeping only to look into a failure
        shutil.rmtree(base, ignore_errors=True)
    print(f"accepted: {Counter(a for a, _ in clients.accepted)}; refused: {dict(clients.refused)};"
          f" faults: {dict(faults)}; rows: {result['rows']}; slowest accepted call:"
          f" {clients.slowest[1]} in {clients.slowest[0]:.1f} s"
          + ("" if clean else f"; logs: {base}"))
    print(f"chaos: actions={len(clients.accepted)} faults={sum(faults.values())} "
          f"converged={result['converged']:.0f} lost={result['lost']} "
          f"leaked={result['leaked']} quota_errors={result['quota_errors']} "
          f"minutes={minutes:.1f}")


if __name__ == "__main__":
    main()
