"""The fixed cast and the real parts the suite runs against.

alice and bob are end users with their own workspaces; `admin` is a portal administrator.
PostgreSQL and Redis are real (DATABASE_URL, CELERY_BROKER_URL; `make test` sets both).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from instances.models import ComputeProfile
from portal.catalogue import seed_catalogue, seed_groups
from workspaces.models import Workspace
from workspaces.services import ensure_workspace

ROOT = Path(__file__).resolve().parent.parent
# The Python processes the tests start import as production does, not a grammar they never
# use (tests/kit/helper_imports/rfc3987_syntax.py says why): read when each one starts.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "tests" / "kit" / "helper_imports"),
     *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

# Many tests send refused tokens from 127.0.0.1 on purpose (the IDOR matrix, the fuzzer):
# the per-address throttle of refused tokens is tested on its own (test_api.py), off
# elsewhere, here and in the portal processes tests start.
settings.API_INVALID_TOKEN_LIMIT = os.environ["API_INVALID_TOKEN_LIMIT"] = ""

# Persistent connections outlive the live server's thread and block dropping the test database.
for alias in settings.DATABASES:
    settings.DATABASES[alias]["CONN_MAX_AGE"] = 0
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="session")
def real_kube():
    """A real control plane from $KUBEBUILDER_ASSETS, once per session; skips without one."""
    from .kit import envtest

    binaries = envtest.assets()
    if binaries is None:
        pytest.skip(envtest.skip_reason())
    with envtest.running(binaries) as server:
        yield server


@pytest.fixture(scope="session")
def real_inner(real_kube):
    """A second real control plane, once per session: the cluster inside the virtual and
    dedicated instances of the real-server tests (their notebooks run there)."""
    from .kit import envtest, inner

    server = inner.RealInner(envtest.assets()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["emulator", "real"])
def kube(request):
    """The Kubernetes API the test runs against: the emulator, then the real server."""
    from .kit import targets

    if request.param == "real":
        with targets.on_real_server(request.getfixturevalue("real_kube")) as target:
            yield target
        return
    with targets.emulated() as target:
        yield target


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs two workers) each worker has its own test
    database (pytest-django names it) and, set here, its own Celery queue, which the worker
    processes its tests start consume (they inherit CELERY_QUEUE): two workers never take
    each other's tasks. OS users and sandboxes are per process already (local_root)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        from gpupaas.celery import app

        queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-{worker}"
        os.environ["CELERY_QUEUE"] = queue
        app.conf.task_default_queue = queue


@pytest.fixture(scope="session")
def local_root() -> Iterator[Path]:
    """One folder for the run's sandboxes and notebook environments, that the workspaces' OS
    users may pass through (pytest's own temporary folders are private to root). The OS
    users the run creates carry a prefix of its own and are removed at the end."""
    from clusters.backends.local import tenants

    root = Path(tempfile.mkdtemp(prefix="gpupaas-test-"))
    root.chmod(0o711)
    prefix = f"gpt{os.getpid()}-"
    os.environ["LOCAL_USER_PREFIX"] = prefix  # and the portals tests start as processes
    with override_settings(LOCAL_USER_PREFIX=prefix):
        yield root
        for name in tenants.portal_users():
            subprocess.run(["userdel", name], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def minimal_environment(local_root) -> Path:
    """The Minimal profile's environment (JupyterLab), built once per run with uv."""
    from clusters.backends.local import environments
    from portal.catalogue import LOCAL_ENVIRONMENTS

    with override_settings(LOCAL_ENV_ROOT=local_root / "envs"):
        env = environments.environment("minimal", tuple(
            environments.parse_packages(LOCAL_ENVIRONMENTS["minimal"][0])))
        environments.build_now(env)
    return env.path


@pytest.fixture(autouse=True)
def sandbox_root(settings, local_root) -> Iterator[Path]:
    """Local sandboxes go to a fresh folder per test, never into the checkout; any JupyterLab
    server a test left running there is stopped after it."""
    from clusters.backends.local import jupyter

    root = Path(tempfile.mkdtemp(prefix="sandboxes-", dir=local_root))
    settings.LOCAL_SANDBOX_ROOT = root
    settings.LOCAL_ENV_ROOT = local_root / "envs"
    settings.LOCAL_USE_NVML = False  # simulated slots, whatever the machine has
    settings.LOCAL_GPU_SLOTS = 8
    yield root
    for pid in jupyter.running_servers(str(root)).values():
        jupyter.stop_pid(pid)


@pytest.fixture(autouse=True)
def machine(monkeypatch):
    """This machine's size, as the pages and the room checks see it, is a fixed one under
    test (32 CPUs, 256 GiB): what a local instance gets (instances.selectors.allotment) is
    its size capped at the machine's, and the figures the tests expect must not depend on
    the box that runs them. The sandboxes' real limits are not touched."""
    from clusters.backends import local
    from instances import selectors, views

    fixed = local.MachineLimits(cpus=32, memory_gib=256)
    for module in (local, selectors, views):
        monkeypatch.setattr(module, "machine_limits", lambda: fixed)
    return fixed


@pytest.fixture(autouse=True)
def own_cache_namespace(settings) -> str:
    """Each test its own key prefix in the shared cache (Redis under test), so rate-limit
    counters and cached IdP keys of one test never reach the next. Returns the prefix."""
    prefix = f"test-{uuid.uuid4().hex}"
    settings.CACHES = {name: {**conf, "KEY_PREFIX": prefix}
                       for name, conf in settings.CACHES.items()}
    return prefix


def make_user(username: str, *, group: str | None = "Users", **extra):
    """A user in the seeded group `group` (end users by default; None: no role at all)."""
    user = get_user_model().objects.create_user(
        username, f"{username}@example.com", PASSWORD, **extra
    )
    if group:
        user.groups.add(seed_groups()[group])
        ensure_workspace(user=user)
    return user


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)


