from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models


def default_max_gpus() -> int:  # referenced by migration 0001
    return settings.DEFAULT_MAX_GPUS


def default_max_instances() -> int:  # referenced by migration 0001
    return settings.DEFAULT_MAX_INSTANCES


class Role(models.TextChoices):
    END_USER = "end-user", "End user (self-service portal)"
    ADMIN = "admin", "Administrator (portal and Django admin)"


class GroupPolicy(models.Model):
    """What membership of a group means in the portal: a role and a default quota."""

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="policy")
    role = models.CharField(max_length=20, choices=Role.choices, blank=True,
                            help_text="Empty: the group grants no access by itself.")
    default_max_gpus = models.PositiveIntegerField(
        null=True, blank=True, help_text="Quota of its members' workspaces (the most generous "
        "of a user's groups applies). Empty: the portal default.")
    default_max_instances = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "group policies"

    def __str__(self) -> str:
        return f"{self.group.name}: {self.get_role_display() or 'no role'}"


class IdpGroupMapping(models.Model):
    """An identity-provider group claim value that puts users in a portal group at login.

    Groups with at least one mapping follow the IdP: membership is set at every SSO login.
    Groups without one are managed by hand in the admin.
    """

    claim_value = models.CharField(max_length=255, help_text="As the IdP sends it, e.g. "
                                   "`gpu-users` or an Entra ID group object id.")
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="idp_mappings")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["claim_value", "group"],
                                               name="unique_idp_group_mapping")]

    def __str__(self) -> str:
        return f"{self.claim_value} → {self.group.name}"


class Workspace(models.Model):
    """A user's private tenancy; carries the quota every launch is checked against."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workspace"
    )
    max_gpus = models.PositiveIntegerField(
        "GPU quota", null=True, blank=True,
        help_text="GPUs the workspace may hold at one time. Empty: from the owner's groups.",
    )
    max_instances = models.PositiveIntegerField(
        "instance quota", null=True, blank=True,
        help_text="Instances the workspace may hold at one time. Empty: from the owner's groups.",
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


class GuestAccount(models.Model):
    """A person outside the identity provider who set a password from an invitation link.

    A guest has no role, no workspace and no quota: only the instances shared with them."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="guest_account"
    )
    # The address the invitation link proved; the only email a guest is ever trusted with.
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"guest {self.email}"
