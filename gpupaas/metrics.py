"""The portal's Prometheus metrics (prometheus-client), defined once for every process.

Counters and histograms are recorded where things happen: requests (portal.ops), Kubernetes
API calls (clusters.backends.kubernetes.client), proxied requests (access.proxy), Celery
tasks (the signals below). Gauges read from the database (instances and notebooks by status,
GPUs per cluster) are worked out at scrape time (portal.ops).

Several processes (gunicorn's workers, Celery's pool) share one set of figures when
`PROMETHEUS_MULTIPROC_DIR` names a folder for them (prometheus-client's multiprocess mode):
gunicorn's config (gpupaas.gunicorn) and the Celery worker start it empty and mark exited
processes dead. Without it, each process reports its own.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as PROCESS_REGISTRY

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
TASK_BUCKETS = (.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900)

HTTP_REQUESTS = Counter(
    "gpupaas_http_requests_total", "Requests served by the portal's pages, by view.",
    ["view", "method", "status"])
HTTP_LATENCY = Histogram(
    "gpupaas_http_request_duration_seconds", "Time to answer a request, by view.",
    ["view", "method"], buckets=LATENCY_BUCKETS)
KUBE_REQUESTS = Counter(
    "gpupaas_kube_api_requests_total",
    "Requests the portal sent to Kubernetes API servers (each attempt), by verb and code.",
    ["cluster", "verb", "code"])
KUBE_LATENCY = Histogram(
    "gpupaas_kube_api_request_duration_seconds", "Time a Kubernetes API request took.",
    ["cluster", "verb"], buckets=LATENCY_BUCKETS)
PROXY_REQUESTS = Counter(
    "gpupaas_proxy_requests_total",
    "Requests through the Kubernetes API proxy (/k8s/), by verb and the code answered.",
    ["verb", "code"])
PROXY_LATENCY = Histogram(
    "gpupaas_proxy_request_duration_seconds",
    "Time a proxied request took (a watch: until it ended).", ["verb"],
    buckets=LATENCY_BUCKETS)
AUDIT_WRITE_FAILURES = Counter(
    "gpupaas_audit_write_failures_total",
    "Audit rows that could not be written (each also logged at error level), by trail.",
    ["trail"])
TASKS = Counter(
    "gpupaas_celery_tasks_total", "Celery tasks run, by task and outcome.",
    ["task", "outcome"])
TASK_DURATION = Histogram(
    "gpupaas_celery_task_duration_seconds", "Time a Celery task ran, by task.", ["task"],
    buckets=TASK_BUCKETS)


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def prepare_multiprocess_dir() -> None:
    """Empty the shared folder before any process of a server writes to it (a restart must
    not add up the previous run's figures)."""
    folder = multiprocess_dir()
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.remove(os.path.join(folder, name))


def process_exited(pid: int) -> None:
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


def exposition(extra: Any = None) -> tuple[bytes, str]:
    """The text a scrape gets: every process's figures, plus `extra` (a collector)."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = PROCESS_REGISTRY
    body = generate_latest(registry)
    if extra is not None:
        scraped = CollectorRegistry()
        scraped.register(extra)
        body += generate_latest(scraped)
    return body, CONTENT_TYPE_LATEST


def allowed(*, authorization: str, peer: str | None, forwarded: bool, token: str,
            networks: list[str]) -> bool | None:
    """May this scrape read the metrics? True, False (refused), or None: metrics are off
    (neither a token nor networks configured).

    A bearer token equal to METRICS_TOKEN, or a direct peer (no X-Forwarded-For: not through
    the ingress) inside METRICS_ALLOWED_NETWORKS."""
    if not token and not networks:
        return None
    if token and authorization[:7].lower() == "bearer " and hmac.compare_digest(
            authorization[7:].strip().encode(), token.encode()):
        return True
    if networks and peer and not forwarded:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net, strict=False) for net in networks)
    return False


# --- Celery tasks -------------------------------------------------------------------------

_started: dict[str, float] = {}
_lock = threading.Lock()


def task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        with _lock:
            _started[task_id] = time.monotonic()


def task_finished(task_id: str | None = None, task: Any = None, state: str | None = None,
                  **_: Any) -> None:
    with _lock:
        began = _started.pop(task_id or "", None)
    name = getattr(task, "name", "unknown")
    if began is not None:
        TASK_DURATION.labels(name).observe(time.monotonic() - began)
    # RETRY: the task asked to run again later (a poll, a transient error); not a failure.
    outcome = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}.get(
        state or "", (state or "unknown").lower())
    TASKS.labels(name, outcome).inc()


def serve_worker_metrics(port: int, token: str, networks: list[str]) -> None:
    """The Celery worker's own /metrics (its pods are scraped apart from the web's), with the
    same guard as the portal's, and /healthz for its probes: a thread of the worker's main
    process, so it answers as long as that process runs."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == "/healthz":  # the kubelet's probes
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        ok = allowed(authorization=environ.get("HTTP_AUTHORIZATION", ""),
                     peer=environ.get("REMOTE_ADDR"),
                     forwarded=bool(environ.get("HTTP_X_FORWARDED_FOR")),
                     token=token, networks=networks)
        if environ.get("PATH_INFO", "").rstrip("/") != "/metrics" or ok is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found.\n"]
        if not ok:
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", "Bearer")])
            return [b"A metrics token is needed.\n"]
        body, content_type = exposition()
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # scrapes are not news
            pass

    class ThreadingServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server("0.0.0.0", port, app, server_class=ThreadingServer,
                         handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    log.info("worker metrics on :%s/metrics", port)
