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
    monthly_gpu_hours = models.PositiveIntegerField(
        "GPU-hour budget per month", null=True, blank=True,
        help_text="For the group as a whole (its members' usage counts to the group whose "
        "quota applies to them). At 80 % its members are warned; once spent, nothing more "
        "launches until next month. Empty: no budget.")
    budget_warned_for = models.DateField(null=True, blank=True, editable=False)

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
    monthly_gpu_hours = models.PositiveIntegerField(
        "GPU-hour budget per month", null=True, blank=True,
        help_text="At 80 % its owner is warned; once spent, nothing more launches or starts "
        "until next month. Empty: no budget of its own.")
    # The month (its first day) the owner was last warned of the budget, so once a month.
    budget_warned_for = models.DateField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner__username"]

    def __str__(self) -> str:
        return f"{self.owner.get_username()}'s workspace"


class AuditAction(models.TextChoices):
    """Every action the audit trail records, named once (grep for the member)."""

    INSTANCE_LAUNCHED = "instance.launched", "instance launched"
    INSTANCE_PENDING = "instance.pending", "instance pending"
    INSTANCE_PROVISIONING = "instance.provisioning", "instance provisioning"
    INSTANCE_RUNNING = "instance.running", "instance running"
    INSTANCE_STOPPING = "instance.stopping", "instance stopping"
    INSTANCE_STOPPED = "instance.stopped", "instance stopped"
    INSTANCE_IDLE_WARNED = "instance.idle_warned", "instance idle: owner warned"
    INSTANCE_KEPT_RUNNING = "instance.kept_running", "instance kept running"
    INSTANCE_FAILED = "instance.failed", "instance failed"
    INSTANCE_DELETING = "instance.deleting", "instance deleting"
    INSTANCE_DELETED = "instance.deleted", "instance deleted"
    INSTANCE_QUARANTINED = "instance.quarantined", "unknown instance quarantined"
    INSTANCE_ADOPTED = "instance.adopted", "quarantined instance adopted"
    INSTANCE_QUARANTINE_DELETED = "instance.quarantine_deleted", "quarantined instance deleted"
    ORPHANS_HELD = "cluster.orphans_held", "reconcile held back: too many unknown instances"
    NOTEBOOK_DEPLOYING = "notebook.deploying", "notebook deploying"
    NOTEBOOK_RUNNING = "notebook.running", "notebook running"
    NOTEBOOK_STOPPED = "notebook.stopped", "notebook stopped"
    NOTEBOOK_FAILED = "notebook.failed", "notebook failed"
    NOTEBOOK_DELETING = "notebook.deleting", "notebook deleting"
    NOTEBOOK_DELETED = "notebook.deleted", "notebook deleted"
    NOTEBOOK_TOKEN_REVEALED = "notebook.token_revealed", "notebook token revealed"
    NOTEBOOK_TOKEN_ROTATED = "notebook.token_rotated", "notebook token rotated"
    SERVICE_DEPLOYING = "service.deploying", "service deploying"
    SERVICE_RUNNING = "service.running", "service running"
    SERVICE_STOPPED = "service.stopped", "service stopped"
    SERVICE_FAILED = "service.failed", "service failed"
    SERVICE_DELETING = "service.deleting", "service deleting"
    SERVICE_DELETED = "service.deleted", "service deleted"
    SERVICE_OPENED = "service.opened", "service opened"
    SERVICE_KEY_ISSUED = "service_key.issued", "service API key issued"
    SERVICE_KEY_REVOKED = "service_key.revoked", "service API key revoked"
    COLLABORATOR_INVITED = "collaborator.invited", "collaborator invited"
    COLLABORATOR_RESENT = "collaborator.resent", "invitation sent again"
    COLLABORATOR_ACCEPTED = "collaborator.accepted", "invitation accepted"
    COLLABORATOR_REVOKED = "collaborator.revoked", "invitation revoked"
    COLLABORATOR_REMOVED = "collaborator.removed", "collaborator removed"
    ACCESS_TOKEN_ISSUED = "access_token.issued", "kubeconfig token issued"
    ACCESS_TOKEN_REVOKED = "access_token.revoked", "kubeconfig tokens revoked"
    API_TOKEN_CREATED = "api_token.created", "API token created"
    API_TOKEN_REVOKED = "api_token.revoked", "API token revoked"
    SHELL_OPENED = "shell.opened", "shell opened"
    SHELL_CLOSED = "shell.closed", "shell closed"
    SHELL_POD_DELETED = "shell.pod_deleted", "shell pod deleted"
    USER_GROUPS_SYNCED = "user.groups_synced", "groups synced from the IdP"
    USER_GUEST_CREATED = "user.guest_created", "guest account created"
    WORKSPACE_QUOTA_CHANGED = "workspace.quota_changed", "workspace quota changed"
    PROFILE_ADDED = "profile.added", "profile added"
    PROFILE_CHANGED = "profile.changed", "profile changed"
    PROFILE_PUBLISHED = "profile.published", "profile published"
    PROFILE_UNPUBLISHED = "profile.unpublished", "profile unpublished"
    CLUSTER_ADDED = "cluster.added", "cluster added"
    CLUSTER_CHANGED = "cluster.changed", "cluster changed"

    @classmethod
    def status(cls, kind: str, status: str) -> "AuditAction":
        """The transition of an instance, a notebook or a service to `status` (ValueError if
        none)."""
        return cls(f"{kind}.{status}")


