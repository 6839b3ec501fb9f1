from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from access import origins
from clusters.models import Cluster
from instances import deployment_pages
from instances.selectors import instance_or_404
from workspaces.models import AuditAction
from workspaces.services import client_ip, record_audit

from . import selectors, services
from .forms import DeployForm
from .models import Notebook, Service, ServiceKey, ServiceProfile


def get_notebook_for_user(request: HttpRequest, pk: int) -> Notebook:
    """A notebook on an instance the user owns or collaborates on, or 404: anyone else's
    notebook (and token) never shows. Access is the instance's, decided in one place."""
    notebook = get_object_or_404(Notebook.objects.select_related("profile", "created_by"), pk=pk)
    notebook.instance = instance_or_404(user=request.user, pk=notebook.instance_id)
    return notebook


def notebook_list(request: HttpRequest) -> HttpResponse:
    notebooks = selectors.live_notebooks(user=request.user)
    instance = None
    if "instance" in request.GET:
        wanted = request.GET["instance"]
        # ASCII digits only: str.isdigit() and int() also take '²' or Arabic-Indic digits.
        if not (wanted.isascii() and wanted.isdecimal()):
            raise Http404("No such instance.")
        instance = instance_or_404(user=request.user, pk=int(wanted))
        notebooks = notebooks.filter(instance=instance)
    notebooks = list(notebooks[:200])
    context = {"notebooks": notebooks, "instance": instance,
               "polling": any(not n.is_final for n in notebooks)}
    if request.htmx or instance:
        return render(request, "notebooks/partials/table.html", context)
    return render(request, "notebooks/list.html", context)


