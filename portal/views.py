from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from instances import selectors as instance_selectors
from notebooks import selectors as notebook_selectors
from workspaces.services import ensure_workspace


def landing(request: HttpRequest) -> HttpResponse:
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
            "polling": any(not i.is_final for i in recent) or "deploying" in notebooks,
        },
    )


def ping(request: HttpRequest) -> HttpResponse:
    """The cheapest signed-in page (the layout and no data): the benchmarks' baseline."""
    return render(request, "portal/ping.html")


@login_not_required
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
