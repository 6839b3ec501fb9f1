from datetime import timedelta
from typing import ClassVar

from django.conf import settings
from django.core.validators import MaxLengthValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince

from clusters.models import Cluster
from workspaces.models import Workspace
from workspaces.usage import Allocation

INSTANCE_NAME_MAX = 40
instance_name_validator = RegexValidator(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    "Use lowercase letters, digits and hyphens, starting and ending with a letter or digit "
    "(for example train-llama-2).",
)


class ComputeProfile(models.Model):
    """A size in the catalogue. Launches snapshot its sizing; editing it later moves nothing."""

    class Kind(models.TextChoices):
        NAMESPACE = "namespace", "Kubernetes namespace"
        VCLUSTER = "vcluster", "Virtual cluster"
        DEDICATED = "dedicated", "Dedicated cluster"

    name = models.SlugField(max_length=63, unique=True)
    display_name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.NAMESPACE)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="profiles")
    gpus = models.PositiveIntegerField()
    gpu_model = models.CharField(max_length=100, blank=True)
    cpu = models.DecimalField(max_digits=6, decimal_places=1, help_text="CPU cores")
    memory_gib = models.PositiveIntegerField("memory (GiB)")
    storage_gib = models.PositiveIntegerField("storage (GiB)", default=100)
    # Dedicated clusters only: the Cluster API topology an instance of this size gets.
    cluster_class = models.CharField(
        "ClusterClass", max_length=100, blank=True,
        help_text="Dedicated kind: the ClusterClass on the management cluster.",
    )
    kubernetes_version = models.CharField(max_length=20, blank=True, default="v1.31.0")
    worker_class = models.CharField(
        max_length=100, blank=True, default="gpu-worker",
        help_text="Dedicated kind: the ClusterClass's machine deployment class for GPU nodes.",
    )
    gpus_per_node = models.PositiveIntegerField(default=8)
    idle_stop_minutes = models.PositiveIntegerField(
        "idle stop after (minutes)", null=True, blank=True,
        help_text="Stop an instance of this size once its notebooks have had no kernel or "
        "terminal activity, and its GPUs have stayed under the threshold, for this long. "
        "Its owner is warned first. Empty: never.",
    )
    idle_gpu_percent = models.PositiveSmallIntegerField(
        "idle GPU threshold (%)", default=5,
        help_text="A GPU busier than this counts as in use, whoever watches it (an "
        "unattended training run is never stopped).",
    )
    published = models.BooleanField(
        default=False, help_text="Published profiles appear to users at once."
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="compute_profiles",
        help_text="Only members of these groups see and launch it; none chosen: everyone.",
    )
    sort_order = models.IntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "gpus", "display_name"]

    def __str__(self) -> str:
        return self.display_name


