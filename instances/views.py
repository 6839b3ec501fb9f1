from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from clusters.backends import get_backend
from clusters.backends.local import machine_limits, tenants
from clusters.models import Cluster
from workspaces.services import client_ip, ensure_workspace

from . import selectors, services
from .forms import LaunchForm
from .models import ComputeProfile, Instance


def get_instance_for_user(request: HttpRequest, pk: int) -> Instance:
    """The user's own instance, or 404: another user's instance is never revealed."""
    workspace = ensure_workspace(user=request.user)
    return get_object_or_404(
        Instance.objects.select_related("profile", "cluster", "launched_by"),
        pk=pk,
        workspace=workspace,
    )


@dataclass(frozen=True)
class SizeCard:
    profile: ComputeProfile
    refusal: str
    cost: str
    cpu: Decimal
    memory_gib: int
    local: bool


def size_cards(profiles: Iterable[ComputeProfile], usage: selectors.QuotaUsage) -> list[SizeCard]:
    """The sizes as the wizard shows them. On the local cluster CPU and memory are limits on
    this machine, so a card never promises more than it has (no 64 CPUs on a 2-CPU box)."""
    machine = machine_limits()
    cards = []
    for p in profiles:
        local = p.cluster.backend == Cluster.Backend.LOCAL
        cpu, memory_gib = machine.cap(p.cpu, p.memory_gib) if local else (p.cpu, p.memory_gib)
        cards.append(SizeCard(
            profile=p, refusal=usage.refusal(p.gpus), cost=usage.cost(p.gpus), cpu=cpu,
            memory_gib=memory_gib, local=local,
        ))
    return cards


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
            messages.success(request, f"You launched {instance.name}.")
            return redirect("instances:detail", pk=instance.pk)
    usage = selectors.quota_usage(workspace=workspace)
    cards = size_cards(profiles, usage)
    clusters = {p.cluster for p in profiles}
    simulated = any(offers_simulated_gpus(cluster) for cluster in clusters)
    local = any(c.backend == Cluster.Backend.LOCAL for c in clusters)
    chosen = str(form["profile"].value() or "")
    selected = next((c for c in cards if str(c.profile.pk) == chosen and not c.refusal), None)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "instances/new.html",
        {"form": form, "cards": cards, "usage": usage, "simulated": simulated,
         "machine": machine_limits() if local else None, "selected": selected},
        status=status,
    )


def instance_detail(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_instance_for_user(request, pk)
    limits, local_mode = None, ""
    if instance.cluster.backend == Cluster.Backend.LOCAL:
        # What the sandbox may really use: the size's figures capped at this machine's.
        cpu, memory_gib = machine_limits().cap(instance.cpu, instance.memory_gib)
        limits = {"cpu": cpu, "memory_gib": memory_gib}
        local_mode = tenants.mode_line()  # who its notebooks run as, said plainly
    return render(request, "instances/detail.html",
                  {"instance": instance, "limits": limits, "local_mode": local_mode})


def instance_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the detail page; the page includes the same partial."""
    instance = get_instance_for_user(request, pk)
    return render(request, "instances/partials/status.html", {"instance": instance})


@require_http_methods(["GET", "POST"])
def instance_delete(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_instance_for_user(request, pk)
    if request.method == "POST":
        if not instance.is_active or instance.status == Instance.Status.DELETING:
            # Confirmed in a tab opened before someone else deleted it: say so, change nothing.
            already = "deleted" if not instance.is_active else "being deleted"
            messages.info(request, f"{instance.name} is already {already}.")
            return redirect("instances:list")
        services.delete_instance(instance=instance, by=request.user, ip_address=client_ip(request))
        messages.success(request, f"You asked to delete {instance.name}.")
        return redirect("instances:list")
    return render(request, "instances/delete.html", {"instance": instance})


@require_http_methods(["POST"])
def instance_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Send a failed instance back to provisioning under its name, if it fits the quota."""
    instance = get_instance_for_user(request, pk)
    try:
        if services.retry_instance(instance=instance, by=request.user,
                                   ip_address=client_ip(request)):
            messages.success(request, f"You asked to retry {instance.name}.")
    except ValidationError as exc:
        messages.error(request, f"Cannot retry {instance.name}: {' '.join(exc.messages)}")
    return redirect("instances:detail", pk=instance.pk)
