"""The local tenants' OS users, from the administrator's side: two portals on one machine
never share an account, an account from before install ids keeps its files through the
upgrade, and an account whose workspace is gone is removed only once nothing of it is left
(a freed uid goes to the next new account, with whatever files it still owned)."""

import io
import os
import pwd
import subprocess

import pytest
from django.core.management import call_command

from clusters.backends import BackendError
from clusters.backends.local import tenants
from instances.models import Instance

from .conftest import running_instance, workspace_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="OS users need the portal to be root")


def exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def reconcile() -> str:
    call_command("reconcile", stdout=(out := io.StringIO()))
    return out.getvalue()


def test_two_portals_on_one_machine_give_workspace_1_two_different_os_users(
    settings, sandbox_root, tmp_path
):
    first = tenants.ensure_tenant("1")
    settings.LOCAL_SANDBOX_ROOT = tmp_path / "other-portal"  # same prefix, another install
    second = tenants.ensure_tenant("1")

    assert first.name != second.name and first.uid != second.uid
    assert first.name.startswith(settings.LOCAL_USER_PREFIX) and first.name.endswith("-1")
    # Each portal's account says whose it is, and neither portal takes the other's.
    assert pwd.getpwnam(first.name).pw_gecos != pwd.getpwnam(second.name).pw_gecos
    settings.LOCAL_SANDBOX_ROOT = sandbox_root
    assert tenants.ensure_tenant("1") == first  # the same install id, kept in its root
    with pytest.raises(BackendError, match="not created by the portal"):
        tenants.ensure_os_user(second.name, tenants.comment())


def test_an_account_from_before_install_ids_is_renamed_and_keeps_its_files(
    alice, catalogue, sandbox_root, settings
):
    instance = running_instance(alice, catalogue[2], "kept")
    sandbox = sandbox_root / "local" / instance.key
    workspace = str(workspace_of(alice).pk)
    name, legacy = tenants.username(workspace), f"{settings.LOCAL_USER_PREFIX}{workspace}"
    uid = pwd.getpwnam(name).pw_uid
    results = sandbox / "results.txt"
    results.write_text("a month of training")
    os.chown(results, uid, uid)
    # As an install from before this release left it: gpw-<workspace>, the old comment.
    subprocess.run(["usermod", "--login", legacy, "--comment", "gpupaas workspace", name],
                   check=True)
    subprocess.run(["groupmod", "--new-name", legacy, name], check=True)

    reconcile()  # the upgraded portal's first pass

    instance.refresh_from_db()
    assert instance.status == Instance.Status.RUNNING, instance.status_message
    assert not exists(legacy)
    entry = pwd.getpwnam(name)
    assert entry.pw_uid == uid and entry.pw_gecos == tenants.comment()
    assert results.stat().st_uid == uid and sandbox.stat().st_uid == uid


def legacy(alice, sandbox_root, settings) -> tuple[str, str, int]:
    """Turn alice's account back into what an install from before this release made."""
    workspace = str(workspace_of(alice).pk)
    name, old = tenants.username(workspace), f"{settings.LOCAL_USER_PREFIX}{workspace}"
    subprocess.run(["usermod", "--login", old, "--comment", "gpupaas workspace", name],
                   check=True)
    subprocess.run(["groupmod", "--new-name", old, name], check=True)
    return name, old, pwd.getpwnam(old).pw_uid


def test_an_old_account_with_a_process_running_keeps_serving_until_it_can_be_renamed(
    alice, catalogue, sandbox_root, settings
):
    instance = running_instance(alice, catalogue[2], "busy")
    name, old, uid = legacy(alice, sandbox_root, settings)
    kernel = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                               "--clear-groups", "sleep", "60"])  # usermod refuses now
    try:
        reconcile()
        instance.refresh_from_db()
        assert instance.status == Instance.Status.RUNNING, instance.status_message
        assert exists(old) and not exists(name)
    finally:
        kernel.kill()
        kernel.wait()
    reconcile()
    assert pwd.getpwnam(name).pw_uid == uid and not exists(old)


