from collections.abc import Callable

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Max, QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import pluralize

from clusters.models import Cluster
from workspaces.services import client_ip

from . import quarantine, services
from .models import Collaborator, ComputeProfile, Instance, QuarantinedInstance
from .selectors import allotment

# Fields that mean something only on a Kubernetes cluster; local profiles do not show them.
KUBERNETES_ONLY = ["kind", "cluster_class", "kubernetes_version", "worker_class", "gpus_per_node"]


class ComputeProfileForm(forms.ModelForm):
    class Meta:
        model = ComputeProfile
        fields = [
            "name", "display_name", "description", "cluster", "kind", "gpus", "gpu_model", "cpu",
            "memory_gib", "storage_gib", "cluster_class", "kubernetes_version", "worker_class",
            "gpus_per_node", "idle_stop_minutes", "idle_gpu_percent", "published", "groups",
            "sort_order",
        ]
        labels = {"gpus": "GPUs", "gpu_model": "GPU model", "cpu": "CPU",
                  "memory_gib": "Memory (GiB)", "storage_gib": "Storage (GiB)",
                  "gpus_per_node": "GPUs per node", "kind": "Kind (Kubernetes clusters)"}
        help_texts = {"cpu": "CPU cores (on the local cluster: a limit, not a reservation)."}

    def clean(self) -> dict:
        data = super().clean()
        cluster = data.get("cluster")
        if (data.get("idle_stop_minutes") and cluster
                and cluster.backend == Cluster.Backend.KUBERNETES
                and data.get("kind") != ComputeProfile.Kind.NAMESPACE):
            self.add_error("idle_stop_minutes", "Idle stop needs an instance that can stop: "
                           "on Kubernetes, the namespace kind. A virtual or dedicated cluster "
                           "can only be deleted. Leave it empty.")
        least = 2 * settings.IDLE_WARNING_MINUTES
        if data.get("idle_stop_minutes") is not None and data["idle_stop_minutes"] < least:
            self.add_error("idle_stop_minutes", f"Use at least {least} minutes: its owner is "
                           f"warned {settings.IDLE_WARNING_MINUTES} minutes before.")
        return data


@admin.register(ComputeProfile)
class ComputeProfileAdmin(admin.ModelAdmin):
    form = ComputeProfileForm
    # Few, narrow columns: the list fits a 1366 px screen.
    list_display = ["display_name", "where", "size", "published", "sort_order"]
    list_editable = ["published", "sort_order"]
    list_select_related = ["cluster"]
    list_filter = ["published", "kind", "cluster", "groups"]
    prepopulated_fields = {"name": ["display_name"]}
    filter_horizontal = ["groups"]
    actions = ["publish", "unpublish"]

    @admin.display(description="runs as", ordering="cluster")
    def where(self, profile: ComputeProfile) -> str:
        if profile.cluster.backend == Cluster.Backend.LOCAL:
            return f"Sandbox on {profile.cluster}"
        return f"{profile.get_kind_display()} on {profile.cluster}"

    @admin.display(description="size", ordering="gpus")
    def size(self, profile: ComputeProfile) -> str:
        gpus = f"{profile.gpus} GPU{pluralize(profile.gpus)}"
        if profile.gpu_model:
            gpus += f" ({profile.gpu_model})"
        return f"{gpus} · {allotment(profile).words()}"

    def get_fields(self, request: HttpRequest, obj: ComputeProfile | None = None) -> list[str]:
        fields = list(super().get_fields(request, obj))
        if obj is not None and obj.cluster.backend == Cluster.Backend.LOCAL:
            fields = [f for f in fields if f not in KUBERNETES_ONLY]
        return fields

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        # A new profile goes last in the catalogue unless the administrator says otherwise.
        last = ComputeProfile.objects.aggregate(last=Max("sort_order"))["last"]
        return {**super().get_changeform_initial_data(request),
                "sort_order": 0 if last is None else last + 10}

    def save_model(self, request: HttpRequest, obj: ComputeProfile, form: forms.Form,
                   change: bool) -> None:
        services.save_profile(profile=obj, fields=form.fields, by=request.user,
                              ip_address=client_ip(request))
        if not obj.published:  # "added successfully" alone would hide it
            self.message_user(request, (
                f"{obj} is not published: users do not see it until you tick Published here "
                "or use the Publish action in the list."), messages.WARNING)

    @admin.action(description="Publish selected profiles")
    def publish(self, request: HttpRequest, queryset: QuerySet[ComputeProfile]) -> None:
        count = services.set_profiles_published(profiles=queryset, published=True,
                                                by=request.user, ip_address=client_ip(request))
        self.message_user(request, f"{count} profile(s) published.")

    @admin.action(description="Unpublish selected profiles (running instances keep running)")
    def unpublish(self, request: HttpRequest, queryset: QuerySet[ComputeProfile]) -> None:
        count = services.set_profiles_published(profiles=queryset, published=False,
                                                by=request.user, ip_address=client_ip(request))
        self.message_user(request, f"{count} profile(s) unpublished.")


