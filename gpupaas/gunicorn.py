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
control_socket_disable = True  # no control socket in $HOME (read-only in the image)
logconfig_dict = logging_config(log_format=os.environ.get("LOG_FORMAT", "json"),
                                level=os.environ.get("LOG_LEVEL", "INFO"))


def on_starting(server) -> None:
    metrics.prepare_multiprocess_dir()


def child_exit(server, worker) -> None:
    metrics.process_exited(worker.pid)
