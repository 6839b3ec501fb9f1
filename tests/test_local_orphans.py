"""No JupyterLab outlives what owns it: a late worker step never starts a server for a
deleted instance, every server is tracked before it starts, reconcile stops marked servers
nobody owns, and `make run`'s Ctrl-C stops them all (the next start brings them back)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clusters.backends import BackendError, get_backend
from clusters.backends.local import jupyter
from instances import services as instance_services
from notebooks import services
from notebooks.models import Notebook

from .conftest import ROOT, wait_for
from .test_notebooks_local import get, port_is_free, port_of, until

Status = Notebook.Status


def servers(sandbox_root) -> dict[str, int]:
    return jupyter.running_servers(str(sandbox_root))


def test_a_late_deploy_step_starts_nothing_for_a_deleted_instance(
    alice, alices_instance, minimal, sandbox_root
):
    notebook = services.deploy_notebook(instance=alices_instance, name="late",
                                        profile=minimal, by=alice)
    instance_services.delete_instance(instance=alices_instance, by=alice)
    instance_services.teardown_instance(instance_id=alices_instance.pk)

    notebook = services.advance_notebook(notebook_id=notebook.pk)  # the worker, too late

    assert notebook.status == Status.DELETED
    assert notebook.status_message == "Deleted with its instance."
    assert servers(sandbox_root) == {}
    assert not (sandbox_root / "local" / alices_instance.key).exists()


def test_the_backend_refuses_to_start_a_server_once_its_instance_is_deleted(
    alice, alices_instance, minimal, sandbox_root
):
    notebook = services.deploy_notebook(instance=alices_instance, name="racer",
                                        profile=minimal, by=alice)
    spec = services.notebook_spec(notebook)
    backend = get_backend(alices_instance.cluster)
    backend.delete_instance(alices_instance.key, spec.instance)

    with pytest.raises(BackendError, match="being deleted; nothing was started"):
        backend.ensure_notebook(spec)
    with pytest.raises(BackendError, match="was deleted"):
        backend.ensure_instance(spec.instance)  # nor is its sandbox made again
    assert servers(sandbox_root) == {}
    assert not (sandbox_root / "local" / alices_instance.key).exists()


def test_reconcile_stops_a_marked_server_that_no_live_notebook_owns(
    alice, alices_instance, minimal, sandbox_root
):
    kept = until(services.deploy_notebook(instance=alices_instance, name="kept",
                                          profile=minimal, by=alice), Status.RUNNING)
    lost = until(services.deploy_notebook(instance=alices_instance, name="lost",
                                          profile=minimal, by=alice), Status.RUNNING)
    # The portal forgot it: its row is history and its runtime record is gone.
    Notebook.objects.filter(pk=lost.pk).update(status=Status.DELETED)
    (sandbox_root / ".portal" / "local" / alices_instance.key / lost.key /
     "runtime.json").unlink()

    summary = services.reconcile_notebooks()

    assert summary["orphans_stopped"] == 1
    assert port_is_free(port_of(lost))
    assert get(kept.url.replace("/lab", "/api/status"), kept.token) == 200
    assert [sid.rsplit("/", 1)[1] for sid in servers(sandbox_root)] == [kept.key]


def test_deleting_an_instance_leaves_no_jupyterlab_process(
    alice, alices_instance, minimal, sandbox_root
):
    notebook = until(services.deploy_notebook(instance=alices_instance, name="gone",
                                              profile=minimal, by=alice), Status.RUNNING)
    from .kit.kernel import run_code

    # A kernel runs in a session of its own, outside the server's process group.
    kernel_pid = int(run_code(notebook.url, notebook.token, "import os; print(os.getpid())"))
    instance_services.delete_instance(instance=alices_instance, by=alice)
    instance_services.teardown_instance(instance_id=alices_instance.pk)

    assert servers(sandbox_root) == {}
    assert port_is_free(port_of(notebook))
    stat = Path(f"/proc/{kernel_pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_ctrl_c_on_make_run_stops_local_notebooks_and_says_they_come_back(
    alice, alices_instance, minimal, sandbox_root, tmp_path
):
    notebook = until(services.deploy_notebook(instance=alices_instance, name="session",
                                              profile=minimal, by=alice), Status.RUNNING)
    # The embedded default's database and broker (SQLite, files): as root the portal refuses
    # to start on this machine's open Redis and trust PostgreSQL (tests/test_local_exposure.py).
    env = {
        **{k: v for k, v in os.environ.items() if k not in (
            "DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "CHANNEL_LAYER_URL")},
        "PORT": str(jupyter.free_port()), "WEB_CONCURRENCY": "1",
        "LOCAL_SANDBOX_ROOT": str(sandbox_root), "VAR_DIR": str(tmp_path / "var"),
    }
    log = tmp_path / "runportal.log"
    with open(log, "w") as out:
        portal = subprocess.Popen([sys.executable, "manage.py", "runportal"], cwd=ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "is running at" in log.read_text() or portal.poll() is not None, 60)
        assert "Local notebooks: Each workspace's notebooks run as its own OS user." in (
            log.read_text()) or os.geteuid() != 0
        portal.send_signal(signal.SIGINT)
        portal.wait(60)
    finally:
        if portal.poll() is None:
            portal.kill()
    text = log.read_text()
    assert ("Stopped 1 local notebook server; their files are kept, and they start again "
            "with the portal.") in text
    assert port_is_free(port_of(notebook))
    assert servers(sandbox_root) == {}

    # The next start: reconcile brings it back.
    services.reconcile_notebooks()
    notebook = until(Notebook.objects.get(pk=notebook.pk), Status.RUNNING)
    assert get(notebook.url.replace("/lab", "/api/status"), notebook.token) == 200
