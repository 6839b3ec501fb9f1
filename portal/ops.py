"""What operators and their machines ask of the portal: liveness, readiness, metrics; and
what every request gets on its way: a request id, its log context, its metrics.

`OpsMiddleware` comes first in MIDDLEWARE, so `/healthz`, `/readyz` and `/metrics` are
answered before any session, user, template, HTTPS redirect or host check: a kubelet probes
a pod by its IP address, over plain HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse

from gpupaas import logs, metrics

log = logging.getLogger("gpupaas.requests")
HEALTH = ("/healthz", "/healthz/")
READY = ("/readyz", "/readyz/")
METRICS = ("/metrics", "/metrics/")

_migrated = False  # once every migration was applied, they stay applied (for this process)


def check_database() -> str:
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return ""
    import psycopg

    # A connection of its own, not one from the pool: the question is whether PostgreSQL
    # answers (within seconds, not the pool's wait), not whether this process is busy.
    params = {key: value for key, value in connection.get_connection_params().items()
              if key not in ("cursor_factory", "context", "prepare_threshold")}
    with psycopg.connect(**params, connect_timeout=3) as conn:
        conn.execute("SELECT 1")
    return ""


def check_migrations() -> str:
    global _migrated
    if _migrated:
        return ""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        first = plan[0][0]
        return f"{len(plan)} not applied (first: {first.app_label}.{first.name})"
    _migrated = True
    return ""


def check_broker() -> str:
    from gpupaas.celery import app

    with app.connection_for_write(settings.CELERY_BROKER_URL) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
        if conn.transport_cls in ("redis", "rediss"):
            conn.default_channel.client.ping()  # the connection above is lazy for Redis
    return ""


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("database", check_database),
    ("migrations", check_migrations),
    ("broker", check_broker),
]


def readiness() -> list[tuple[str, str]]:
    """(check, problem) for every check; problem is '' when it passed. Migrations are not
    asked of a database that does not answer."""
    results: list[tuple[str, str]] = []
    for name, check in CHECKS:
        if name == "migrations" and results and results[0][1]:
            results.append((name, "not checked: the database does not answer"))
            continue
        try:
            problem = check()
        except Exception as exc:  # a probe reports; it never raises
            problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}" \
                if str(exc).strip() else type(exc).__name__
        results.append((name, problem))
    return results


def readyz() -> HttpResponse:
    results = readiness()
    failed = [name for name, problem in results if problem]
    lines = [f"{name}: {problem or 'ok'}" for name, problem in results]
    head = f"not ready: {', '.join(failed)}" if failed else "ready"
    return HttpResponse("\n".join([head, *lines]) + "\n", content_type="text/plain",
                        status=503 if failed else 200)


class PortalCollector:
    """Gauges worked out from the database at scrape time."""

    def collect(self) -> Iterator[Any]:
        from django.db.models import Count
        from prometheus_client.core import GaugeMetricFamily

        from instances.models import Instance
        from instances.selectors import cluster_gpus
        from notebooks.models import Notebook

        for model, name, what in ((Instance, "gpupaas_instances", "Instances"),
                                  (Notebook, "gpupaas_notebooks", "Notebooks")):
            family = GaugeMetricFamily(name, f"{what} by status (deleted ones stay as history).",
                                       labels=["status"])
            counts = dict(model.objects.values_list("status").annotate(n=Count("id")).order_by())
            for value, _ in model.Status.choices:
                family.add_metric([value], counts.get(value, 0))
            yield family
        allocated = GaugeMetricFamily(
            "gpupaas_cluster_gpus_allocated", "GPUs given out on a cluster.", labels=["cluster"])
        free = GaugeMetricFamily(
            "gpupaas_cluster_gpus_free", "GPUs a cluster has left (absent when it does not "
            "answer).", labels=["cluster"])
        total = GaugeMetricFamily(
            "gpupaas_cluster_gpus_total", "GPUs a cluster offers.", labels=["cluster"])
        up = GaugeMetricFamily(
            "gpupaas_cluster_up", "1 when the cluster answered its inventory question.",
            labels=["cluster"])
        for row in cluster_gpus(inventory_max_age_s=settings.METRICS_INVENTORY_MAX_AGE_S):
            name = row.cluster.name
            allocated.add_metric([name], row.allocated)
            up.add_metric([name], 0 if row.total is None else 1)
            if row.total is not None:
                total.add_metric([name], row.total)
                free.add_metric([name], row.free)
        yield from (allocated, free, total, up)
        from clusters.models import Cluster
        from instances.models import QuarantinedInstance

        held = GaugeMetricFamily(
            "gpupaas_orphans_held", "1 when the last reconcile pass on a cluster found more "
            "instances unknown to the database than it may quarantine, and touched none.",
            labels=["cluster"])
        for name, message in Cluster.objects.values_list("name", "orphans_held"):
            held.add_metric([name], 1 if message else 0)
        yield held
        yield GaugeMetricFamily(
            "gpupaas_quarantined_instances", "Instances unknown to the database, stopped and "
            "kept until adopted or deleted.",
            value=QuarantinedInstance.objects.filter(outcome="").count())


def metrics_view(request: HttpRequest) -> HttpResponse:
    ok = metrics.allowed(
        authorization=request.META.get("HTTP_AUTHORIZATION", ""),
        peer=request.META.get("REMOTE_ADDR"),
        forwarded=bool(request.META.get("HTTP_X_FORWARDED_FOR")
                       or request.META.get("HTTP_FORWARDED")),
        token=settings.METRICS_TOKEN, networks=settings.METRICS_ALLOWED_NETWORKS)
    if ok is None:
        return HttpResponse("Metrics are off: set METRICS_TOKEN or METRICS_ALLOWED_NETWORKS.\n",
                            content_type="text/plain", status=404)
    if not ok:
        response = HttpResponse("A metrics token is needed (Authorization: Bearer ...).\n",
                                content_type="text/plain", status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    body, content_type = metrics.exposition(PortalCollector())
    return HttpResponse(body, content_type=content_type)


class OpsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if path in HEALTH:
            return HttpResponse("ok\n", content_type="text/plain")  # the process answers
        if path in READY:
            return readyz()
        if path in METRICS:
            return metrics_view(request)
        rid = logs.new_request_id(request.META.get("HTTP_X_REQUEST_ID"))
        request.request_id = rid
        started = time.perf_counter()
        with logs.bound(request_id=rid, current_request=request):
            response = self.get_response(request)
            elapsed = time.perf_counter() - started
            match = getattr(request, "resolver_match", None)
            view = match.view_name if match is not None else "<unmatched>"
            metrics.HTTP_REQUESTS.labels(view, request.method, str(response.status_code)).inc()
            metrics.HTTP_LATENCY.labels(view, request.method).observe(elapsed)
            response["X-Request-ID"] = rid
            log.info("%s %s %s %.0fms", request.method, path, response.status_code,
                     elapsed * 1000, extra={"view": view, "status": response.status_code,
                                            "duration_ms": round(elapsed * 1000, 1)})
            return response
