from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.http import HttpRequest

from .models import AuditEvent, GroupPolicy, GuestAccount, IdpGroupMapping, Workspace


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


@admin.register(GuestAccount)
class GuestAccountAdmin(admin.ModelAdmin):
    """People outside the identity provider who set a password from an invitation link."""

    list_display = ["email", "user", "created_at"]
    search_fields = ["email"]
    readonly_fields = ["user", "email", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made only by an invitation link, which proves the address


class GuestFilter(admin.SimpleListFilter):
    title = "guest"
    parameter_name = "guest"

    def lookups(self, request, model_admin):
        return [("yes", "Guests"), ("no", "Not guests")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(guest_account__isnull=self.value() == "no")
        return queryset


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class UserAdmin(DjangoUserAdmin):
    list_display = [*DjangoUserAdmin.list_display, "is_guest"]
    list_filter = [*DjangoUserAdmin.list_filter, GuestFilter]
    list_select_related = ["guest_account"]

    @admin.display(description="guest", boolean=True)
    def is_guest(self, user) -> bool:
        return hasattr(user, "guest_account")
