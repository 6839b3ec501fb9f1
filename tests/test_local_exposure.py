"""In isolated mode (the portal as root, tenants' code on the same machine) the portal refuses
to start while its Redis or PostgreSQL lets anyone in without a credential: a tenant's kernel
read the administrator's session from an open Redis once. With credentials required, as
production should have them, it starts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from .conftest import ROOT, wait_for
from .test_embedded_default import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root")

STRIPPED = ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "CHANNEL_LAYER_URL",
            "CELERY_QUEUE")


def env_for(var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    env.update(VAR_DIR=str(var_dir), LOCAL_USE_NVML="false", PORT=str(free_port()),
               WEB_CONCURRENCY="1", DEMO_PASSWORD="exposure-demo-42", **extra)
    return env


def runportal(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "manage.py", "runportal"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def refusal(env: dict[str, str], log: Path) -> str:
    proc = runportal(env, log)
    try:
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "is running at" not in text
    assert "Refusing to start: notebooks run tenants' code on this machine." in text
    return text


def test_an_open_redis_stops_the_portal_from_starting(tmp_path):
    env = env_for(tmp_path / "var", CELERY_BROKER_URL="redis://127.0.0.1:6379/13")
    text = refusal(env, tmp_path / "open-redis.log")
    assert ("Redis at 127.0.0.1:6379 (CELERY_BROKER_URL) answers without a password, so any "
            "tenant's notebook could read sessions and queue the portal's tasks.") in text
    assert "ACL SETUSER default off" in text


def test_a_trust_postgres_stops_the_portal_from_starting(tmp_path):
    db = settings.DATABASES["default"]
    env = env_for(tmp_path / "var", DATABASE_URL=(
        f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{db['NAME']}"))
    text = refusal(env, tmp_path / "trust-pg.log")
    assert (f"PostgreSQL at {db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432} lets the role "
            f"{db['USER']} in without a password (trust authentication)") in text
    assert "scram-sha-256" in text


@pytest.fixture
def redis_with_acl(tmp_path):
    """A scratch Redis as production should run it: the default user off, the portal's own
    user with a password."""
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\n'
                    f"dir {tmp_path}\nuser default off\n"
                    "user portal on >s3cret-pass ~* &* +@all\n")
    server = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(
            ["redis-cli", "-p", str(port), "--user", "portal", "--pass", "s3cret-pass",
             "--no-auth-warning", "ping"], capture_output=True, text=True).stdout.strip()
            == "PONG", timeout=10)
        yield f"redis://portal:s3cret-pass@127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def test_with_credentials_required_the_portal_starts(tmp_path, redis_with_acl):
    env = env_for(tmp_path / "var", CELERY_BROKER_URL=redis_with_acl)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    log = tmp_path / "portal.log"
    proc = runportal(env, log)
    try:
        wait_for(lambda: "is running at" in log.read_text() or proc.poll() is not None, 90)
        assert "is running at" in log.read_text(), log.read_text()[-3000:]
        assert "Refusing" not in log.read_text()
        time.sleep(1)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_every_way_in_is_looked_for(settings):
    """Not only the configured role over the configured address: the postgres role, TCP
    beside a socket, a RabbitMQ broker's guest login; a Redis that answers anything but an
    authentication error is open."""
    from clusters.backends.local import tenants

    db = settings.DATABASES["default"]
    settings.DATABASES = {"default": {**db, "USER": "no_such_role", "HOST": "",
                                      "NAME": "no_such_database"}}
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    settings.CACHE_URL = settings.CHANNEL_LAYER_URL = ""
    found = tenants.open_services()
    assert any(p.startswith("PostgreSQL at ") and "lets the role postgres in" in p
               for p in found), found
    if tenants._amqp_takes_guest("127.0.0.1", 5672):  # this machine's RabbitMQ, as shipped
        assert any(p.startswith("RabbitMQ at 127.0.0.1:5672") for p in found), found
