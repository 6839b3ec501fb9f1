from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from portal.views import login

admin.site.site_header = f"{settings.SITE_NAME} administration"
admin.site.site_title = settings.SITE_NAME

urlpatterns = [
    path("", include("portal.urls")),
    path("instances/", include("instances.urls")),
    path("notebooks/", include("notebooks.urls")),
    path("access/", include("access.urls")),
    # Before allauth's own: sign-in goes to the identity provider when one is configured.
    path("accounts/login/", login, name="account_login"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
