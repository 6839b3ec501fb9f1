from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from workspaces.services import client_ip

from . import services
from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "user", "scope", "created_at", "last_used_at",
                    "expires_at", "revoked_at", "revoked_reason"]
    list_filter = ["scope", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix"]
    readonly_fields = [f.name for f in ApiToken._meta.fields]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # users create their own on the API tokens page

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = sum(
            services.revoke_api_token(token=t, by=request.user, ip_address=client_ip(request))
            for t in queryset.select_related("user")
        )
        self.message_user(request, f"{revoked} token(s) revoked.")
