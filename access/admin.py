from django.contrib import admin
from django.http import HttpRequest

from workspaces.admin import BearerTokenAdmin
from workspaces.services import client_ip

from . import services
from .models import AccessToken, ProxyRequest


@admin.register(AccessToken)
class AccessTokenAdmin(BearerTokenAdmin):
    list_display = ["prefix", "user", "instance", "created_at", "last_used_at", "expires_at",
                    "revoked_at", "revoked_reason"]
    list_filter = ["revoked_at"]
    search_fields = ["user__username", "instance__name", "prefix"]
    revoke_related = ("instance__workspace",)

    def revoke_one(self, request: HttpRequest, token: AccessToken) -> bool:
        return services.revoke_access_token(token=token, by=request.user,
                                            ip_address=client_ip(request))


@admin.register(ProxyRequest)
class ProxyRequestAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "instance", "verb", "path", "status", "duration_ms",
                    "client_ip"]
    list_filter = ["verb", "status"]
    search_fields = ["user__username", "instance__name", "path"]
    readonly_fields = [f.name for f in ProxyRequest._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