@pytest.fixture
def catalogue(db) -> dict[int, ComputeProfile]:
    """The default catalogue, keyed by GPU count (1, 2, 4, 6, 8)."""
    seed_catalogue()
    return {p.gpus: p for p in ComputeProfile.objects.all()}


@pytest.fixture
def alices_instance(alice, catalogue):
    """alice's 4-GPU instance on the local backend, provisioned."""
    return running_instance(alice, catalogue[4], "train")


@pytest.fixture
def minimal(catalogue, minimal_environment):
    """The seeded Minimal notebook profile, its environment built."""
    from notebooks.models import NotebookProfile

    return NotebookProfile.objects.get(name="minimal")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def workspace_of(user) -> Workspace:
    return Workspace.objects.get(owner=user)


def running_instance(user, profile: ComputeProfile, name: str):
    """An instance of `user`'s launched and provisioned here; a live worker may take the
    provisioning task first, so either way it waits for running."""
    from instances import services
    from instances.models import Instance

    instance = services.launch_instance(
        workspace=workspace_of(user), name=name, profile=profile, by=user)
    services.provision_instance(instance_id=instance.pk)
    return wait_for(lambda: Instance.objects.filter(pk=instance.pk, status="running").first())


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


@pytest.fixture
def celery_worker_process(transactional_db, sandbox_root, tmp_path_factory) -> Iterator[dict]:
    """A real Celery worker process on the real Redis broker, using the test database.

    One per test, stopped before the test's tables are flushed: a worker left running would
    pick up the tasks other tests enqueue and write while the flush truncates.
    """
    import redis

    from gpupaas.celery import app

    db = settings.DATABASES["default"]
    url = (
        f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    queue = app.conf.task_default_queue
    redis.Redis.from_url(app.conf.broker_url).delete(queue)  # nothing stale from earlier runs
    sandboxes = sandbox_root  # the worker and the test see the same sandboxes
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "LOCAL_SANDBOX_ROOT": str(sandboxes),
        "LOCAL_ENV_ROOT": str(settings.LOCAL_ENV_ROOT),
        "LOCAL_USER_PREFIX": settings.LOCAL_USER_PREFIX,
        "LOCAL_ISOLATION": settings.LOCAL_ISOLATION,
        "LOCAL_USE_NVML": "false",
        "LOCAL_GPU_SLOTS": "8",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "gpupaas", "worker", "--pool", "threads",
             "--concurrency", "4", "--loglevel", "INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "ready." in log_path.read_text() or proc.poll() is not None, 60)
        assert proc.poll() is None, log_path.read_text()
        yield {"sandboxes": sandboxes, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="session")
def portal_server(django_db_setup, live_server):
    """The live server, started after the test database so it stops before it is dropped."""
    return live_server


@pytest.fixture
def page(monkeypatch, tmp_path):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # around it are still plain synchronous calls. Request this fixture last: database work
    # done after it starts would open a connection nobody closes.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(ignore_https_errors=True)  # self-signed test portals
        page = context.new_page()
        page.set_default_timeout(20_000)
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            browser.close()


# The Kubernetes backend's fixtures (emulated cluster, portal Cluster, profiles), for every
# module; imported last because they use the helpers above.
from .kube_fixtures import (  # noqa: E402, F401
    api,
    capi,
    cluster,
    emu,
    flux,
    inside,
    notebook_setup,
    profiles,
    real,
    upstream,
)
