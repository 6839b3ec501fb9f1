from django.conf import settings
from django.db import models

from workspaces.tokens import BearerToken


class ApiToken(BearerToken):
    """A personal access token for the JSON API and the `gpupaas` command. Only its hash is
    kept; the plain token is shown once, when it is created."""

    class Scope(models.TextChoices):
        READ = "read", "Read only"
        WRITE = "write", "Read and write"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. ci-runner.")
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.READ)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    EXPIRED = "The token has expired; create a new one on the API tokens page."

    class Meta(BearerToken.Meta):
        verbose_name = "API token"
        indexes = [models.Index(fields=["user", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.user})"

    @property
    def can_write(self) -> bool:
        return self.scope == self.Scope.WRITE
