"""gunicorn's settings for the portal:

    gunicorn -c python:gpupaas.gunicorn gpupaas.asgi:application

ASGI through uvicorn's workers; the portal logs every request itself (with its request id),
so gunicorn's own access log is off and its other lines use the portal's format; metrics
shared by the workers start from nothing and forget workers that exited.
"""

import os

from gpupaas import metrics
from gpupaas.logs import logging_config

worker_class = "uvicorn_worker.UvicornWorker"
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
accesslog = None
# Nobody is trusted to rewrite the client's address: not even loopback, where tenants' kernels
# run on a lab box. The portal reads X-Forwarded-For itself, exactly TRUSTED_PROXY_COUNT hops
# (workspaces.services.client_address).
forwarded_allow_ips = ""
control_socket_disable = True  # no control socket in $HOME (read-only in the image)
logconfig_dict = logging_config(log_format=os.environ.get("LOG_FORMAT", "json"),
                                level=os.environ.get("LOG_LEVEL", "INFO"))


def on_starting(server) -> None:
    metrics.prepare_multiprocess_dir()


def post_worker_init(worker) -> None:
    """Ready before the first request rather than during it: the URLs resolved (importing
    every view and the API's schemas), the Kubernetes client where there is a Kubernetes
    cluster, and the database pool holding a connection for each page thread. A burst right
    after a start or a deploy (the start of a class) otherwise paid for them, in every worker
    at once."""
    import logging

    from django.conf import settings
    from django.db import connection
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018  (imports the URLconf and its views)
    # This process's pool, not opened yet (None, or no such attribute: no pool, or SQLite).
    pool = getattr(connection, "pool", None)
    if pool is not None:
        try:
            pool.open(wait=False)
            pool.resize(min_size=max(pool.min_size, settings.WEB_THREADS),
                        max_size=pool.max_size)
            pool.wait(timeout=3)
        except Exception as exc:  # the database may be down: /readyz says so, requests retry
            logging.getLogger("gpupaas").warning("database not reachable at start: %s", exc)
            connection.close_pool()  # a new one at the first request
            return
    from clusters.backends import preload

    preload()  # the Kubernetes client, where the portal has a Kubernetes cluster
    connection.close()  # this thread serves no page: back to the pool


def child_exit(server, worker) -> None:
    metrics.process_exited(worker.pid)
