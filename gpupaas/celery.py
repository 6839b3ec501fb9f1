import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")

app = Celery("gpupaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# The request id travels with the tasks a request enqueues; task lines carry it.
@signals.before_task_publish.connect
def _published(headers=None, **kwargs) -> None:
    from gpupaas import logs

    logs.task_published(headers=headers)


@signals.task_prerun.connect
def _started(task_id=None, task=None, args=None, kwargs=None, **extra) -> None:
    from gpupaas import logs, metrics

    logs.task_started(task=task, args=args, kwargs=kwargs)
    metrics.task_started(task_id=task_id)


@signals.task_postrun.connect
def _finished(task_id=None, task=None, state=None, **extra) -> None:
    from gpupaas import logs, metrics

    metrics.task_finished(task_id=task_id, task=task, state=state)
    logs.task_finished()


@signals.celeryd_init.connect
def _worker_starting(**kwargs) -> None:
    from gpupaas import metrics

    metrics.prepare_multiprocess_dir()


@signals.worker_init.connect
def _worker_init(**kwargs) -> None:
    # In the main process, before the pool starts: prefork children inherit what it imported
    # (and no database connection: a forked one would be shared).
    from django.db import connections

    from clusters.backends import preload

    preload()
    for connection in connections.all(initialized_only=True):
        if getattr(connection, "pool", None) is not None:
            connection.close_pool()  # the pool's sockets too, not only its checkout
        else:
            connection.close()


@signals.worker_ready.connect
def _worker_ready(**kwargs) -> None:
    from django.conf import settings

    from gpupaas import metrics

    if settings.WORKER_METRICS_PORT:
        metrics.serve_worker_metrics(settings.WORKER_METRICS_PORT, settings.METRICS_TOKEN,
                                     settings.METRICS_ALLOWED_NETWORKS)


@signals.worker_process_shutdown.connect
def _pool_process_exits(pid=None, **kwargs) -> None:
    from gpupaas import metrics

    metrics.process_exited(pid or os.getpid())
