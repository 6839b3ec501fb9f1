from django.contrib import admin
from django.http import HttpRequest

from workspaces.admin import BearerTokenAdmin
from workspaces.services import client_ip

from . import services
from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(BearerTokenAdmin):
    list_display = ["name", "prefix", "user", "scope", "created_at", "last_used_at",
                    "expires_at", "revoked_at", "revoked_reason"]
    list_filter = ["scope", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix"]
    revoke_related = ("user",)

    def revoke_one(self, request: HttpRequest, token: ApiToken) -> bool:
        return services.revoke_api_token(token=token, by=request.user,
                                         ip_address=client_ip(request))