class Deployment(models.Model):
    """Something the portal brings up on a cluster and tears down again. The concrete model
    declares `status` (its own choices), `FINAL_STATES`, `KIND` (the audit prefix) and
    `WORKSPACE` (the lookup from the row to its workspace id)."""

    status_message = models.CharField(max_length=500, blank=True)
    status_detail = models.TextField(blank=True, help_text="Raw detail for administrators.")
    status_changed_at = models.DateTimeField(auto_now_add=True)
    # While a task chain watches this row, the time by which it will have looked again;
    # the reconcile pass re-drives only rows whose lease ran out (never a second chain).
    poll_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    running_since = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    FINAL_STATES: ClassVar[frozenset[str]] = frozenset()
    KIND: ClassVar[str] = ""
    WORKSPACE: ClassVar[str] = "workspace_id"
    # The URL namespace of the kind's pages: list, detail, status, delete and retry.
    URLS: ClassVar[str] = ""
    # The field naming who launched it: its usage is theirs.
    LAUNCHER: ClassVar[str] = "created_by"

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse(f"{self.URLS}:detail", args=[self.pk])

    @property
    def status_label(self) -> str:
        return self.Status(self.status).label

    @property
    def status_note(self) -> str:
        """The status message, unless it only repeats the badge ("Running" beside "Running.")."""
        message = self.status_message.strip()
        return "" if message.rstrip(".").lower() == self.status.lower() else message

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATES

    # Every kind names these statuses alike; the verbs below read them.

    @property
    def is_gone(self) -> bool:
        return self.status in ("deleting", "deleted")

    @property
    def already_gone(self) -> str:
        """Why a delete asked now changes nothing ("train is already being deleted."), for
        the pages and the API alike; '' while it can still be deleted."""
        if not self.is_gone:
            return ""
        already = "deleted" if self.status == "deleted" else "being deleted"
        return f"{self.name} is already {already}."

    @property
    def not_retriable(self) -> str:
        """Why Retry does nothing now ('' when it is failed, the one status retried)."""
        if self.status == "failed":
            return ""
        return f"{self.name} is {self.status_label.lower()}, not failed."

    def allocation(self) -> Allocation:
        """What it holds while running, for its usage record (a notebook or a service holds
        part of its instance's, on the instance's GPU model)."""
        instance = getattr(self, "instance", self)
        return Allocation(
            kind=self.KIND, object_id=self.pk, name=self.name,
            workspace_id=instance.workspace_id, user=getattr(self, self.LAUNCHER),
            instance_id=instance.pk, instance_name=instance.name, gpu_model=instance.gpu_model,
            gpus=self.gpus, cpu=self.cpu, memory_gib=self.memory_gib,
        )

    @property
    def offers_stop(self) -> bool:
        """Whether its page offers Stop now."""
        return self.status == "running"

    @property
    def offers_start(self) -> bool:
        """Whether its page offers Start now (what runs on an instance: once it runs)."""
        instance = getattr(self, "instance", None)
        return self.status == "stopped" and (instance is None or instance.status == "running")

    @property
    def stop_url(self) -> str:
        return reverse(f"{self.URLS}:stop", args=[self.pk])

    @property
    def start_url(self) -> str:
        return reverse(f"{self.URLS}:start", args=[self.pk])

    @property
    def list_url(self) -> str:
        return reverse(f"{self.URLS}:list")

    @property
    def status_url(self) -> str:
        return reverse(f"{self.URLS}:status", args=[self.pk])

    @property
    def delete_url(self) -> str:
        return reverse(f"{self.URLS}:delete", args=[self.pk])

    @property
    def retry_url(self) -> str:
        return reverse(f"{self.URLS}:retry", args=[self.pk])


