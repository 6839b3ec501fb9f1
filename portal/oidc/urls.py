from allauth.socialaccount import app_settings
from django.urls import include, path

from portal.sso import callback_view, login_view

# The same paths and names as allauth's openid_connect provider.
urlpatterns = [
    path("<str:provider_id>/", include([
        path("login/", login_view, name="openid_connect_login"),
        path("login/callback/", callback_view, name="openid_connect_callback"),
    ])),
]
if app_settings.OPENID_CONNECT_URL_PREFIX:
    urlpatterns = [path(f"{app_settings.OPENID_CONNECT_URL_PREFIX}/", include(urlpatterns))]
