"""The administrator's writes to clusters, each with its audit row."""

from collections.abc import Iterable

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from workspaces.models import AuditAction
from workspaces.services import changes, record_audit

from .models import Cluster

SECRET = ("kubeconfig_encrypted",)


def save_cluster(*, cluster: Cluster, fields: Iterable[str], by: AbstractBaseUser | None,
                 ip_address: str | None = None) -> None:
    """Save a cluster as the admin form set it, and audit what changed (a replaced
    kubeconfig by name only: its content never goes into the trail)."""
    with transaction.atomic():
        old = Cluster.objects.filter(pk=cluster.pk).first() if cluster.pk else None
        changed = changes(old, cluster, [*fields, *SECRET], secret=SECRET)
        cluster.save()
        if changed:
            record_audit(action=(AuditAction.CLUSTER_ADDED if old is None
                                 else AuditAction.CLUSTER_CHANGED),
                         obj=cluster, actor=by, ip_address=ip_address, changes=changed)
