"""Thin Celery wrappers around the access services."""

from celery import shared_task

from . import services


@shared_task(acks_late=True)
def sweep_remote_access() -> dict[str, int]:
    return {
        "revoked": services.revoke_lost_access(),
        "purged": services.purge_proxy_requests(),
        "shell_pods_deleted": services.sweep_shell_pods(),
    }
