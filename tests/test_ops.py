"""What operators see: liveness and readiness probes, Prometheus metrics scraped from live
servers (gunicorn with uvicorn workers, a Celery worker), and logs that carry the request id
from the request into the tasks it enqueued."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection
from django.test import Client

from gpupaas.celery import app as celery_app
from instances.models import Instance
from portal import ops

from .conftest import ROOT, make_user, wait_for
from .kit.asgi import serve

TOKEN = "metrics-token-for-tests"
BEARER = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[str, float]:
    """`name{label="v",...}` -> value, labels sorted, from Prometheus' text format."""
    found = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        pairs = sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        found[name + "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"] = float(value)
    return found


def series(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# --- probes --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_answers_a_kubelet_by_pod_address_without_session_or_query(
        alice_client, settings, django_assert_num_queries):
    settings.SECURE_SSL_REDIRECT = True  # probes speak plain HTTP to the pod
    with django_assert_num_queries(0):
        response = alice_client.get("/healthz", HTTP_HOST="10.244.3.17:8000")
    assert response.status_code == 200
    assert response.content == b"ok\n"
    assert "Set-Cookie" not in response.headers and not response.cookies


@pytest.mark.django_db
def test_readyz_says_ready_when_database_broker_and_migrations_are(client):
    response = client.get("/readyz", HTTP_HOST="10.244.3.17:8000")
    assert response.status_code == 200
    assert response.content.decode().splitlines() == [
        "ready", "database: ok", "migrations: ok", "broker: ok"]
    assert not response.cookies


