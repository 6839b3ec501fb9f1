import time
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve
from django_htmx.http import HttpResponseClientRedirect

from instances.selectors import has_shared_instances
from workspaces.selectors import role_of

# Reachable without a role: signing out, the no-access page itself, the admin (which
# checks staff status on its own), invitation links (accepting one gives access), and the
# JSON API (which asks the same question itself and answers in JSON, token or session).
OPEN_PREFIXES = (
    "/accounts/", "/static/", "/signed-out/", "/admin/", "/invitations/", "/api/",
)


class HtmxRedirectMiddleware:
    """htmx swaps whatever a poll answers into the page, so a redirect (to sign-in, once a
    session has ended) would put the login form inside a status badge. Tell htmx to move
    the whole page instead."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.htmx and response.status_code in (301, 302):
            return HttpResponseClientRedirect(response["Location"], status=204)
        return response


class SecurityHeadersMiddleware:
    """Content-Security-Policy and Permissions-Policy on every response (settings.py says
    which); a view that needs another policy sets its own header first."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY:
            response.headers.setdefault("Content-Security-Policy",
                                        settings.CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        return response


class RoleRequiredMiddleware:
    """Signed-in users without a role see the no-access page instead of the portal, unless
    instances were shared with them: then they see just those (`request.shared_only`).

    The role is read on every request, so a membership change shows at once."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated and not request.path.startswith(OPEN_PREFIXES):
            request.portal_role = role_of(request.user)
            if not request.portal_role:
                request.shared_only = has_shared_instances(user=request.user)
                if not request.shared_only:
                    if names_an_object(request.path):
                        # An instance or notebook they may not see (say, one they were
                        # removed from): as for anyone else, it does not exist.
                        raise Http404("No such object.")
                    return render(request, "portal/no_access.html", status=403)
        return self.get_response(request)


def names_an_object(path: str) -> bool:
    """The URL names one object (an instance, a notebook...) by its id."""
    try:
        return "pk" in resolve(path).kwargs
    except Resolver404:
        return False


class IdleTimeoutMiddleware:
    """Ends a session after SESSION_IDLE_TIMEOUT_S without a request.

    The last-seen time is written at most once a minute, not on every request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            now = int(time.time())
            last = request.session.get("last_seen", now)
            if now - last > settings.SESSION_IDLE_TIMEOUT_S:
                logout(request)
                if request.path.startswith("/api/"):  # the API answers for itself: a 401
                    return self.get_response(request)
                messages.info(request, "You were signed out after a period of inactivity.")
                return redirect(f"{settings.LOGIN_URL_PATH}?next={request.path}")
            if now - last >= 60 or "last_seen" not in request.session:
                request.session["last_seen"] = now
        return self.get_response(request)


class QueryCountHeaderMiddleware:
    """Adds `X-Query-Count` to every response; enabled by QUERY_COUNT_HEADER for benchmarks."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        count = 0

        def counter(execute, sql, params, many, context):
            nonlocal count
            count += 1
            return execute(sql, params, many, context)

        with connection.execute_wrapper(counter):
            response = self.get_response(request)
        response["X-Query-Count"] = str(count)
        return response
