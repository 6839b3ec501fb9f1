"""An upgrade from the previous release (docs/operations.md, "Upgrading"): a database that
release populated is migrated by this one, and everything in it still works (the instance,
the API token, delete, a new launch); and the previous release's code keeps working on the
migrated database, as the docs promise for rolling upgrades."""

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from .conftest import ROOT

# The release before this one: main as the previous stop landed it.
PREVIOUS_RELEASE = "996874b187d8210b662034725bee100f8533f429"

POPULATE = """
from django.core.management import call_command
call_command("migrate", "--noinput", verbosity=0)
call_command("bootstrap")
from django.contrib.auth import get_user_model
from api.services import create_api_token
from instances import services
from instances.models import ComputeProfile
from workspaces.services import ensure_workspace

from django.contrib.auth.models import Group
alice = get_user_model().objects.create_user("alice", "alice@example.com", "upgrade-pw-42")
alice.groups.add(Group.objects.get(name="Users"))  # seeded by bootstrap: end users
workspace = ensure_workspace(user=alice)
profile = ComputeProfile.objects.filter(cluster__backend="local", gpus=1).first()
instance = services.launch_instance(workspace=workspace, name="before", profile=profile,
                                    by=alice)
instance = services.provision_instance(instance_id=instance.pk)
_, token = create_api_token(user=alice, name="ci", days=30, scope="write")
print("RESULT", json.dumps({"instance": instance.pk, "status": instance.status,
                           "token": token}))
"""

# Run by either release's code against the database: what a user does with what is there.
USE = """
from django.contrib.auth import get_user_model
from django.test import Client
from instances import services
from instances.models import ComputeProfile, Instance

alice = get_user_model().objects.get(username="alice")
listed = Client(HTTP_HOST="127.0.0.1").get(
    "/api/v1/instances", HTTP_AUTHORIZATION="Bearer " + TOKEN).json()
names = sorted(item["name"] for item in listed["items"])
profile = ComputeProfile.objects.filter(cluster__backend="local", gpus=1).first()
fresh = services.launch_instance(workspace=alice.workspace, name=NAME, profile=profile, by=alice)
fresh = services.provision_instance(instance_id=fresh.pk)
from clusters.models import Cluster  # what the admin's "Add cluster" writes
Cluster.objects.create(name=NAME, display_name=NAME, backend="local")
"""
USED = USE + """print("RESULT", json.dumps({"listed": names, "launched": fresh.status}))
"""

# This release's code: what a user does, then the instance from before is deleted and the
# reconcile pass finds nothing it does not know.
FINISH = USE + """
before = Instance.objects.get(name="before")
services.delete_instance(instance=before, by=alice)
before = services.teardown_instance(instance_id=before.pk)
summary = services.reconcile_instances()
print("RESULT", json.dumps({"listed": names, "launched": fresh.status,
                           "deleted": before.status, "quarantined": summary.quarantined,
                           "errors": summary.errors}))
"""


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory) -> Path:
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e",
                            f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True)
    if known.returncode:
        pytest.skip(f"the previous release {PREVIOUS_RELEASE[:7]} is not in this clone's "
                    "history (a shallow clone)")
    tree = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


@pytest.fixture
def database() -> str:
    """A database of its own, as an installation has (not the test database)."""
    db = settings.DATABASES["default"]
    where = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']}"
    name = f"gpupaas_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{where} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"
    with psycopg.connect(f"{where} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(tree: Path, env: dict[str, str], *args: str, script: str = "",
           **names: str) -> dict:
    """`manage.py` of the release in `tree`; with a script, run in its shell and its RESULT
    line returned."""
    command = [sys.executable, "manage.py", *args]
    if script:
        preamble = "import json\n" + "".join(f"{k} = {v!r}\n" for k, v in names.items())
        command = [sys.executable, "manage.py", "shell", "-c",
                   preamble + textwrap.dedent(script)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{' '.join(command[:4])} in {tree}:\n{done.stderr[-3000:]}"
    if not script:
        return {}
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_a_database_of_the_previous_release_is_upgraded_with_everything_working(
    previous_release, database, sandbox_root, tmp_path
):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_QUEUE")}
    env.update(DATABASE_URL=database, VAR_DIR=str(tmp_path / "var"),
               LOCAL_SANDBOX_ROOT=str(sandbox_root), LOCAL_ENV_ROOT=str(settings.LOCAL_ENV_ROOT),
               LOCAL_USE_NVML="false", LOCAL_GPU_SLOTS="8", CELERY_TASK_ALWAYS_EAGER="true",
               LOCAL_ISOLATION=settings.LOCAL_ISOLATION,
               LOCAL_USER_PREFIX=settings.LOCAL_USER_PREFIX, LOG_LEVEL="WARNING")
    # The previous release migrates an empty database, seeds it and is used.
    populated = manage(previous_release, env, script=POPULATE)
    assert populated["status"] == "running"

    manage(ROOT, env, "migrate", "--noinput", "-v0")  # this release's migrations

    # The previous release's code still runs on the migrated schema (rolling upgrade)...
    old = manage(previous_release, env, script=USED, TOKEN=populated["token"], NAME="old-code")
    assert old == {"listed": ["before"], "launched": "running"}
    # ...and this release's finds everything as it was.
    new = manage(ROOT, env, script=FINISH, TOKEN=populated["token"], NAME="new-code")
    assert new == {"listed": ["before", "old-code"], "launched": "running",
                   "deleted": "deleted", "quarantined": 0, "errors": 0}
