from django.contrib import admin

from .models import Cluster, GpuAllocation


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["display_name", "name", "backend", "created_at"]
    prepopulated_fields = {"name": ["display_name"]}


@admin.register(GpuAllocation)
class GpuAllocationAdmin(admin.ModelAdmin):
    list_display = ["cluster", "index", "holder", "created_at"]
    list_filter = ["cluster"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