class CollaboratorInline(admin.TabularInline):
    """Who the instance is shared with; changed by its owner and collaborators, not here."""

    model = Collaborator
    fields = ["email", "status", "user", "guest", "invited_by", "expires_at", "accepted_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(boolean=True)
    def guest(self, collaborator: Collaborator) -> bool:
        return bool(collaborator.user_id) and hasattr(collaborator.user, "guest_account")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    inlines = [CollaboratorInline]
    list_display = ["name", "workspace", "profile", "status", "status_message", "created_at"]
    list_filter = ["status", "cluster", "kind"]
    search_fields = ["name", "workspace__owner__username"]
    list_select_related = ["workspace__owner", "profile"]
    actions = ["retry"]
    # Read-mostly: state belongs to the services and workers, not to hand edits.
    readonly_fields = [
        f.name for f in Instance._meta.fields if f.name not in ("description",)
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Instance | None = None) -> bool:
        return False

    @admin.action(description="Retry selected failed instances")
    def retry(self, request: HttpRequest, queryset: QuerySet[Instance]) -> None:
        retried = refused = 0
        for instance in queryset:
            try:
                retried += services.retry_instance(
                    instance=instance, by=request.user, ip_address=client_ip(request))
            except ValidationError as exc:
                refused += 1
                self.message_user(request, f"{instance}: {' '.join(exc.messages)}",
                                  messages.ERROR)
        skipped = queryset.count() - retried - refused
        self.message_user(request, f"{retried} instance(s) sent back to provisioning.")
        if skipped:
            self.message_user(
                request, f"{skipped} skipped: only failed instances can be retried.",
                messages.WARNING,
            )



@admin.register(QuarantinedInstance)
class QuarantinedInstanceAdmin(admin.ModelAdmin):
    """What the reconcile pass found on a cluster and the database did not know: stopped and
    kept until an administrator adopts or deletes it, or its grace period is over."""

    list_display = ["key", "cluster", "owner", "name", "found_at", "delete_after", "outcome",
                    "action"]
    list_filter = ["outcome", "cluster"]
    list_select_related = ["cluster"]
    search_fields = ["key"]
    actions = ["adopt", "delete_now"]
    readonly_fields = [f.name for f in QuarantinedInstance._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: QuarantinedInstance | None = None
                              ) -> bool:
        return False  # deleting the row would forget it; "Delete from the cluster" is the act

    @admin.display(description="deleted after", ordering="found_at")
    def delete_after(self, row: QuarantinedInstance) -> str:
        return "" if row.outcome else f"{row.delete_after:%Y-%m-%d %H:%M}"

    def _each(self, request: HttpRequest, queryset: QuerySet[QuarantinedInstance],
              act: Callable[..., object], done: str) -> None:
        count = 0
        for row in queryset:
            try:
                act(row, by=request.user, ip_address=client_ip(request))
                count += 1
            except ValidationError as exc:
                self.message_user(request, f"{row.key}: {' '.join(exc.messages)}",
                                  messages.ERROR)
        if count:
            self.message_user(request, f"{count} instance{pluralize(count)} {done}.")

    @admin.action(description="Adopt: bring back its row, for its owner")
    def adopt(self, request: HttpRequest, queryset: QuerySet[QuarantinedInstance]) -> None:
        self._each(request, queryset, quarantine.adopt, "adopted")

    @admin.action(description="Delete from the cluster, with its data")
    def delete_now(self, request: HttpRequest, queryset: QuerySet[QuarantinedInstance]) -> None:
        self._each(request, queryset, quarantine.delete, "being deleted")
