from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from workspaces.services import client_ip

from . import services
from .forms import TokenForm
from .models import ApiToken


@never_cache  # the page that shows a new token: never kept by a browser or a proxy cache
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """Personal access tokens for the API and the `gpupaas` command: create (shown once),
    see their last use, revoke."""
    form = TokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            token, plain = services.create_api_token(
                user=request.user, name=form.cleaned_data["name"],
                days=form.cleaned_data["days"], scope=form.cleaned_data["scope"],
                ip_address=client_ip(request))
        except ValidationError as exc:
            form.add_error(None, exc)  # per field, as the service named them
        else:
            created = {"token": token, "plain": plain}
            form = TokenForm()
    status = 400 if request.method == "POST" and created is None else 200
    return render(request, "api/tokens.html", {
        "form": form, "created": created,
        "tokens": list(ApiToken.objects.filter(user=request.user)[:100]),
        "api_url": request.build_absolute_uri("/api/v1/"),
        "portal_url": request.build_absolute_uri("/").rstrip("/"),
        "docs_url": request.build_absolute_uri("/api/docs"),
        "max_days": settings.API_TOKEN_MAX_DAYS,
    }, status=status)


@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.select_related("user"), pk=pk, user=request.user)
    if services.revoke_api_token(token=token, by=request.user, ip_address=client_ip(request)):
        messages.info(request, f"Token {token.name} ({token.prefix}…) revoked.")
    return redirect("api_tokens:list")