@require_http_methods(["GET", "POST"])
def notebook_new(request: HttpRequest) -> HttpResponse:
    instances = selectors.usable_instances(user=request.user)
    profiles = selectors.deployable_profiles()
    # Profiles this machine cannot run are named as such before anyone clicks Deploy.
    local = instances.filter(cluster__backend=Cluster.Backend.LOCAL).exists()
    unavailable = {p.pk: services.local_problem(p) for p in profiles} if local else {}
    form = DeployForm(
        request.POST or None, profiles=profiles, instances=instances, unavailable=unavailable,
        initial={"instance": request.GET.get("instance")},
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            notebook = services.deploy_notebook(
                instance=data["instance"], name=data["name"], profile=data["profile"],
                description=data["description"], cpu=data["cpu"],
                memory_gib=data["memory_gib"], gpus=data["gpus"], by=request.user,
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            form.add_error(None, exc)  # per field where the service named one
        else:
            messages.success(request, f"You deployed {notebook.name}.")
            return redirect("notebooks:detail", pk=notebook.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "notebooks/new.html",
                  {"form": form, "show_form": request.method == "POST" or instances.exists()},
                  status=status)


# Both show the notebook's token: never kept by a browser or a proxy cache.
@never_cache
def notebook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "notebooks/detail.html",
                  {"notebook": get_notebook_for_user(request, pk)})


@never_cache
def notebook_status(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "notebooks/partials/status.html",
                  {"row": get_notebook_for_user(request, pk)})


@require_http_methods(["GET", "POST"])
def notebook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    return deployment_pages.delete(request, get_notebook_for_user(request, pk),
                                   services.delete_notebook)


@require_http_methods(["POST"])
def notebook_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Start a failed notebook again, with its files, on its running instance."""
    return deployment_pages.retry(request, get_notebook_for_user(request, pk),
                                  services.retry_notebook)


@require_http_methods(["POST"])
def notebook_stop(request: HttpRequest, pk: int) -> HttpResponse:
    """Stop its server, keep its files: Start brings it back."""
    return deployment_pages.act(request, get_notebook_for_user(request, pk),
                                services.stop_notebook, "stop")


@require_http_methods(["POST"])
def notebook_start(request: HttpRequest, pk: int) -> HttpResponse:
    return deployment_pages.act(request, get_notebook_for_user(request, pk),
                                services.start_notebook, "start")


# --- catalogue services --------------------------------------------------------------------


def get_service_for_user(request: HttpRequest, pk: int) -> Service:
    """A service on an instance the user owns or collaborates on, or 404."""
    service = get_object_or_404(Service.objects.select_related("profile", "created_by"), pk=pk)
    service.instance = instance_or_404(user=request.user, pk=service.instance_id)
    return service


def service_list(request: HttpRequest) -> HttpResponse:
    services_ = list(selectors.live_services(user=request.user)[:200])
    context = {"services": services_, "polling": any(not s.is_final for s in services_)}
    if request.htmx:
        return render(request, "services/partials/table.html", context)
    return render(request, "services/list.html", context)


@require_http_methods(["GET", "POST"])
def service_new(request: HttpRequest) -> HttpResponse:
    instances = selectors.usable_instances(user=request.user)
    profiles = selectors.service_profiles_for(user=request.user)
    wanted = request.POST.get("instance") or request.GET.get("instance") or ""
    chosen = (instances.filter(pk=wanted).first() if wanted.isascii() and wanted.isdecimal()
              else None) or instances.first()
    # What cannot run where the user is deploying is named before anyone clicks Deploy.
    unavailable = ({p.pk: services.service_problem(p, chosen.cluster) for p in profiles}
                   if chosen else {})
    form = DeployForm(
        request.POST or None, profiles=profiles, instances=instances, unavailable=unavailable,
        initial={"instance": request.GET.get("instance")}, what="service",
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            service = services.deploy_service(
                instance=data["instance"], name=data["name"], profile=data["profile"],
                description=data["description"], cpu=data["cpu"],
                memory_gib=data["memory_gib"], gpus=data["gpus"], model=data.get("model") or "",
                by=request.user, ip_address=client_ip(request),
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"You deployed {service.name}.")
            return redirect(service)
    status = 400 if request.method == "POST" else 200
    return render(request, "services/new.html",
                  {"form": form, "show_form": request.method == "POST" or instances.exists()},
                  status=status)


def service_detail(request: HttpRequest, pk: int, new_key: str = "") -> HttpResponse:
    service = get_service_for_user(request, pk)
    context: dict = {"service": service}
    if service.profile.exposure == ServiceProfile.Exposure.API:
        # An API for programs: the user's own keys, and how to call it with one.
        base = f"{origins.origin_for(service, request)}/v1"
        context.update(
            keys=ServiceKey.objects.filter(service=service, user=request.user)[:50],
            api_base=base, new_key=new_key, example_key=new_key or "gps_…",
            example_model=service.model or "the-model")
    return render(request, "services/detail.html", context)


@never_cache
@require_http_methods(["POST"])
def service_key_new(request: HttpRequest, pk: int) -> HttpResponse:
    """A new key of the user's own, shown once on the page that answers."""
    service = get_service_for_user(request, pk)
    try:
        _, plain = services.issue_service_key(service=service, by=request.user,
                                              name=request.POST.get("name", "").strip(),
                                              ip_address=client_ip(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(service)
    messages.success(request, "Your new key is below. Copy it now: it is not shown again.")
    return service_detail(request, pk, new_key=plain)


@require_http_methods(["POST"])
def service_key_revoke(request: HttpRequest, pk: int, key_id: int) -> HttpResponse:
    service = get_service_for_user(request, pk)
    # Only the user's own keys: another's is a 404, never revoked.
    key = get_object_or_404(ServiceKey, pk=key_id, service=service, user=request.user)
    if services.revoke_service_key(key=key, by=request.user, ip_address=client_ip(request)):
        messages.success(request, f"The key {key.prefix}… is revoked.")
    return redirect(service)


def service_status(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "services/partials/status.html",
                  {"row": get_service_for_user(request, pk)})


@require_http_methods(["GET", "POST"])
def service_delete(request: HttpRequest, pk: int) -> HttpResponse:
    return deployment_pages.delete(request, get_service_for_user(request, pk),
                                   services.delete_service)


@require_http_methods(["POST"])
def service_retry(request: HttpRequest, pk: int) -> HttpResponse:
    return deployment_pages.retry(request, get_service_for_user(request, pk),
                                  services.retry_service)


@require_http_methods(["POST"])
def service_stop(request: HttpRequest, pk: int) -> HttpResponse:
    return deployment_pages.act(request, get_service_for_user(request, pk),
                                services.stop_service, "stop")


@require_http_methods(["POST"])
def service_start(request: HttpRequest, pk: int) -> HttpResponse:
    return deployment_pages.act(request, get_service_for_user(request, pk),
                                services.start_service, "start")


@never_cache
def service_open(request: HttpRequest, pk: int) -> HttpResponse:
    """To the service's own origin, signed in there once (access.origins)."""
    service = get_service_for_user(request, pk)
    if service.status != Service.Status.RUNNING:
        messages.info(request, f"{service.name} is {service.status_label.lower()}; it opens "
                      "once it runs.")
        return redirect(service)
    record_audit(action=AuditAction.SERVICE_OPENED, obj=service, actor=request.user,
                 workspace=service.instance.workspace, ip_address=client_ip(request),
                 instance=service.instance.name)
    return redirect(origins.open_url(target=service, request=request,
                                  next_path=request.GET.get("next", "/")))


@never_cache
def notebook_open(request: HttpRequest, pk: int) -> HttpResponse:
    """A local notebook's JupyterLab on its origin, signed in there once; one on
    Kubernetes at its own host, with its token."""
    notebook = get_notebook_for_user(request, pk)
    if notebook.status != Notebook.Status.RUNNING:
        messages.info(request, f"{notebook.name} is {notebook.status_label.lower()}; it opens "
                      "once it runs.")
        return redirect(notebook)
    if notebook.instance.cluster.backend != Cluster.Backend.LOCAL:
        return redirect(notebook.open_url)
    return redirect(origins.open_url(target=notebook, request=request,
                                  next_path=request.GET.get("next", "/lab")))
