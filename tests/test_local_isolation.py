"""The local backend keeps tenants apart when the portal runs as root: each workspace's
notebooks run as its own OS user, in a clean environment, in a 0700 sandbox. Tried from the
attacker's side: code run through alice's real JupyterLab kernel goes after bob's files, bob's
token, the portal's secrets and the portal's environment. Where the portal is not root,
single-user mode says so and serves one workspace at a time."""

import json
import os
import pwd
import textwrap
import urllib.request
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from clusters.backends.local import jupyter, tenants
from instances import services as instance_services
from notebooks import services
from notebooks.models import Notebook, NotebookProfile

from .conftest import workspace_of
from .kit.kernel import run_code
from .test_notebooks_local import environ_of, until

Status = Notebook.Status
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="OS users need the portal to be root")


def running_notebook(user, catalogue, name: str) -> Notebook:
    instance = instance_services.launch_instance(
        workspace=workspace_of(user), name=f"{name}-box", profile=catalogue[1], by=user)
    instance = instance_services.provision_instance(instance_id=instance.pk)
    notebook = services.deploy_notebook(
        instance=instance, name=name, profile=NotebookProfile.objects.get(name="minimal"),
        by=user, gpus=1)
    return until(notebook, Status.RUNNING)


def server_pid(sandbox_root: Path, notebook: Notebook) -> int:
    control = sandbox_root / ".portal" / "local" / notebook.instance.key / notebook.key
    return jupyter.read_runtime(control)["pid"]


def put_file(notebook: Notebook, path: str, text: str) -> None:
    body = json.dumps({"type": "file", "format": "text", "content": text}).encode()
    request = urllib.request.Request(
        notebook.url.replace("/lab", f"/api/contents/{path}"), data=body, method="PUT",
        headers={"Authorization": f"token {notebook.token}",
                 "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


ATTACK = """
import json, os, urllib.request, urllib.error
def attempt(what, action):
    try:
        return what, "GOT " + repr(action())[:200]
    except Exception as exc:
        return what, type(exc).__name__
def contents_without_token(port):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{{port}}/api/contents", timeout=5)
        return "open"
    except urllib.error.HTTPError as exc:
        return exc.code
results = dict([
    attempt("bob's file", lambda: open({bob_file!r}).read()),
    attempt("bob's sandbox", lambda: os.listdir({bob_sandbox!r})),
    attempt("all sandboxes", lambda: os.listdir({sandboxes!r})),
    attempt("bob's token", lambda: open("/proc/{bob_pid}/environ", "rb").read()),
    attempt("portal's environment", lambda: open("/proc/{portal_pid}/environ", "rb").read()),
    attempt("secret key", lambda: open({secret_key!r}).read()),
    attempt("var folder", lambda: os.listdir({var!r})),
    attempt("portal database", lambda: open({database!r}, "rb").read(16)),
    attempt("bob's server", lambda: contents_without_token({bob_port})),
])
print(json.dumps({{"results": results, "uid": os.getuid(), "env": sorted(os.environ)}}))
"""


@root_only
def test_alices_notebook_cannot_reach_bobs_files_token_or_the_portals_secrets(
    alice, bob, catalogue, minimal_environment, sandbox_root, settings, tmp_path
):
    # The embedded default's var folder, as a careless umask left it: readable by all.
    settings.VAR_DIR = sandbox_root.parent / f"var-{tmp_path.name}"
    settings.VAR_DIR.mkdir(mode=0o755)
    for name in ("secret_key", "portal.sqlite3"):
        (settings.VAR_DIR / name).write_text("do not read")
        (settings.VAR_DIR / name).chmod(0o644)
    hers = running_notebook(alice, catalogue, "hers")
    his = running_notebook(bob, catalogue, "his")
    put_file(his, "secret.txt", "bob's unpublished results")
    bob_sandbox = sandbox_root / "local" / his.instance.key

    code = ATTACK.format(
        bob_file=str(bob_sandbox / "work" / "secret.txt"), bob_sandbox=str(bob_sandbox),
        sandboxes=str(sandbox_root / "local"), bob_pid=server_pid(sandbox_root, his),
        portal_pid=os.getpid(), secret_key=str(settings.VAR_DIR / "secret_key"),
        var=str(settings.VAR_DIR), database=str(settings.VAR_DIR / "portal.sqlite3"),
        bob_port=his.url.split(":")[2].split("/")[0],
    )
    report = json.loads(run_code(hers.url, hers.token, textwrap.dedent(code)))

    # Where the portal's var folder lives under /tmp (as here), the notebook's private /tmp
    # does not even show it; elsewhere its permissions refuse it.
    hidden = {k: "PermissionError" for k in ("secret key", "var folder", "portal database")
              if report["results"].get(k) == "FileNotFoundError"
              and str(settings.VAR_DIR).startswith("/tmp/")}
    assert report["results"] | hidden == {
        "bob's file": "PermissionError",
        "bob's sandbox": "PermissionError",
        "all sandboxes": "PermissionError",
        "bob's token": "PermissionError",
        "portal's environment": "PermissionError",
        "secret key": "PermissionError",
        "var folder": "PermissionError",
        "portal database": "PermissionError",
        "bob's server": "GOT 403",  # no token, no entry
    }
    alice_user = pwd.getpwnam(tenants.username(str(workspace_of(alice).pk)))
    bob_user = pwd.getpwnam(tenants.username(str(workspace_of(bob).pk)))
    assert report["uid"] == alice_user.pw_uid != bob_user.pw_uid
    assert report["uid"] != 0
    # Nothing of the portal's own environment (DATABASE_URL, SECRET_KEY, the broker ...)
    # reaches the kernel; only names any process has, with the notebook's own values.
    assert "DATABASE_URL" in os.environ and "DATABASE_URL" not in report["env"]
    assert set(report["env"]) & set(os.environ) <= {"HOME", "PATH", "SHELL", "LANG", "TERM"}


@root_only
def test_each_workspace_gets_its_own_os_user_and_a_private_sandbox(
    alice, catalogue, minimal_environment, sandbox_root, settings
):
    notebook = running_notebook(alice, catalogue, "mine")
    user = pwd.getpwnam(tenants.username(str(workspace_of(alice).pk)))
    sandbox = sandbox_root / "local" / notebook.instance.key

    assert user.pw_name == (f"{settings.LOCAL_USER_PREFIX}{tenants.install_id()}-"
                            f"{workspace_of(alice).pk}")
    assert user.pw_shell == "/usr/sbin/nologin"
    assert (sandbox.stat().st_uid, oct(sandbox.stat().st_mode & 0o777)) == (user.pw_uid, "0o700")
    assert oct((sandbox_root / "local").stat().st_mode & 0o777) == "0o711"
    pid = server_pid(sandbox_root, notebook)
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Uid:\t{user.pw_uid}\t" in status
    env = environ_of(pid)
    assert set(env) == {"JUPYTER_TOKEN", "CUDA_VISIBLE_DEVICES", "HOME", "PATH", "SHELL", "LANG"}
    assert env["HOME"] == str(sandbox)
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, notebook.gpu_indices))
    # The portal's control files (where the server's pid and log live) are root's alone.
    assert oct((sandbox_root / ".portal" / "local").stat().st_mode & 0o777) == "0o700"


