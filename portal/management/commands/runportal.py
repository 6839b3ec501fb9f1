import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from clusters.backends.local import limits as local_limits
from clusters.backends.local import stop_all_servers, tenants

# How long web, worker and beat get to stop on their own before they are killed (a second
# Ctrl-C or TERM kills them at once).
STOP_GRACE_S = float(os.environ.get("RUNPORTAL_STOP_GRACE_S", "10"))
PR_SET_PDEATHSIG = 1


class Stop(Exception):
    """A signal asked runportal to stop (raised once; a second one only escalates)."""


class Signals:
    """SIGINT and SIGTERM stop everything, from start-up on; the first raises `Stop` where the
    command is, any later one asks for the kill at once (what a service manager's TERM after
    a Ctrl-C, or an impatient second Ctrl-C, means)."""

    def __init__(self) -> None:
        self.received = 0
        self.stopping = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1
        if not self.stopping:
            self.stopping = True
            raise Stop


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
WORKER_CONCURRENCY = int(os.environ.get("WORKER_CONCURRENCY", "8"))
# Each worker thread keeps its database connection for its task: a pool of as many.
WORKER_ENV = {"DATABASE_POOL_SIZE": str(max(WORKER_CONCURRENCY, int(
    os.environ.get("DATABASE_POOL_SIZE", "10"))))}


def _die_with_parent() -> None:
    """In each child before it runs: its own process group (so that a terminal's Ctrl-C
    reaches runportal alone, which then stops the children in order, and a kill reaches the
    child's own workers too), and a TERM should runportal itself die (Linux)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked while it was started
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_all(procs: dict[str, subprocess.Popen], signals: Signals) -> list[str]:
    """TERM to each, then up to STOP_GRACE_S for them to end; at the grace's end, or at once
    on another signal, KILL to each one's whole process group. Returns the names killed."""
    signals.stopping = True  # from here on a signal only hurries this along
    for p in procs.values():
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    asked = signals.received
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        if signals.received > asked:
            break
        time.sleep(0.05)
    killed = []
    for name, p in procs.items():
        if p.poll() is None:
            killed.append(name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # its workers too, whether it ended or not
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
    return killed


class Command(BaseCommand):
    help = "Run web, Celery worker and Celery beat together until Ctrl-C (the embedded default)."

    def handle(self, *args, **options) -> None:
        port = os.environ.get("PORT", "8000")
        host = os.environ.get("HOST", "127.0.0.1")
        python = sys.executable
        # kubectl sends a kubeconfig's token over HTTPS only: serve TLS when given a pair.
        cert, key = os.environ.get("TLS_CERT_FILE"), os.environ.get("TLS_KEY_FILE")
        tls = ["--certfile", cert, "--keyfile", key] if cert and key else []
        scheme = "https" if tls else "http"
        celery = [python, "-m", "celery", "-A", "gpupaas"]
        commands = {
            # ASGI (uvicorn workers under gunicorn): the Kubernetes proxy streams watches.
            # gpupaas.gunicorn: the portal's log format, and each request logged once.
            "web": [
                python, "-m", "gunicorn", "-c", "python:gpupaas.gunicorn",
                "gpupaas.asgi:application", "--bind", f"{host}:{port}",
                "--workers", os.environ.get("WEB_CONCURRENCY", "2"), *tls,
            ],
            # Threads: a worker that starts a notebook waits on it (FAST_POLL_S) without using
            # the CPU, so a class starting at once does not queue behind two processes.
            "worker": [*celery, "worker", "--loglevel", "INFO", "--pool", "threads",
                       "--concurrency", str(WORKER_CONCURRENCY)],
            "beat": [
                *celery, "beat", "--loglevel", "INFO",
                "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        }
        if settings.EMAIL_BACKEND.endswith("filebased.EmailBackend"):
            # No mail server in the embedded default: invitations land here as files.
            settings.EMAIL_FILE_PATH.mkdir(parents=True, exist_ok=True)
            self.stdout.write(f"  Mail (invitations) is written to {settings.EMAIL_FILE_PATH}")
        if tenants.isolated():
            # Tenants run code on this machine: nothing of the portal's may answer them.
            problems = tenants.open_services()
            if problems:
                raise CommandError(
                    "Refusing to start: notebooks run tenants' code on this machine.\n  "
                    + "\n  ".join(problems))
            os.umask(0o077)  # what the portal writes (database, broker) is for it alone
        # Readable lines here, not production's JSON; each process keeps its metrics apart.
        env = {**os.environ, "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text")}
        if os.geteuid() == 0:
            # The worker starts each workspace's servers as that workspace's own OS user,
            # which takes root; it accepts JSON only (never pickle), so Celery's warning
            # against root, meant for pickle, is said once here in the portal's words.
            env["PYTHONWARNINGS"] = ",".join(filter(None, [
                env.get("PYTHONWARNINGS"),
                "ignore:You're running the worker with superuser privileges"]))
            self.stdout.write("  The worker runs as root: it starts each workspace's notebooks "
                              "as that workspace's own OS user (tasks are JSON, never pickle).")
        procs: dict[str, subprocess.Popen] = {}
        signals = Signals()
        try:
            for name, cmd in commands.items():
                # A signal waits until the child is in `procs`: one arriving inside Popen
                # would leave a child nobody stops.
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                try:
                    procs[name] = subprocess.Popen(cmd, preexec_fn=_die_with_parent, env={
                        **env, **(WORKER_ENV if name == "worker" else {}),
                        "PROMETHEUS_MULTIPROC_DIR": str(settings.VAR_DIR / "metrics" / name)})
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            self.stdout.write(self.style.SUCCESS(
                f"\n  {settings.SITE_NAME} is running at {scheme}://{host}:{port}\n"
                "  (web, worker and beat; press Ctrl-C to stop all of them and the local "
                "notebooks)\n"
            ))
            self.stdout.write(f"  Local notebooks: {tenants.mode_line()}\n")
            self.stdout.write(f"  {local_limits.mode_line()}\n")
            while all(p.poll() is None for p in procs.values()):
                time.sleep(0.5)
            dead = [name for name, p in procs.items() if p.poll() is not None]
            self.stderr.write(f"{', '.join(dead)} stopped; stopping the others.")
        except Stop:
            self.stdout.write("\nStopping… (Ctrl-C again to kill at once)")
        finally:
            killed = stop_all(procs, signals)
            if killed:
                self.stderr.write(f"Killed after {STOP_GRACE_S:g} s or a second signal: "
                                  f"{', '.join(killed)}.")
            # After the worker: nothing can start a server any more.
            stopped = stop_all_servers()
            self.stdout.write(
                f"Stopped {stopped} local notebook server{'s' if stopped != 1 else ''}; "
                "their files are kept, and they start again with the portal.\n")