class AuditEvent(models.Model):
    """Who did what to which object, when, and from where. Written by services only."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        help_text="Empty when the system (a worker) acted.",
    )
    workspace = models.ForeignKey(Workspace, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=64, db_index=True, choices=AuditAction.choices)
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


class UsageKind(models.TextChoices):
    INSTANCE = "instance", "Instance"
    NOTEBOOK = "notebook", "Notebook"
    SERVICE = "service", "Service"


class UsageRecord(models.Model):
    """One allocation, exact to the second: from the moment an instance, a notebook or a
    service reached Running until it left Running. Written when the allocation opens and
    closed once (`ended_at`); never otherwise changed, and never deleted with what it
    measures (names are copied in). An instance's records are what it holds; its notebooks'
    and services' records say who used which of those GPUs, so totals count instances."""

    workspace = models.ForeignKey(Workspace, on_delete=models.PROTECT,
                                  related_name="usage_records")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                             related_name="+", help_text="Who launched it.")
    username = models.CharField(max_length=150)
    group = models.CharField(max_length=150, blank=True,
                             help_text="The launcher's group at the time (the one whose "
                             "quota applied); empty when none.")
    kind = models.CharField(max_length=20, choices=UsageKind.choices)
    object_id = models.PositiveBigIntegerField()
    name = models.CharField(max_length=100)
    instance_id = models.PositiveBigIntegerField()
    instance_name = models.CharField(max_length=100)
    gpu_model = models.CharField(max_length=100, blank=True)
    gpus = models.PositiveIntegerField()
    cpu = models.DecimalField(max_digits=6, decimal_places=1)
    memory_gib = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "object_id"],
                                    condition=models.Q(ended_at__isnull=True),
                                    name="one_open_allocation_per_object"),
        ]
        indexes = [
            models.Index(fields=["workspace", "started_at"]),
            models.Index(fields=["started_at"], condition=models.Q(ended_at__isnull=True),
                         name="usage_open_allocations"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.gpus} GPU from {self.started_at:%Y-%m-%d %H:%M}"


class UsageMonth(models.Model):
    """The closed allocations of one month, summed per workspace, user, group, GPU model and
    kind: what showback reads, kept in step with `UsageRecord` in the same transaction, so
    no page scans the records. An allocation that spans months is split at the boundary
    (UTC)."""

    month = models.DateField(help_text="The first day of the month (UTC).")
    workspace = models.ForeignKey(Workspace, on_delete=models.PROTECT, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                             related_name="+")
    username = models.CharField(max_length=150)
    group = models.CharField(max_length=150, blank=True)
    gpu_model = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=20, choices=UsageKind.choices)
    gpu_seconds = models.BigIntegerField(default=0)
    cpu_seconds = models.DecimalField(max_digits=20, decimal_places=1, default=0)
    memory_gib_seconds = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["month", "workspace", "username", "group", "gpu_model", "kind"],
                name="one_usage_month_per_key"),
        ]
        indexes = [models.Index(fields=["month", "kind"])]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.username} {self.kind}: {self.gpu_seconds} GPU-s"


class GpuPrice(models.Model):
    """What an hour of one GPU of a model costs, for showback in the overview."""

    gpu_model = models.CharField(max_length=100, unique=True, blank=True,
                                 help_text="As compute profiles name it; empty: any model "
                                 "without a price of its own.")
    per_hour = models.DecimalField("price per GPU-hour", max_digits=10, decimal_places=4)
    currency = models.CharField(max_length=3, default="EUR")

    class Meta:
        ordering = ["gpu_model"]
        verbose_name = "GPU price"

    def __str__(self) -> str:
        return f"{self.gpu_model or 'any GPU'}: {self.per_hour} {self.currency}/GPU-hour"
