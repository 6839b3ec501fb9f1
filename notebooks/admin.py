from django.contrib import admin

from .models import NotebookProfile


@admin.register(NotebookProfile)
class NotebookProfileAdmin(admin.ModelAdmin):
    list_display = [
        "display_name", "image", "default_cpu", "default_memory_gib", "default_gpus",
        "published", "sort_order",
    ]
    list_editable = ["published", "sort_order"]
    prepopulated_fields = {"name": ["display_name"]}
