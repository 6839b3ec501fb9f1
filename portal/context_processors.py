from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, str]:
    context = {"SITE_NAME": settings.SITE_NAME}
    if request.path in (settings.LOGIN_URL_PATH, "/accounts/guest/"):  # the sign-in pages
        from .sso import sso_app

        app = sso_app(request)
        context["SSO_NAME"] = app.name if app else ""
    return context
