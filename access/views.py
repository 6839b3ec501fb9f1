from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from instances.models import Instance
from instances.selectors import instance_or_404
from workspaces.services import client_ip

from . import selectors, services
from .models import AccessToken


def _client(request: HttpRequest) -> str:
    return f"{client_ip(request) or '?'} {request.headers.get('User-Agent', '')}".strip()


def kubeconfig_for(*, request: HttpRequest, instance: Instance, token: str) -> str:
    """A downloaded kubeconfig: the portal's proxy at the address this request used."""
    return services.kubeconfig(instance=instance, username=request.user.get_username(),
                               token=token,
                               server=request.build_absolute_uri(f"/k8s/{instance.pk}/"))


def access_panel(request: HttpRequest) -> HttpResponse:
    """The instance page's remote-access card (loaded by htmx, as notebooks are)."""
    wanted = request.GET.get("instance", "")
    if not wanted.isdigit():
        raise Http404("No such instance.")
    instance = instance_or_404(user=request.user, pk=int(wanted))
    shell_kind, shell_problem = services.shell_offer(instance=instance)
    context = {
        "instance": instance,
        "has_api": instance.has_kubernetes_api,
        "shell_kind": shell_kind,
        "shell_problem": shell_problem,
        "tokens": list(selectors.tokens_of(user=request.user, instance=instance)[:50]),
        "requests": selectors.recent_proxy_requests(instance=instance),
        "default_hours": f"{settings.ACCESS_TOKEN_TTL_HOURS:g}",
        "max_hours": f"{settings.ACCESS_TOKEN_MAX_TTL_HOURS:g}",
        "secure": request.is_secure(),
    }
    return render(request, "access/partials/panel.html", context)


@require_POST
def kubeconfig_download(request: HttpRequest, pk: int) -> HttpResponse:
    instance = instance_or_404(user=request.user, pk=pk)
    if not instance.has_kubernetes_api:
        raise Http404("This instance has no Kubernetes API.")
    try:
        hours = float(request.POST.get("hours") or settings.ACCESS_TOKEN_TTL_HOURS)
    except ValueError:
        hours = -1.0
    try:
        _, token = services.issue_access_token(
            user=request.user, instance=instance, hours=hours, client=_client(request),
            ip_address=client_ip(request),
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("instances:detail", pk=instance.pk)
    response = HttpResponse(
        kubeconfig_for(request=request, instance=instance, token=token),
        content_type="application/yaml",
    )
    response["Content-Disposition"] = f'attachment; filename="{instance.name}-kubeconfig.yaml"'
    response["Cache-Control"] = "no-store"  # it carries a credential
    return response


@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(AccessToken.objects.select_related("instance__workspace"),
                              pk=pk, user=request.user)
    instance = instance_or_404(user=request.user, pk=token.instance_id)
    if services.revoke_access_token(token=token, by=request.user, ip_address=client_ip(request)):
        messages.info(request, f"Token {token.prefix}… revoked.")
    return redirect("instances:detail", pk=instance.pk)


@require_POST
def tokens_revoke_all(request: HttpRequest, pk: int) -> HttpResponse:
    instance = instance_or_404(user=request.user, pk=pk)
    count = services.revoke_access_tokens(
        instance=instance, user=request.user, reason=f"revoked by {request.user.get_username()}",
        by=request.user, ip_address=client_ip(request),
    )
    messages.info(request, f"{count} token{'s' if count != 1 else ''} revoked.")
    return redirect("instances:detail", pk=instance.pk)


def shell_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The browser terminal: xterm.js on a WebSocket to access.consumers.ShellConsumer."""
    instance = instance_or_404(user=request.user, pk=pk)
    kind, problem = services.shell_offer(instance=instance)
    response = render(request, "access/shell.html", {
        "instance": instance,
        "kind": kind,
        "problem": problem,
        "idle_minutes": f"{settings.SHELL_IDLE_TIMEOUT_S / 60:g}",
    })
    # xterm.js sizes its cells and colours through <style> elements it creates; scripts stay
    # limited to the portal's own files.
    response["Content-Security-Policy"] = settings.CONTENT_SECURITY_POLICY.replace(
        "style-src 'self'", "style-src 'self' 'unsafe-inline'")
    response["Cache-Control"] = "no-store"
    return response
