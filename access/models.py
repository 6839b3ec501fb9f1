from django.conf import settings
from django.db import models
from django.utils import timezone

from instances.models import Instance
from workspaces.tokens import BearerToken

# What a browser shell's session token records as its client (access.services.open_shell).
SHELL_CLIENT = "web shell"


class AccessToken(BearerToken):
    """A bearer token for one user on one instance: the credential of a downloaded
    kubeconfig. Only its hash is kept; the plain token is shown once, in the file."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="access_tokens")
    client = models.CharField(
        max_length=300, blank=True, help_text="Address and user agent of the last use."
    )
    created_from = models.CharField(max_length=300, blank=True)

    EXPIRED = "The token has expired; download a new kubeconfig from the portal."

    class Meta(BearerToken.Meta):
        indexes = [models.Index(fields=["instance", "user", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user} on {self.instance})"


class ProxyRequest(models.Model):
    """One request a user sent through the Kubernetes proxy: the remote-access audit trail.
    Kept for ACCESS_AUDIT_RETENTION_DAYS."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="proxy_requests"
    )
    token = models.ForeignKey(
        AccessToken, null=True, on_delete=models.SET_NULL, related_name="requests"
    )
    verb = models.CharField(max_length=20)  # Kubernetes verb: get, list, watch, create...
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    status = models.PositiveSmallIntegerField()
    duration_ms = models.PositiveIntegerField()
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["instance", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.verb} {self.path} → {self.status}"


class ShellPod(models.Model):
    """A browser shell's pod in an instance (access/shellpod.py): one per user and instance,
    reused by every shell the user opens there. `last_active_at` is renewed while a shell is
    open; the pod is deleted SHELL_IDLE_TIMEOUT_S after it, or at once when access ends."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="shell_pods")
    namespace = models.CharField(max_length=63)
    name = models.CharField(max_length=63)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["instance", "name"],
                                               name="one_shell_pod_per_name")]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} on {self.instance}"
