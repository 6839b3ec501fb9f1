"""Notebooks on the local backend are real JupyterLab servers: reachable with their token,
refused without it, confined to their instance's GPU slots, stopped on delete."""

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from clusters.backends.local import jupyter
from instances import services as instance_services
from notebooks import services
from notebooks.models import Notebook

Status = Notebook.Status


def until(notebook: Notebook, status: str, step=services.advance_notebook,
          timeout: float = 60) -> Notebook:
    deadline = time.monotonic() + timeout
    while notebook.status != status:
        assert time.monotonic() < deadline, (
            f"{notebook.status}: {notebook.status_message} {notebook.status_detail}")
        time.sleep(0.2)
        notebook = step(notebook_id=notebook.pk)
    return notebook


def get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0  # nothing listening


def port_of(notebook: Notebook) -> int:
    return int(notebook.url.split(":")[2].split("/")[0])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def environ_of(pid: int) -> dict[str, str]:
    """The process's environment; empty once it is gone (or a zombie about to be)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (ProcessLookupError, FileNotFoundError):
        return {}
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_notebook_runs_answers_with_its_token_and_stops_on_delete(
    alice, alices_instance, minimal, sandbox_root
):
    notebook = services.deploy_notebook(
        instance=alices_instance, name="explore", profile=minimal, by=alice, gpus=2)
    assert notebook.status == Status.DEPLOYING
    assert notebook.token not in notebook.token_encrypted  # encrypted at rest

    notebook = until(notebook, Status.RUNNING)

    assert notebook.step == "reachable" and notebook.url.startswith("http://127.0.0.1:")
    api = notebook.url.replace("/lab", "/api/status")
    assert get(api, notebook.token) == 200
    assert get(api) == 403
    assert get(api, "not-the-token") == 403
    runtime = sandbox_root / ".portal" / "local" / alices_instance.key / notebook.key
    pid = jupyter.read_runtime(runtime)["pid"]
    env = environ_of(pid)
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, notebook.gpu_indices))
    assert set(notebook.gpu_indices) <= set(alices_instance.gpu_indices)
    assert env["JUPYTER_TOKEN"] == notebook.token

    port = port_of(notebook)
    services.delete_notebook(notebook=notebook, by=alice)
    notebook = until(Notebook.objects.get(pk=notebook.pk), Status.DELETED,
                     step=services.teardown_notebook)
    assert port_is_free(port)
    assert not Path(f"/proc/{pid}").exists() or not environ_of(pid)


def test_two_notebooks_share_an_instance_without_sharing_gpus(
    alice, alices_instance, minimal
):
    first = services.deploy_notebook(instance=alices_instance, name="a", profile=minimal,
                                     by=alice, gpus=2, cpu=2, memory_gib=4)
    second = services.deploy_notebook(instance=alices_instance, name="b", profile=minimal,
                                      by=alice, gpus=2, cpu=2, memory_gib=4)
    assert set(first.gpu_indices).isdisjoint(second.gpu_indices)
    assert sorted(first.gpu_indices + second.gpu_indices) == sorted(alices_instance.gpu_indices)


def test_reconcile_restarts_a_server_that_died(alice, alices_instance, minimal, sandbox_root):
    notebook = until(services.deploy_notebook(
        instance=alices_instance, name="phoenix", profile=minimal, by=alice), Status.RUNNING)
    old_port = port_of(notebook)
    for pid in jupyter.running_servers(str(sandbox_root)).values():
        jupyter.stop_pid(pid)
    assert get(notebook.url.replace("/lab", "/api/status"), notebook.token) == 0

    summary = services.reconcile_notebooks()

    assert summary["restored"] == 1
    notebook = Notebook.objects.get(pk=notebook.pk)
    assert notebook.status == Status.DEPLOYING
    assert notebook.status_message == "Restarting: Starting JupyterLab."
    notebook = until(notebook, Status.RUNNING)
    assert get(notebook.url.replace("/lab", "/api/status"), notebook.token) == 200
    assert port_of(notebook) != old_port
    services.delete_notebook(notebook=notebook, by=alice)
    until(Notebook.objects.get(pk=notebook.pk), Status.DELETED, step=services.teardown_notebook)


def test_deleting_the_instance_stops_its_notebooks_first(alice, alices_instance, minimal):
    notebook = until(services.deploy_notebook(
        instance=alices_instance, name="doomed", profile=minimal, by=alice), Status.RUNNING)
    port = port_of(notebook)

    instance_services.delete_instance(instance=alices_instance, by=alice)
    instance_services.teardown_instance(instance_id=alices_instance.pk)
    assert port_is_free(port)

    services.reconcile_notebooks()
    notebook.refresh_from_db()
    assert notebook.status == Status.DELETED
    assert notebook.status_message == "Deleted with its instance."


def test_a_port_taken_as_the_server_starts_is_given_up_for_another(
    alice, alices_instance, minimal, monkeypatch
):
    """Between finding a free port and JupyterLab binding it, another process may take it
    (two workers starting servers at once): the server is started again on another."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    handed = iter([port])
    real = jupyter.free_port
    monkeypatch.setattr(jupyter, "free_port", lambda: next(handed, None) or real())
    try:
        notebook = until(services.deploy_notebook(
            instance=alices_instance, name="raced", profile=minimal, by=alice), Status.RUNNING)
    finally:
        taken.close()
    assert port_of(notebook) != port
    assert get(notebook.url.replace("/lab", "/api/status"), notebook.token) == 200
