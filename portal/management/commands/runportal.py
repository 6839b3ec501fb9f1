import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from clusters.backends.local import limits as local_limits
from clusters.backends.local import stop_all_servers, tenants


def stop_like_ctrl_c(signum: int, frame: object) -> None:
    """A TERM (from a process manager or `kill`) stops everything, as Ctrl-C does."""
    raise KeyboardInterrupt


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
            "worker": [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2"],
            "beat": [
                *celery, "beat", "--loglevel", "INFO",
                "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        }
        if settings.EMAIL_BACKEND.endswith("filebased.EmailBackend"):
            # No mail server in the embedded default: invitations land here as files.
            settings.EMAIL_FILE_PATH.mkdir(parents=True, exist_ok=True)
            self.stdout.write(f"  Mail (invitations) is written to {settings.EMAIL_FILE_PATH}")
        signal.signal(signal.SIGTERM, stop_like_ctrl_c)
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
        procs = {name: subprocess.Popen(cmd, env={
            **env, "PROMETHEUS_MULTIPROC_DIR": str(settings.VAR_DIR / "metrics" / name)})
            for name, cmd in commands.items()}
        self.stdout.write(self.style.SUCCESS(
            f"\n  {settings.SITE_NAME} is running at {scheme}://{host}:{port}\n"
            "  (web, worker and beat; press Ctrl-C to stop all of them and the local "
            "notebooks)\n"
        ))
        self.stdout.write(f"  Local notebooks: {tenants.mode_line()}\n")
        self.stdout.write(f"  {local_limits.mode_line()}\n")
        try:
            while all(p.poll() is None for p in procs.values()):
                time.sleep(0.5)
            dead = [name for name, p in procs.items() if p.poll() is not None]
            self.stderr.write(f"{', '.join(dead)} stopped; stopping the others.")
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
            # After the worker: nothing can start a server any more.
            stopped = stop_all_servers()
            self.stdout.write(
                f"Stopped {stopped} local notebook server{'s' if stopped != 1 else ''}; "
                "their files are kept, and they start again with the portal.\n")
