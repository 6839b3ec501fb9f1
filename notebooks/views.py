from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from clusters.models import Cluster
from instances import deployment_pages
from instances.selectors import instance_or_404
from workspaces.services import client_ip

from . import selectors, services
from .forms import DeployForm
from .models import Notebook


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
