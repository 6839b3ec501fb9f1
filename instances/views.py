
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from clusters.backends import get_backend
from clusters.backends.local import limits as local_limits
from clusters.backends.local import machine_limits, tenants
from clusters.models import Cluster
from workspaces.services import client_ip, ensure_workspace

from . import deployment_pages, selectors, services
from .collaborators import (
    Invitations,
    invite_collaborator,
    remove_collaborator,
    resend_invitation,
    revoke_invitation,
)
from .forms import InviteForm, LaunchForm
from .models import Collaborator, Instance


def offers_simulated_gpus(cluster: Cluster) -> bool:
    # Only the local backend can simulate; asking a remote cluster would cost a page an API call.
    return cluster.backend == Cluster.Backend.LOCAL and get_backend(cluster).inventory().simulated


def instance_list(request: HttpRequest) -> HttpResponse:
    paginator = Paginator(selectors.live_instances(owner=request.user), settings.INSTANCES_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    polling = any(not i.is_final for i in page.object_list)
    if request.htmx:
        return render(request, "instances/partials/table.html", {"page": page, "polling": polling})
    shared = list(selectors.shared_instances(user=request.user)[:200])
    return render(request, "instances/list.html", {
        "page": page, "polling": polling, "shared": shared,
        "shared_only": selectors.shared_only(request),
    })


@require_http_methods(["GET", "POST"])
def instance_new(request: HttpRequest) -> HttpResponse:
    if selectors.shared_only(request):
        return render(request, "portal/no_access.html", {"launching": True}, status=403)
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
    if request.method == "POST" and request.htmx:
        # The wizard's own submit (htmx): answer with why, above the form the user is still
        # looking at; the size cards, quota and page around it need not be worked out again.
        return render(request, "instances/partials/launch_feedback.html", {"form": form},
                      status=400)
    usage = selectors.quota_usage(workspace=workspace)
    cards = selectors.size_cards(profiles, usage)
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
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    return render(request, "instances/detail.html", _detail_context(request, instance))


def instance_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the detail page; the page includes the same partial."""
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    return render(request, "instances/partials/status.html", {
        "row": instance,
        "can_manage": selectors.may_manage(instance=instance, user=request.user)})


@require_http_methods(["GET", "POST"])
def instance_delete(request: HttpRequest, pk: int) -> HttpResponse:
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    # Said before the confirmation too, not after it (the service refuses the POST anyway).
    selectors.check_may_manage(instance=instance, by=request.user, doing="delete it")
    return deployment_pages.delete(request, instance, services.delete_instance)


@require_http_methods(["POST"])
def instance_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Send a failed instance back to provisioning under its name, if it fits the quota."""
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    return deployment_pages.retry(request, instance, services.retry_instance)


@require_http_methods(["POST"])
def instance_stop(request: HttpRequest, pk: int) -> HttpResponse:
    """Give its GPUs back and keep its data."""
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    return deployment_pages.act(request, instance, services.stop_instance, "stop")


@require_http_methods(["POST"])
def instance_start(request: HttpRequest, pk: int) -> HttpResponse:
    """Bring a stopped instance back, if its GPUs fit the quota again."""
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    return deployment_pages.act(request, instance, services.start_instance, "start")


@require_http_methods(["POST"])
def instance_keep_running(request: HttpRequest, pk: int) -> HttpResponse:
    """Idle stop's warning answered: it runs the policy's whole window again."""
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    return deployment_pages.act(request, instance, services.keep_running, "keep running")


# --- collaborators: the owner and those who can manage share it; anyone may leave --------


def _detail_context(request: HttpRequest, instance: Instance,
                    form: InviteForm | None = None) -> dict:
    limits, local_mode = None, ""
    if instance.cluster.backend == Cluster.Backend.LOCAL:
        limits = selectors.allotment(instance)  # the size's figures capped at this machine's
        # Who its notebooks run as, and what the machine enforces, said plainly.
        local_mode = f"{tenants.mode_line()} {local_limits.mode_line()}"
    return {
        "instance": instance,
        "limits": limits,
        "local_mode": local_mode,
        "reserved": selectors.reserved_by_cluster(instance=instance),
        "collaborators": selectors.collaborators_of(instance=instance),
        "invite_form": form or InviteForm(),
        "can_manage": selectors.may_manage(instance=instance, user=request.user),
        "collaborator_limit": settings.COLLABORATORS_PER_INSTANCE,
    }


def _back_to_instance(request: HttpRequest, instance: Instance, form: InviteForm | None = None
                      ) -> HttpResponse:
    """After a change, back to the instance page; with a refused form, the page shows it."""
    if form is None:
        return redirect("instances:detail", pk=instance.pk)
    return render(request, "instances/detail.html", _detail_context(request, instance, form),
                  status=400)


def _report(request: HttpRequest, invitations: Invitations) -> None:
    if invitations.sent and settings.EMAIL_BACKEND.endswith("filebased.EmailBackend"):
        # No mail server (the embedded default): nobody receives it unless given the link.
        messages.success(request, "No mail server is set up, so the invitation to " + ", ".join(
            c.email for c in invitations.sent) + f" was written to a file in "
            f"{settings.EMAIL_FILE_PATH} instead of mailed: send them the link in it (or set "
            "EMAIL_HOST).")
    elif invitations.sent:
        messages.success(request, "Invitation sent to " + ", ".join(
            c.email for c in invitations.sent) + ".")
    if invitations.unsent:
        messages.warning(request, "The mail server refused the invitation to " + ", ".join(
            c.email for c in invitations.unsent) + ". Use Resend to try again.")


@require_POST
def collaborators(request: HttpRequest, pk: int) -> HttpResponse:
    """Invite the addresses typed in the instance page's collaborators card."""
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    form = InviteForm(request.POST)
    if form.is_valid():
        try:
            invitations = invite_collaborator(
                instance=instance, emails=form.cleaned_data["emails"],
                by=request.user, base_url=selectors.base_url(request),
                ip_address=client_ip(request), access=form.cleaned_data["access"])
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            _report(request, invitations)
            return _back_to_instance(request, instance)
    return _back_to_instance(request, instance, form)


def _collaborator_for(request: HttpRequest, pk: int, collaborator_pk: int) -> Collaborator:
    instance = selectors.instance_or_404(user=request.user, pk=pk)
    return get_object_or_404(
        Collaborator.objects.select_related("instance__workspace"),
        pk=collaborator_pk, instance=instance, status__in=Collaborator.LIVE_STATES)


@require_POST
def collaborator_resend(request: HttpRequest, pk: int, collaborator_pk: int) -> HttpResponse:
    collaborator = _collaborator_for(request, pk, collaborator_pk)
    try:
        _report(request, resend_invitation(
            collaborator=collaborator, by=request.user, base_url=selectors.base_url(request),
            ip_address=client_ip(request)))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return _back_to_instance(request, collaborator.instance)


@require_POST
def collaborator_revoke(request: HttpRequest, pk: int, collaborator_pk: int) -> HttpResponse:
    collaborator = _collaborator_for(request, pk, collaborator_pk)
    if revoke_invitation(collaborator=collaborator, by=request.user,
                                  ip_address=client_ip(request)):
        messages.info(request, f"The invitation to {collaborator.email} was revoked.")
    return _back_to_instance(request, collaborator.instance)


@require_POST
def collaborator_remove(request: HttpRequest, pk: int, collaborator_pk: int) -> HttpResponse:
    collaborator = _collaborator_for(request, pk, collaborator_pk)
    removed = remove_collaborator(collaborator=collaborator, by=request.user,
                                  ip_address=client_ip(request))
    if removed:
        withdrawn = (f" The invitations they had sent ({', '.join(removed.withdrawn)}) were "
                     "withdrawn too." if removed.withdrawn else "")
        messages.info(request, (
            f"{collaborator.email} no longer has access to {collaborator.instance.name}. Its "
            f"notebooks restart with new tokens, since they knew the old ones.{withdrawn}"))
    if collaborator.user_id == request.user.pk:  # left it themselves: the page is gone too
        return redirect("instances:list")
    return _back_to_instance(request, collaborator.instance)
