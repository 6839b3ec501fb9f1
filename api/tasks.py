"""Thin Celery wrappers around the API token services."""

from celery import shared_task

from . import services


@shared_task(acks_late=True)
def sweep_api_tokens() -> dict[str, int]:
    return {"revoked": services.revoke_lost_api_tokens()}
