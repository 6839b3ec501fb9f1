from datetime import timedelta
from urllib.parse import urlencode

from allauth.account.views import LoginView
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from instances import selectors as instance_selectors
from instances.selectors import shared_only
from notebooks import selectors as notebook_selectors
from workspaces import usage as usage_records
from workspaces.models import GuestAccount
from workspaces.services import ensure_workspace

from .sso import refusal, sso_app


def landing(request: HttpRequest) -> HttpResponse:
    shared = list(instance_selectors.shared_instances(user=request.user)[:20])
    if shared_only(request):
        # No role: no workspace, no quota, no catalogue; just what others shared.
        return render(request, "portal/landing.html", {
            "shared": shared, "shared_only": True,
            "polling": any(not i.is_final for i in shared),
            # Guests sign in with a password: offer them a second factor until they have one.
            "offer_mfa": GuestAccount.objects.filter(user=request.user).exists()
            and not Authenticator.objects.filter(user=request.user).exists()})
    workspace = ensure_workspace(user=request.user)
    usage = instance_selectors.quota_usage(workspace=workspace)
    counts = instance_selectors.status_counts(workspace=workspace)
    recent = list(instance_selectors.live_instances(owner=request.user)[:5])
    notebooks = notebook_selectors.status_counts(owner=request.user)
    return render(
        request,
        "portal/landing.html",
        {
            "usage": usage,
            "counts": counts,
            "recent": recent,
            "notebooks": notebooks,
            "notebooks_total": sum(notebooks.values()),
            "shared": shared,
            "showback": usage_records.showback(workspace=workspace),
            "budgets": [b for b in usage_records.budgets(workspace=workspace, user=request.user)
                        if b.percent >= 80],
            "polling": any(not i.is_final for i in recent) or "deploying" in notebooks,
        },
    )


def admin_overview(request: HttpRequest) -> HttpResponse:
    """The administrators' overview; gpupaas/urls.py wraps it in the admin site's own check.
    `?from=2026-01&to=2026-11&by=group` picks the GPU-hours shown; `&format=csv` downloads
    them."""
    now = timezone.now()
    this_month = f"{now:%Y-%m}"
    period = {"from": request.GET.get("from") or this_month,
              "to": request.GET.get("to") or this_month, "by": request.GET.get("by", "group")}
    problem, hours = "", None
    try:
        first = usage_records.parse_month(period["from"])
        last = usage_records.parse_month(period["to"])
        if first > last:
            raise ValueError("The first month comes after the last.")
        if period["by"] not in usage_records.DIMENSIONS:
            raise ValueError(f"Break down by one of: {', '.join(usage_records.DIMENSIONS)}.")
        hours = usage_records.summary(first=first, last=last, by=period["by"], now=now,
                                      priced=True)
    except ValueError as exc:
        problem = str(exc)
    if hours is not None and request.GET.get("format") == "csv":
        name = f"gpu-hours-by-{period['by']}-{period['from']}-to-{period['to']}.csv"
        return HttpResponse(hours.csv(), content_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
    overview = instance_selectors.admin_overview(failed_since=now - timedelta(hours=24))
    return render(request, "admin/overview.html", {
        **admin.site.each_context(request), "title": "Overview", "overview": overview,
        "deployments": notebook_selectors.deployments_by_cluster(),
        "deployment_statuses": [s.label for s in notebook_selectors.STATUSES],
        "hours": hours, "period": period, "problem": problem,
        "dimensions": [(d, d.replace("_", " ")) for d in usage_records.DIMENSIONS],
    }, status=400 if problem else 200)


def ping(request: HttpRequest) -> HttpResponse:
    """The cheapest signed-in page (the layout and no data): the benchmarks' baseline."""
    return render(request, "portal/ping.html")


# Set in a browser a guest signed in from: its next sign-in offers the guests' page first,
# not the identity provider, where guests have no account. It holds no secret.
GUEST_HINT = "gpupaas_guest"


@login_not_required
def login(request: HttpRequest) -> HttpResponse:
    """With an identity provider, signing in means going there (and coming back to the page
    asked for); `?local` is the administrators' break-glass password form. A browser a guest
    signed in from goes to the guests' page (`?sso` goes to the IdP all the same)."""
    app = sso_app(request)
    wants_password = "local" in request.GET or request.method == "POST"
    if (app is not None and not wants_password and "sso" not in request.GET
            and request.COOKIES.get(GUEST_HINT)):
        return redirect(f"{reverse('guest_login')}?{request.GET.urlencode()}")
    if app is not None and not wants_password:
        next_url = request.GET.get("next", "")
        if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
            next_url = reverse("portal:landing")
        target = reverse("openid_connect_login", kwargs={"provider_id": app.provider_id})
        return redirect(f"{target}?{urlencode({'process': 'login', 'next': next_url})}")
    if app is not None and not settings.PASSWORD_LOGIN_ENABLED:
        return render(request, "portal/password_login_off.html", {"sso": app}, status=403)
    return LoginView.as_view()(request)


@login_not_required
def guest_login(request: HttpRequest) -> HttpResponse:
    """Guests (people outside the identity provider, with a password from an invitation)
    sign in here, with their second factor if they set one, whatever PASSWORD_LOGIN_ENABLED
    says of other passwords: they have no other way in. Anyone else is refused here."""
    request.guest_sign_in = True  # portal.adapters lets guests alone through
    response = LoginView.as_view(template_name="account/guest_login.html")(request)
    if request.method == "POST" and response.status_code == 302:
        response.set_cookie(GUEST_HINT, "1", max_age=400 * 86400, httponly=True,
                            samesite="Lax", secure=settings.SESSION_COOKIE_SECURE)
    return response


@require_http_methods(["GET", "POST"])
def email_managed(request: HttpRequest) -> HttpResponse:
    """In place of allauth's email management, where anyone could add and make primary any
    address, unverified: that would block a colleague's first sign-in or, with linking by
    email, hand over their account. SSO users' email is the IdP's; local accounts' is set
    by an administrator."""
    changed = request.method == "POST"
    return render(request, "portal/email_managed.html", {"changed": changed},
                  status=403 if changed else 200)


@login_not_required
def social_signup(request: HttpRequest) -> HttpResponse:
    """In place of allauth's sign-up form for IdP users: the IdP's claims are all there is."""
    request.session.pop("socialaccount_sociallogin", None)
    return refusal(request, "Sign-up forms are not used: your account is created from what "
                   "your identity provider says at sign-in. Sign in again; if it fails, tell "
                   "your administrator.")


@login_not_required
def signed_out(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/signed_out.html")
