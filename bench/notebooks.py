"""How long a local notebook takes from "Deploy" to answering, beside a bare `jupyter lab`.

Both are timed in the same run until `GET /api/status` with the token answers 200. The
portal's path is the real one: the deploy service writes the row, the worker's steps prepare
the profile's environment (built once with uv, timed apart as `environment_first_s`) and
start the server in the instance's sandbox, as the workspace's OS user when run as root.
Uses a throwaway SQLite database; the OS users it creates are removed at the end.

    python bench/notebooks.py
"""

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="bench-notebooks-"))
WORK.chmod(0o711)  # the workspaces' OS users pass through to their sandboxes
os.environ.pop("DATABASE_URL", None)
os.environ.update(DJANGO_SETTINGS_MODULE="gpupaas.settings", VAR_DIR=str(WORK / "var"),
                  LOCAL_USE_NVML="false", CELERY_TASK_ALWAYS_EAGER="false",
                  LOCAL_USER_PREFIX=f"gpb{os.getpid()}-")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def wait_for_answer(port: int, token: str, started: float) -> float:
    from clusters.backends.local.jupyter import answers

    while not answers(port, token):
        if time.perf_counter() - started > 120:
            raise RuntimeError("no answer after 120 s")
        time.sleep(0.02)
    return time.perf_counter() - started


def bare_jupyter(run: int) -> float:
    from clusters.backends.local.jupyter import free_port

    port, token = free_port(), secrets.token_urlsafe(16)
    root = WORK / f"bare-{run}"
    root.mkdir()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(root / "rt")}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        return wait_for_answer(port, token, started)
    finally:
        process.terminate()
        process.wait(15)


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from clusters.backends.local import environments, tenants
    from clusters.backends.local.jupyter import read_runtime
    from instances import services as instance_services
    from notebooks import services
    from notebooks.models import NotebookProfile
    from portal.catalogue import seed_catalogue
    from workspaces.services import ensure_workspace

    call_command("migrate", verbosity=0)
    seed_catalogue()
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    workspace = ensure_workspace(user=user)
    from instances.models import ComputeProfile

    instance = instance_services.launch_instance(
        workspace=workspace, name="host", profile=ComputeProfile.objects.get(gpus=1), by=user)
    instance = instance_services.provision_instance(instance_id=instance.pk)
    minimal = NotebookProfile.objects.get(name="minimal")
    environment_first = environments.build_now(
        environments.environment(minimal.name, minimal.packages))

    portal, bare = [], []
    for run in range(RUNS):
        bare.append(bare_jupyter(run))
        started = time.perf_counter()
        notebook = services.deploy_notebook(instance=instance, name=f"nb-{run}",
                                            profile=minimal, by=user, cpu=1, memory_gib=1)
        notebook = services.advance_notebook(notebook_id=notebook.pk)  # the worker's first step
        folder = (Path(os.environ["VAR_DIR"]) / "sandboxes" / ".portal" / "local" /
                  instance.key / notebook.key)
        port = read_runtime(folder)["port"]
        portal.append(wait_for_answer(port, notebook.token, started))
        services.delete_notebook(notebook=notebook, by=user)
        services.teardown_notebook(notebook_id=notebook.pk)
        print(f"run {run + 1}: portal {portal[-1]:.2f}s, bare jupyter lab {bare[-1]:.2f}s")

    instance_services.delete_instance(instance=instance, by=user)
    instance_services.teardown_instance(instance_id=instance.pk)
    for name in tenants.portal_users():
        subprocess.run(["userdel", name], check=False)
    local, plain = statistics.median(portal), statistics.median(bare)
    print(f"notebooks: local_ready_s={local:.2f} bare_jupyter_s={plain:.2f} "
          f"overhead_s={local - plain:.2f} environment_first_s={environment_first:.1f}")


if __name__ == "__main__":
    main()