def test_a_new_instance_adopts_the_old_account_that_owns_the_workspaces_sandboxes(
    alice, catalogue, sandbox_root, settings
):
    running_instance(alice, catalogue[2], "before")
    name, old, uid = legacy(alice, sandbox_root, settings)

    after = running_instance(alice, catalogue[2], "after")  # a sandbox of its own, new

    assert after.status == Instance.Status.RUNNING, after.status_message
    assert pwd.getpwnam(name).pw_uid == uid and not exists(old)
    assert (sandbox_root / "local" / after.key).stat().st_uid == uid


def test_a_sandbox_another_portals_account_owns_is_refused_in_words(sandbox_root, tmp_path,
                                                                     settings):
    sandbox = sandbox_root / "local" / "inst-7"
    sandbox.mkdir(parents=True)
    settings.LOCAL_SANDBOX_ROOT = tmp_path / "other-portal"
    theirs = tenants.ensure_tenant("7")
    os.chown(sandbox, theirs.uid, theirs.gid)
    settings.LOCAL_SANDBOX_ROOT = sandbox_root

    with pytest.raises(BackendError, match=r"belongs to uid \d+, not to .*chown -R"):
        tenants.ensure_tenant("7", sandbox)
    assert sandbox.stat().st_uid == theirs.uid  # nothing handed over


def test_an_account_whose_workspace_is_gone_is_removed_once_nothing_of_it_is_left(
    alice, catalogue, sandbox_root, settings, tmp_path
):
    running_instance(alice, catalogue[2], "hers")
    hers = tenants.username(str(workspace_of(alice).pk))
    gone = tenants.ensure_tenant("990001")  # a workspace deleted since
    # Its instance's sandbox was quarantined (its row is gone, the folder stays for a while).
    quarantined = sandbox_root / "local" / "inst-990001"
    quarantined.mkdir()
    os.chown(quarantined, gone.uid, gone.gid)
    settings.LOCAL_SANDBOX_ROOT = tmp_path / "other-portal"
    other_portals = tenants.ensure_tenant("990002")  # no workspace here, and not ours
    settings.LOCAL_SANDBOX_ROOT = sandbox_root

    assert "accounts_removed=0" in reconcile()
    assert exists(gone.name) and exists(hers)
    call_command("local_accounts", stdout=(out := io.StringIO()))
    assert f"{gone.name}\tuid {gone.uid}\tworkspace 990001\tkept by the sandbox " \
           f"{quarantined}" in out.getvalue()
    assert f"{hers}\t" in out.getvalue() and "kept by its workspace" in out.getvalue()
    assert other_portals.name not in out.getvalue()

    quarantined.rmdir()
    call_command("local_accounts", stdout=(out := io.StringIO()))
    assert f"{gone.name}\tuid {gone.uid}\tworkspace 990001\tworkspace gone: removable" \
           in out.getvalue()
    # A daemon its notebook left behind, forking to stay ahead of a scan: stopped with it.
    leftover = subprocess.Popen(["setpriv", f"--reuid={gone.uid}", f"--regid={gone.gid}",
                                 "--clear-groups", "sleep", "60"])
    try:
        assert "accounts_removed=1" in reconcile()
        assert leftover.wait(10) == -9
    finally:
        leftover.kill()
    assert not exists(gone.name)
    assert exists(hers) and exists(other_portals.name)  # the live one, another portal's


def test_a_removed_accounts_uid_is_never_given_to_a_new_tenant(db, sandbox_root):
    """useradd gives the highest uid + 1: the last account removed would hand its uid, and
    any file or process still carrying it, to the next workspace."""
    first = tenants.ensure_tenant("990005")
    assert tenants.remove_stale_accounts(lambda: set()) == [first.name]

    second = tenants.ensure_tenant("990006")
    assert second.uid > first.uid and second.gid > first.gid


def test_local_accounts_removes_on_request_and_says_so(db, sandbox_root):
    gone = tenants.ensure_tenant("990003")
    call_command("local_accounts", "--remove", stdout=(out := io.StringIO()))
    assert f"{gone.name}\tuid {gone.uid}\tworkspace 990003\tremoved" in out.getvalue()
    assert not exists(gone.name)
