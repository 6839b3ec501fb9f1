from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from api.main import urls as api_urls
from notebooks.urls import service_urlpatterns
from portal.invitations import invitation, invitation_guest
from portal.views import admin_overview, email_managed, guest_login, login, social_signup

admin.site.site_header = f"{settings.SITE_NAME} administration"
admin.site.site_title = settings.SITE_NAME

urlpatterns = [
    path("", include("portal.urls")),
    path("instances/", include("instances.urls")),
    path("notebooks/", include("notebooks.urls")),
    path("services/", include((service_urlpatterns, "services"))),
    path("invitations/<str:token>/", invitation, name="invitation"),
    path("invitations/<str:token>/guest/", invitation_guest, name="invitation_guest"),
    path("access/", include("access.urls")),
    path("api/", api_urls()),
    path("api-tokens/", include("api.urls")),
    # Before allauth's own: sign-in goes to the identity provider when one is configured.
    path("accounts/login/", login, name="account_login"),
    path("accounts/guest/", guest_login, name="guest_login"),
    path("accounts/email/", email_managed, name="account_email"),
    path("accounts/social/signup/", social_signup, name="socialaccount_signup"),
    path("accounts/", include("allauth.urls")),
    path("admin/overview/", admin.site.admin_view(admin_overview), name="admin_overview"),
    path("admin/", admin.site.urls),
]
