from django.conf import settings
from django.db import models


def default_max_gpus() -> int:
    return settings.DEFAULT_MAX_GPUS


def default_max_instances() -> int:
    return settings.DEFAULT_MAX_INSTANCES


class Workspace(models.Model):
    """A user's private tenancy; carries the quota every launch is checked against."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workspace"
    )
    max_gpus = models.PositiveIntegerField(
        default=default_max_gpus, help_text="GPUs the workspace may hold at one time."
    )
    max_instances = models.PositiveIntegerField(
        default=default_max_instances, help_text="Instances the workspace may hold at one time."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner__username"]

    def __str__(self) -> str:
        return f"{self.owner.get_username()}'s workspace"


class AuditEvent(models.Model):
    """Who did what to which object, when, and from where. Written by services only."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        help_text="Empty when the system (a worker) acted.",
    )
    workspace = models.ForeignKey(Workspace, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        who = self.actor.get_username() if self.actor else "system"
        return f"{who} {self.action} {self.object_type} {self.object_repr}"
