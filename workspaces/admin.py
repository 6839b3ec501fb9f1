from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import pluralize

from instances.selectors import with_usage

from .models import (
    AuditEvent,
    GpuPrice,
    GroupPolicy,
    GuestAccount,
    IdpGroupMapping,
    UsageRecord,
    Workspace,
)
from .selectors import Quota, effective_quota, resolve_quota
from .services import client_ip, set_quota


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
    list_display = [
        "owner", "quota", "quota_source", "gpus_in_use", "instances_in_use", "last_activity",
        "max_gpus", "max_instances",
    ]
    list_editable = ["max_gpus", "max_instances"]
    search_fields = ["owner__username", "owner__email"]
    list_select_related = ["owner"]
    readonly_fields = ["owner", "quota", "quota_source", "gpus_in_use", "instances_in_use",
                       "last_activity", "created_at"]
    fields = ["owner", "quota", "quota_source", "gpus_in_use", "instances_in_use",
              "max_gpus", "max_instances", "monthly_gpu_hours", "last_activity", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workspace]:
        return with_usage(super().get_queryset(request))

    def effective(self, workspace: Workspace) -> Quota:
        # From the annotations of the list's one query: no query per row.
        return resolve_quota(
            own_gpus=workspace.max_gpus, own_instances=workspace.max_instances,
            group_gpus=workspace.group_gpus, group_instances=workspace.group_instances,
        )

    @admin.display(description="effective quota")
    def quota(self, workspace: Workspace) -> str:
        quota = self.effective(workspace)
        return (f"{quota.max_gpus} GPU{pluralize(quota.max_gpus)}, "
                f"{quota.max_instances} instance{pluralize(quota.max_instances)}")

    @admin.display(description="quota from")
    def quota_source(self, workspace: Workspace) -> str:
        return self.effective(workspace).source

    @admin.display(description="GPUs in use", ordering="gpus_used")
    def gpus_in_use(self, workspace: Workspace) -> int:
        return workspace.gpus_used

    @admin.display(description="instances in use", ordering="instances_used")
    def instances_in_use(self, workspace: Workspace) -> int:
        return workspace.instances_used

    @admin.display(description="last activity", ordering="last_activity")
    def last_activity(self, workspace: Workspace) -> str:
        return naturaltime(workspace.last_activity) if workspace.last_activity else "never"

    def save_model(self, request: HttpRequest, obj: Workspace, form, change: bool) -> None:
        set_quota(workspace=obj, by=request.user, ip_address=client_ip(request))
        # Lowering a quota below what is held takes nothing away: say what it does mean.
        quota = effective_quota(workspace=obj)
        usage = with_usage(Workspace.objects.filter(pk=obj.pk)).get()
        over = []
        if usage.gpus_used > quota.max_gpus:
            over.append(f"{usage.gpus_used} GPUs in use, over its quota of {quota.max_gpus}")
        if usage.instances_used > quota.max_instances:
            over.append(f"{usage.instances_used} instances in use, over its quota of "
                        f"{quota.max_instances}")
        if over:
            self.message_user(
                request,
                f"{obj} now has {' and '.join(over)}. Its running instances keep running; "
                "new launches are refused until enough are deleted to fit the quota.",
                messages.WARNING,
            )


class BearerTokenAdmin(admin.ModelAdmin):
    """The admin of a kind of bearer token (workspaces.tokens): read-only rows, never typed
    in, revoked by an action that goes through the kind's own service (`revoke_one`), so the
    revocation is audited and takes effect at once."""

    actions = ["revoke"]
    revoke_related: tuple[str, ...] = ()

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the portal issues tokens to their users, never an administrator

    def revoke_one(self, request: HttpRequest, token) -> bool:
        raise NotImplementedError

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = sum(self.revoke_one(request, token)
                      for token in queryset.select_related(*self.revoke_related))
        self.message_user(request, f"{revoked} token(s) revoked.")


class ReadOnlyAdmin(admin.ModelAdmin):
    """A trail nobody edits: shown, never added, changed or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_repr", "ip_address"]
    list_filter = ["action", "object_type"]
    search_fields = ["object_repr", "actor__username", "object_id"]
    list_select_related = ["actor"]
    date_hierarchy = "created_at"


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """Every allocation, exact to the second; the overview sums them by period."""

    list_display = ["started_at", "ended_at", "kind", "name", "instance_name", "username",
                    "group", "gpus", "gpu_model"]
    list_filter = ["kind", "gpu_model", "group"]
    search_fields = ["name", "instance_name", "username"]
    date_hierarchy = "started_at"


@admin.register(GpuPrice)
class GpuPriceAdmin(admin.ModelAdmin):
    """Prices turn the overview's GPU-hours into cost."""

    list_display = ["gpu_model", "per_hour", "currency"]


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