def test_single_user_mode_says_so_runs_notebooks_as_the_portal_and_serves_one_workspace(
    alice, bob, catalogue, minimal_environment, sandbox_root, settings, client
):
    settings.LOCAL_ISOLATION = "single-user"
    notebook = running_notebook(alice, catalogue, "solo")

    env = environ_of(server_pid(sandbox_root, notebook))
    assert "DATABASE_URL" not in env and "SECRET_KEY" not in env
    assert f"Uid:\t{os.getuid()}\t" in Path(
        f"/proc/{server_pid(sandbox_root, notebook)}/status").read_text()
    client.force_login(alice)
    page = client.get(f"/instances/{notebook.instance.pk}/").content.decode()
    assert "Single-user mode: notebooks run as you" in page

    bobs = instance_services.provision_instance(instance_id=instance_services.launch_instance(
        workspace=workspace_of(bob), name="his-box", profile=catalogue[1], by=bob).pk)
    minimal = NotebookProfile.objects.get(name="minimal")
    with pytest.raises(ValidationError, match="serves one workspace at a time"):
        services.deploy_notebook(instance=bobs, name="his", profile=minimal, by=bob)

    settings.LOCAL_SINGLE_USER_SHARED = True
    assert services.deploy_notebook(instance=bobs, name="his", profile=minimal, by=bob).pk


@root_only
def test_the_root_mode_page_names_the_isolation(alice_client, alice, catalogue):
    instance = instance_services.provision_instance(instance_id=instance_services.launch_instance(
        workspace=workspace_of(alice), name="box", profile=catalogue[1], by=alice).pk)
    page = alice_client.get(f"/instances/{instance.pk}/").content.decode()
    assert "notebooks run as its own OS user" in page
    assert "Single-user mode" not in page


def test_the_admin_sees_who_local_notebooks_run_as(admin_user, client, catalogue, settings):
    from clusters.models import Cluster

    settings.LOCAL_ISOLATION = "single-user"
    client.force_login(admin_user)
    local = Cluster.objects.get(name="local")

    page = client.get(f"/admin/clusters/cluster/{local.pk}/change/").content.decode()

    assert "Single-user mode: notebooks run as you (the portal&#x27;s OS user)." in page


@root_only
def test_a_link_planted_in_the_sandbox_does_not_make_the_portal_write_elsewhere(
    alice, catalogue, sandbox_root, tmp_path
):
    from clusters.backends import get_backend

    instance = instance_services.provision_instance(instance_id=instance_services.launch_instance(
        workspace=workspace_of(alice), name="box", profile=catalogue[1], by=alice).pk)
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    sandbox = sandbox_root / "local" / instance.key
    tenant = pwd.getpwnam(tenants.username(str(workspace_of(alice).pk)))
    # alice, as her OS user, swaps the portal's file for a link to one of root's.
    os.unlink(sandbox / "instance.json")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only drops privileges and plants the link
        os.setgid(tenant.pw_gid)
        os.setuid(tenant.pw_uid)
        os.symlink(victim, sandbox / "instance.json")
        os._exit(0)
    os.waitpid(pid, 0)
    assert (sandbox / "instance.json").is_symlink()

    get_backend(instance.cluster).reconcile_instances([instance_services.instance_spec(instance)])

    assert victim.read_text() == "root's file"
    assert not (sandbox / "instance.json").is_symlink()
    assert json.loads((sandbox / "instance.json").read_text())["key"] == instance.key
