from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from clusters.backends import get_backend
from clusters.models import Cluster
from workspaces.services import client_ip, ensure_workspace

from . import selectors, services
from .forms import LaunchForm
from .models import Instance


def get_instance_for_user(request: HttpRequest, pk: int) -> Instance:
    """The user's own instance, or 404: another user's instance is never revealed."""
    instance = selectors.instance_for_user(user=request.user, pk=pk)
    if instance is None:
        raise Http404("No such instance.")
    return instance


def offers_simulated_gpus(cluster: Cluster) -> bool:
    # Only the local backend can simulate; asking a remote cluster would cost a page an API call.
    return cluster.backend == Cluster.Backend.LOCAL and get_backend(cluster).inventory().simulated


def instance_list(request: HttpRequest) -> HttpResponse:
    paginator = Paginator(selectors.live_instances(owner=request.user), settings.INSTANCES_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    polling = any(not i.is_final for i in page.object_list)
    template = "instances/partials/table.html" if request.headers.get("HX-Request") else (
        "instances/list.html"
    )
    return render(request, template, {"page": page, "polling": polling})


@require_http_methods(["GET", "POST"])
def instance_new(request: HttpRequest) -> HttpResponse:
    workspace = ensure_workspace(user=request.user)
    profiles = selectors.launchable_profiles(user=request.user)
    form = LaunchForm(request.POST or None, profiles=profiles)
    if request.method == "POST" and form.is_valid():
        try:
            instance = services.launch_instance(
                workspace=workspace,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                profile=form.cleaned_data["profile"],
                by=request.user,
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            form.add_error(None, exc)  # per field where the service named one
        else:
            messages.success(request, f"{instance.name} is launching.")
            return redirect("instances:detail", pk=instance.pk)
    usage = selectors.quota_usage(workspace=workspace)
    cards = [(p, usage.refusal(p.gpus)) for p in profiles]
    simulated = any(offers_simulated_gpus(cluster) for cluster in {p.cluster for p in profiles})
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "instances/new.html",
        {"form": form, "cards": cards, "usage": usage, "simulated": simulated},
        status=status,
    )


def instance_detail(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_instance_for_user(request, pk)
    return render(request, "instances/detail.html", {"instance": instance})


def instance_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the detail page; the page includes the same partial."""
    instance = get_instance_for_user(request, pk)
    return render(request, "instances/partials/status.html", {"instance": instance})


@require_http_methods(["GET", "POST"])
def instance_delete(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_instance_for_user(request, pk)
    if request.method == "POST":
        services.delete_instance(instance=instance, by=request.user, ip_address=client_ip(request))
        messages.info(request, f"{instance.name} is being deleted.")
        return redirect("instances:list")
    return render(request, "instances/delete.html", {"instance": instance})
