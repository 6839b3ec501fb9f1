from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from workspaces.services import client_ip

from . import services
from .models import ComputeProfile, Instance


@admin.register(ComputeProfile)
class ComputeProfileAdmin(admin.ModelAdmin):
    list_display = [
        "display_name", "kind", "cluster", "gpus", "gpu_model", "cpu", "memory_gib",
        "published", "sort_order",
    ]
    list_editable = ["published", "sort_order"]
    list_filter = ["published", "kind", "cluster", "groups"]
    prepopulated_fields = {"name": ["display_name"]}
    filter_horizontal = ["groups"]
    actions = ["publish", "unpublish"]

    @admin.action(description="Publish selected profiles")
    def publish(self, request: HttpRequest, queryset: QuerySet[ComputeProfile]) -> None:
        self.message_user(request, f"{queryset.update(published=True)} profile(s) published.")

    @admin.action(description="Unpublish selected profiles (running instances keep running)")
    def unpublish(self, request: HttpRequest, queryset: QuerySet[ComputeProfile]) -> None:
        self.message_user(request, f"{queryset.update(published=False)} profile(s) unpublished.")


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
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