class Instance(Deployment):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROVISIONING = "provisioning", "Provisioning"
        RUNNING = "running", "Running"
        STOPPING = "stopping", "Stopping"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"
        DELETING = "deleting", "Deleting"
        DELETED = "deleted", "Deleted"

    # States that count against the workspace's instance quota; a failed instance holds
    # nothing. A stopped one keeps its data, so it still counts as an instance, but its
    # GPUs went back: it holds none of the GPU quota (HOLDS_GPUS).
    HOLDS_QUOTA = frozenset({Status.PENDING, Status.PROVISIONING, Status.RUNNING,
                             Status.STOPPING, Status.STOPPED, Status.DELETING})
    HOLDS_GPUS = HOLDS_QUOTA - {Status.STOPPED}
    # States that no worker will move on by itself: the page stops polling there.
    FINAL_STATES = frozenset({Status.RUNNING, Status.STOPPED, Status.FAILED, Status.DELETED})
    KIND = "instance"
    URLS = "instances"
    LAUNCHER = "launched_by"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="instances")
    name = models.CharField(
        max_length=INSTANCE_NAME_MAX, validators=[instance_name_validator]
    )
    description = models.TextField(blank=True, validators=[MaxLengthValidator(500)])
    profile = models.ForeignKey(ComputeProfile, on_delete=models.PROTECT, related_name="instances")
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Snapshot of the profile at launch: quota and billing read these, not the profile.
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="instances")
    kind = models.CharField(max_length=20, choices=ComputeProfile.Kind.choices)
    gpus = models.PositiveIntegerField()
    gpu_model = models.CharField(max_length=100, blank=True)
    cpu = models.DecimalField(max_digits=6, decimal_places=1)
    memory_gib = models.PositiveIntegerField()
    storage_gib = models.PositiveIntegerField()

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    gpu_indices = models.JSONField(default=list, blank=True)
    gpu_simulated = models.BooleanField(default=False)
    # Admin credentials of a virtual or dedicated cluster: for the portal's own use (proxy,
    # notebooks), never shown to users.
    kubeconfig_encrypted = models.TextField(blank=True, editable=False)
    # When someone last lost access (a collaborator removed): credentials they could have
    # seen before then (notebook tokens) are renewed.
    access_revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Idle stop: the last time anything used it (a kernel or terminal, a busy GPU, Keep
    # running), when its owner was warned, and the last reading in words, for its page.
    last_active_at = models.DateTimeField(null=True, blank=True, editable=False)
    idle_warned_at = models.DateTimeField(null=True, blank=True, editable=False)
    idle_reading = models.CharField(max_length=300, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "name"],
                condition=~Q(status="deleted"),
                name="unique_live_instance_name_per_workspace",
            ),
        ]
        indexes = [models.Index(fields=["workspace", "status", "-created_at"])]

    @property
    def key(self) -> str:
        """The name backends give this instance on its cluster; never reused."""
        return f"inst-{self.pk}"

    @property
    def launched_on(self) -> str:
        """Launch time as lists show it; a list renders many, and the date filter is slow."""
        return timezone.localtime(self.created_at).strftime("%b %-d, %Y %H:%M")

    @property
    def running_for(self) -> str:
        """How long it has run, as people say it ("under a minute", not "0 minutes")."""
        if not self.running_since:
            return ""
        if timezone.now() - self.running_since < timedelta(minutes=1):
            return "under a minute"
        return timesince(self.running_since)

    @property
    def can_stop(self) -> str:
        """'' when Stop applies to it, else why not (a virtual or dedicated cluster holds its
        GPUs in nodes and control planes the portal does not scale down)."""
        if self.kind in (ComputeProfile.Kind.VCLUSTER, ComputeProfile.Kind.DEDICATED):
            return (f"A {self.get_kind_display().lower()} cannot be stopped; delete it to free "
                    "its GPUs.")
        return ""

    @property
    def offers_stop(self) -> bool:
        return self.status == self.Status.RUNNING and not self.can_stop

    @property
    def idle_notice(self) -> str:
        """Idle stop's warning while it stands ('' otherwise), for the page's banner."""
        window = self.profile.idle_stop_minutes
        if self.status != self.Status.RUNNING or not self.idle_warned_at or window is None:
            return ""
        since = self.last_active_at or self.idle_warned_at
        idle = int((timezone.now() - since).total_seconds() // 60)
        # Not before the policy's window, nor before the warning has stood its minutes.
        stops = max(since + timedelta(minutes=window),
                    self.idle_warned_at + timedelta(minutes=settings.IDLE_WARNING_MINUTES))
        left = max(int((stops - timezone.now()).total_seconds() + 59) // 60, 0)
        return (f"{self.name} has been idle for {idle} minutes; it stops in {left} "
                f"minute{'s' if left != 1 else ''} to free its GPUs. Its data is kept.")

    @property
    def has_kubernetes_api(self) -> bool:
        """It runs on a Kubernetes cluster, so kubeconfigs, the proxy and pod shells apply
        (a local sandbox has no API)."""
        return self.cluster.backend == "kubernetes"

    @property
    def is_active(self) -> bool:
        return self.status != self.Status.DELETED

    @property
    def shows_steps(self) -> bool:
        return self.status in (self.Status.PENDING, self.Status.PROVISIONING, self.Status.RUNNING)

    @property
    def steps(self) -> list[tuple[str, str]]:
        """(label, done|current|todo) on the way up, so that provisioning shows as a step
        even when it is over in a moment."""
        order = [self.Status.PENDING, self.Status.PROVISIONING, self.Status.RUNNING]
        reached = len(order) if self.status == self.Status.RUNNING else (
            order.index(self.status) if self.status in order else -1)
        return [
            (step.label, "done" if i < reached else "current" if i == reached else "todo")
            for i, step in enumerate(order)
        ]


class Collaborator(models.Model):
    """An email invited to share one instance: a pending invitation until someone proves the
    address and accepts it, then a collaborator with the owner's access until removed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Invited"
        ACCEPTED = "accepted", "Collaborator"
        REVOKED = "revoked", "Invitation revoked"
        REMOVED = "removed", "Removed"

    class Access(models.TextChoices):
        USE = "use", "Can use"  # everything on the instance but deleting it and sharing it
        MANAGE = "manage", "Can manage"  # the owner's access, less removing the owner

    LIVE_STATES = (Status.PENDING, Status.ACCEPTED)

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="collaborators")
    access = models.CharField(max_length=10, choices=Access.choices, default=Access.MANAGE,
                              db_default=Access.MANAGE)
    email = models.EmailField(help_text="Stored in lower case; matched case-insensitively.")
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="collaborations", help_text="Who accepted the invitation.",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # Only a hash of the accept link's secret is kept: a database leak opens no instance.
    token_hash = models.CharField(max_length=64, editable=False)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "email"], condition=Q(status__in=["pending", "accepted"]),
                name="unique_live_collaborator_email_per_instance",
            ),
            models.UniqueConstraint(
                fields=["instance", "user"], condition=Q(status="accepted"),
                name="unique_accepted_collaborator_per_instance",
            ),
        ]
        indexes = [models.Index(fields=["user", "status"])]

    def __str__(self) -> str:
        return f"{self.email} on {self.instance}"

    @property
    def is_expired(self) -> bool:
        return self.status == self.Status.PENDING and self.expires_at <= timezone.now()


class QuarantinedInstance(models.Model):
    """An instance on a cluster, with this portal's labels, that its database does not know:
    a database restored from an older backup, a row deleted by hand, a wrong DATABASE_URL.
    The reconcile pass stops it and keeps it, never deletes it at once: an administrator
    adopts it (its row comes back from what the cluster recorded) or deletes it, or it goes
    when its grace period (`ORPHAN_GRACE_DAYS`) is over."""

    class Outcome(models.TextChoices):
        HELD = "", "quarantined"
        ADOPTED = "adopted", "adopted"
        DELETED = "deleted", "deleted"
        GONE = "gone", "gone from the cluster"

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="quarantined")
    key = models.CharField(max_length=63)
    # What the cluster recorded of it (InstanceSpec.record()), {} where nothing was.
    record = models.JSONField(default=dict, blank=True)
    found_at = models.DateTimeField(default=timezone.now)
    action = models.CharField(max_length=300, blank=True)  # what quarantine did, in words
    outcome = models.CharField(max_length=10, choices=Outcome.choices, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+")

    class Meta:
        ordering = ["found_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "key"], condition=Q(outcome=""),
                                    name="one_open_quarantine_per_instance"),
        ]

    def __str__(self) -> str:
        return f"{self.key} on {self.cluster}"

    @property
    def delete_after(self) -> "timezone.datetime":
        return self.found_at + timedelta(days=settings.ORPHAN_GRACE_DAYS)

    @property
    def owner(self) -> str:
        return str(self.record.get("owner", ""))

    @property
    def name(self) -> str:
        return str(self.record.get("name", ""))