@pytest.mark.django_db
def test_readyz_names_the_broker_when_it_does_not_answer(client, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    lines = response.content.decode().splitlines()
    assert lines[0] == "not ready: broker"
    assert lines[1:3] == ["database: ok", "migrations: ok"]
    assert lines[3].startswith("broker: ") and "refused" in lines[3].lower()


@pytest.mark.django_db
def test_readyz_names_migrations_not_applied(client, monkeypatch):
    monkeypatch.setattr(ops, "_migrated", False)
    with connection.cursor() as cursor:  # as if the release step had not run yet
        cursor.execute("DELETE FROM django_migrations WHERE app = 'access'")
    response = client.get("/readyz")
    assert response.status_code == 503
    lines = response.content.decode().splitlines()
    assert lines[0] == "not ready: migrations"
    from django.db.migrations.loader import MigrationLoader

    count = sum(app == "access" for app, _ in MigrationLoader(connection).disk_migrations)
    assert lines[2] == f"migrations: {count} not applied (first: access.0001_initial)"


# --- metrics: who may read them ------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_are_off_until_a_token_or_network_is_configured(client, settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = "", []
    response = client.get("/metrics")
    assert response.status_code == 404
    assert b"METRICS_TOKEN" in response.content


@pytest.mark.django_db
def test_metrics_need_the_token(client, settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = TOKEN, []
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer guess").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=TOKEN).status_code == 401  # no scheme
    response = client.get("/metrics", **BEARER)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "gpupaas_instances" in response.content.decode()


@pytest.mark.django_db
def test_metrics_by_network_only_for_direct_peers_never_through_the_proxy(client, settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = "", ["10.244.0.0/16"]
    assert client.get("/metrics", REMOTE_ADDR="10.244.7.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.245.0.1").status_code == 401
    # The ingress controller sits in the pod network too: what it forwards is refused.
    forwarded = client.get("/metrics", REMOTE_ADDR="10.244.7.1",
                           HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert forwarded.status_code == 401


# --- metrics recorded in this process, scraped from a live server ---------------------------


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    return settings


def scrape(base: str) -> dict[str, float]:
    response = requests.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=30)
    assert response.status_code == 200, response.text
    return samples(response.text)


@pytest.mark.django_db(transaction=True)
def test_kubernetes_api_requests_are_counted_by_verb_and_code(metrics_on, cluster):
    from clusters.backends import get_backend
    from clusters.backends.kubernetes import client_for
    from gpupaas.asgi import application

    listed = series("gpupaas_kube_api_requests_total", cluster="emu", verb="list", code="200")
    missing = series("gpupaas_kube_api_requests_total", cluster="emu", verb="get", code="404")
    metrics_on.METRICS_INVENTORY_MAX_AGE_S = 3600
    with serve(application) as base:
        scrape(base)  # the scrape's own inventory question, kept for the next ones
        before = scrape(base)
        assert before[series("gpupaas_cluster_up", cluster="emu")] == 1
        assert get_backend(cluster).inventory().total == 0  # a node list
        kube = client_for(cluster)
        assert kube.get("v1", "Namespace", "no-such-namespace") is None
        after = scrape(base)
    assert after[listed] - before.get(listed, 0) == 1
    assert after[missing] - before.get(missing, 0) == 1
    latency = series("gpupaas_kube_api_request_duration_seconds_count", cluster="emu",
                     verb="list")
    assert after[latency] >= 1


@pytest.mark.django_db(transaction=True)
def test_proxied_requests_are_counted_by_verb_and_code(metrics_on):
    from gpupaas.asgi import application

    refused = series("gpupaas_proxy_requests_total", verb="list", code="401")
    with serve(application) as base:
        before = scrape(base)
        answer = requests.get(base + "/k8s/1/api/v1/namespaces/default/pods",
                              headers={"Authorization": "Bearer not-a-token"}, timeout=30)
        assert answer.status_code == 401
        after = scrape(base)
    assert after[refused] - before.get(refused, 0) == 1


# --- a live portal (gunicorn, several workers) and a live Celery worker ----------------------


@pytest.fixture
def ops_env(monkeypatch, tmp_path) -> dict[str, str]:
    """What the live processes run with (the Celery worker fixture reads os.environ)."""
    env = {"METRICS_TOKEN": TOKEN, "LOG_FORMAT": "json",
           "WORKER_METRICS_PORT": str(free_port()),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def start_portal(tmp_path: Path, **extra: str) -> tuple[subprocess.Popen, str, Path]:
    db = settings.DATABASES["default"]
    port = free_port()
    log = tmp_path / f"web-{port}.log"
    env = {**os.environ, "DATABASE_URL": (
        f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"web-metrics-{port}"),
        "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
        "LOCAL_USE_NVML": "false", **extra}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:gpupaas.gunicorn",
             "gpupaas.asgi:application"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(base + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, 60, 0.3)
    return proc, base, log


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def json_lines(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_a_live_portal_and_worker_report_metrics_and_carry_the_request_id(
        ops_env, celery_worker_process, catalogue, tmp_path):
    alice = make_user("alice")
    ws = alice.workspace
    ws.max_gpus = 2
    ws.save()
    browser = Client()
    browser.force_login(alice)
    cookies = {"sessionid": browser.cookies["sessionid"].value}
    proc, base, log = start_portal(tmp_path, METRICS_TOKEN=TOKEN, LOG_FORMAT="json")
    try:
        s = requests.Session()
        s.cookies.update(cookies)
        assert requests.get(base + "/metrics", timeout=10).status_code == 401
        page = s.get(base + "/instances/new/", timeout=30)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)

        def launch(name: str, request_id: str) -> requests.Response:
            return s.post(base + "/instances/new/", timeout=30, allow_redirects=False, data={
                "csrfmiddlewaretoken": token, "name": name, "profile": catalogue[2].pk},
                headers={"HX-Request": "true", "Referer": base + "/instances/new/",
                         "X-Request-ID": request_id})

        accepted = launch("train", "launch-req-1")
        assert accepted.status_code == 204, accepted.text
        assert accepted.headers["X-Request-ID"] == "launch-req-1"
        instance = Instance.objects.get(workspace=ws, name="train")
        refused = launch("second", "launch-req-2")
        assert refused.status_code == 400
        assert "Your quota is 2 GPUs and 2 are in use by train" in refused.text
        wait_for(lambda: Instance.objects.filter(pk=instance.pk, status="running").exists(), 40)
        celery_app.send_task("instances.tasks.provision_instance_task", args=["not-an-id"])

        web = scrape(base)
        new = {"view": "instances:new", "method": "POST"}
        assert web[series("gpupaas_http_requests_total", status="204", **new)] == 1
        assert web[series("gpupaas_http_requests_total", status="400", **new)] == 1
        assert web[series("gpupaas_http_request_duration_seconds_count", **new)] == 2
        assert web[series("gpupaas_instances", status="running")] == 1
        assert web[series("gpupaas_cluster_gpus_allocated", cluster="local")] == 2
        assert web[series("gpupaas_cluster_gpus_free", cluster="local")] == 6
        assert web[series("gpupaas_cluster_gpus_total", cluster="local")] == 8

        worker_base = f"http://127.0.0.1:{ops_env['WORKER_METRICS_PORT']}"
        provision = "instances.tasks.provision_instance_task"

        def worker_figures() -> dict[str, float] | None:
            figures = scrape(worker_base)
            failed = series("gpupaas_celery_tasks_total", task=provision, outcome="failure")
            return figures if figures.get(failed) == 1 else None

        worker = wait_for(worker_figures, 30, 0.5)
        assert worker[series("gpupaas_celery_tasks_total", task=provision,
                             outcome="success")] >= 1
        assert worker[series("gpupaas_celery_task_duration_seconds_count", task=provision)] >= 2
        assert requests.get(worker_base + "/metrics", timeout=10).status_code == 401
    finally:
        stop(proc)

    web_lines = json_lines(log)
    post = [line for line in web_lines if line.get("request_id") == "launch-req-1"]
    assert post and post[-1]["message"].startswith("POST /instances/new/ 204")
    assert post[-1]["user_id"] == alice.pk and post[-1]["view"] == "instances:new"
    assert all({"time", "level", "logger", "message"} <= set(line) for line in web_lines)
    worker_lines = json_lines(celery_worker_process["log"])
    carried = [line for line in worker_lines if line.get("request_id") == "launch-req-1"]
    assert carried, "no worker line carries the launch's request id"
    assert all(line["instance_id"] == instance.pk for line in carried)
    assert all(line["user_id"] == alice.pk for line in carried)


@pytest.mark.django_db(transaction=True)
def test_a_portal_whose_database_and_broker_are_down_is_alive_but_not_ready(tmp_path):
    proc, base, _ = start_portal(
        tmp_path, DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/gone",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", CACHE_URL="")
    try:
        started = time.monotonic()
        ready = requests.get(base + "/readyz", timeout=30)
        assert time.monotonic() - started < 10  # within a probe's timeout
        assert requests.get(base + "/healthz", timeout=10).status_code == 200
    finally:
        stop(proc)
    assert ready.status_code == 503
    lines = ready.text.splitlines()
    assert lines[0] == "not ready: database, migrations, broker"
    assert lines[1].startswith("database: OperationalError")
    assert lines[2] == "migrations: not checked: the database does not answer"
    assert lines[3].startswith("broker: ")


# --- log lines -------------------------------------------------------------------------------


@pytest.fixture
def log_lines():
    """What the console handler writes, in both formats, while the test runs."""
    import io
    import logging

    from gpupaas import logs

    streams = {"json": io.StringIO(), "text": io.StringIO()}
    handlers = []
    for kind, formatter in (("json", logs.JsonFormatter()), ("text", logs.TextFormatter())):
        handler = logging.StreamHandler(streams[kind])
        handler.addFilter(logs.ContextFilter())
        handler.setFormatter(formatter)
        handlers.append(handler)
        logging.getLogger().addHandler(handler)
    yield streams
    for handler in handlers:
        logging.getLogger().removeHandler(handler)


def test_every_line_of_a_request_carries_its_request_and_user_ids(
        alice_client, alice, catalogue, log_lines):
    alice_client.post("/instances/new/", {"name": "Bad_Name", "profile": catalogue[1].pk},
                      HTTP_X_REQUEST_ID="req-bad-1")
    alice_client.get("/instances/", HTTP_X_REQUEST_ID="bad id\n{forged}")
    lines = [json.loads(line) for line in log_lines["json"].getvalue().splitlines()]
    refused = [line for line in lines if line["request_id"] == "req-bad-1"]
    # The portal's request line, and Django's own "Bad Request" line after it.
    assert [line["logger"] for line in refused] == ["gpupaas.requests", "django.request"]
    assert all(line["user_id"] == alice.pk for line in refused)
    assert refused[0]["view"] == "instances:new" and refused[0]["status"] == 400
    assert "request" not in refused[1]
    # A request id that could forge or fill log lines is replaced by one of the portal's.
    listed = [line for line in lines if line["message"].startswith("GET /instances/ ")]
    assert re.fullmatch(r"[0-9a-f]{32}", listed[0]["request_id"])
    text = log_lines["text"].getvalue()
    assert re.search(rf"INFO gpupaas\.requests \[req=req-bad-1 user={alice.pk}\] "
                     r"POST /instances/new/ 400 \d+ms", text)


def test_lines_of_an_instances_pages_carry_its_id(alice_client, alice, alices_instance,
                                                   log_lines):
    alice_client.get(f"/instances/{alices_instance.pk}/status/", HTTP_X_REQUEST_ID="req-st")
    [line] = [json.loads(line) for line in log_lines["json"].getvalue().splitlines()
              if '"req-st"' in line]
    assert (line["user_id"], line["instance_id"]) == (alice.pk, alices_instance.pk)
    assert line["view"] == "instances:status"


@pytest.mark.django_db(transaction=True)
def test_a_web_worker_holds_a_connection_per_page_thread_before_its_first_page(tmp_path):
    """A burst right after a deploy finds each gunicorn worker ready: its database pool
    already holds a connection for each of its WEB_THREADS threads (opened at start, not by
    the first requests), and no more than the pool allows."""

    def connections_to_test_db() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           [settings.DATABASES["default"]["NAME"]])
            return cursor.fetchone()[0]

    before = connections_to_test_db()
    proc, base, log = start_portal(tmp_path, WEB_CONCURRENCY="2", WEB_THREADS="3")
    try:
        # Only /healthz was asked, which touches no database.
        wait_for(lambda: connections_to_test_db() == before + 2 * 3, 20, 0.2)
        assert requests.get(base + "/accounts/login/", timeout=30).status_code == 200
        time.sleep(0.5)
        assert connections_to_test_db() == before + 2 * 3, log.read_text()[-2000:]
    finally:
        stop(proc)
