from django.contrib import admin

from .models import Notebook, NotebookProfile, Service, ServiceProfile


@admin.register(NotebookProfile)
class NotebookProfileAdmin(admin.ModelAdmin):
    list_display = [
        "display_name", "image", "default_cpu", "default_memory_gib", "default_gpus",
        "published", "sort_order",
    ]
    list_editable = ["published", "sort_order"]
    prepopulated_fields = {"name": ["display_name"]}


@admin.register(Notebook)
class NotebookAdmin(admin.ModelAdmin):
    list_display = ["name", "instance", "profile", "status", "status_message", "created_at"]
    list_filter = ["status", "profile"]
    search_fields = ["name", "instance__name", "instance__workspace__owner__username"]
    list_select_related = ["instance", "profile"]
    # Read-only: the token is never shown here, and state belongs to services and workers.
    readonly_fields = [f.name for f in Notebook._meta.fields if f.name != "token_encrypted"]
    exclude = ["token_encrypted"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ServiceProfile)
class ServiceProfileAdmin(admin.ModelAdmin):
    """The services catalogue: what users may deploy beside their notebooks."""

    list_display = ["display_name", "exposure", "default_cpu", "default_memory_gib",
                    "max_gpus", "published", "sort_order"]
    list_editable = ["published", "sort_order"]
    list_filter = ["published", "groups"]
    prepopulated_fields = {"name": ["display_name"]}
    filter_horizontal = ["groups"]
    fieldsets = [
        (None, {"fields": ["name", "display_name", "description", "icon", "exposure",
                           "published", "groups", "sort_order"]}),
        ("Size", {"fields": ["default_cpu", "default_memory_gib", "default_gpus", "max_gpus",
                             "model_names", "health_path"]}),
        ("Local machine", {"fields": ["local_packages", "local_requires", "local_command"]}),
        ("Kubernetes (a Flux HelmRelease)", {"fields": [
            "chart_repository", "chart", "chart_version", "values_template", "service_name",
            "service_port", "storage_gib"]}),
    ]


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["name", "instance", "profile", "status", "status_message", "created_at"]
    list_filter = ["status", "profile"]
    search_fields = ["name", "instance__name", "instance__workspace__owner__username"]
    list_select_related = ["instance", "profile"]
    readonly_fields = [f.name for f in Service._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
