from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.models import Group

from .models import AuditEvent, GroupPolicy, IdpGroupMapping, Workspace


class GroupPolicyInline(admin.StackedInline):
    model = GroupPolicy
    can_delete = False
    verbose_name_plural = "role and default quota"


class IdpGroupMappingInline(admin.TabularInline):
    model = IdpGroupMapping
    extra = 1
    verbose_name_plural = "identity provider groups (membership follows the IdP at each login)"


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    inlines = [GroupPolicyInline, IdpGroupMappingInline]
    list_display = ["name", "role", "default_max_gpus", "members"]
    list_select_related = ["policy"]

    @admin.display(description="role")
    def role(self, group: Group) -> str:
        policy = getattr(group, "policy", None)
        return policy.get_role_display() if policy and policy.role else "—"

    @admin.display(description="default GPUs")
    def default_max_gpus(self, group: Group) -> str:
        policy = getattr(group, "policy", None)
        return str(policy.default_max_gpus) if policy and policy.default_max_gpus else "—"

    @admin.display(description="members")
    def members(self, group: Group) -> int:
        return group.user_set.count()


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["owner", "max_gpus", "max_instances", "created_at"]
    list_editable = ["max_gpus", "max_instances"]
    search_fields = ["owner__username", "owner__email"]
    list_select_related = ["owner"]
    readonly_fields = ["owner", "created_at"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_repr", "ip_address"]
    list_filter = ["action", "object_type"]
    search_fields = ["object_repr", "actor__username", "object_id"]
    list_select_related = ["actor"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
