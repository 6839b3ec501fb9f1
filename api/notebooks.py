"""Notebooks: the notebook pages' verbs (notebooks.services), answered as JSON. A notebook's
token is never in a listing: only POST /notebooks/{id}/token gives it, and that is audited."""

from typing import Annotated

from django.http import HttpRequest
from ninja import Path, Query, Router, Status

from access import origins
from clusters.models import Cluster
from instances.selectors import instance_for_user
from notebooks import selectors, services
from notebooks.forms import DeployForm
from notebooks.models import Notebook
from workspaces.services import client_ip

from .common import (
    MAX_ID,
    absolute,
    act_row,
    delete_row,
    deploy_data,
    instance_or_404,
    page_of,
    problems,
    retry_row,
    valid,
)
from .problems import ApiError, NotFound
from .schemas import DeployIn, NotebookOut, NotebookPage, NotebookStatus, NotebookTokenOut

router = Router(tags=["notebooks"])
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


def public_url(request: HttpRequest, n: Notebook) -> str:
    """Where users reach it: a local notebook through its origin on the portal (stable
    across restarts), one on Kubernetes at its own host."""
    if n.url and n.instance.cluster.backend == Cluster.Backend.LOCAL:
        return f"{origins.origin_for(n, request)}/lab"
    return n.url


def notebook_out(request: HttpRequest, n: Notebook) -> dict:
    return {
        "id": n.pk, "name": n.name, "description": n.description,
        "instance_id": n.instance_id, "instance": n.instance.name,
        "profile": n.profile.name, "profile_name": n.profile.display_name,
        "status": n.status, "status_label": n.status_label, "step": n.step,
        "status_message": n.status_message, "final": n.is_final, "url": public_url(request, n),
        "cpu": float(n.cpu), "memory_gib": n.memory_gib, "gpus": n.gpus,
        "token_renewed": n.token_renewed, "created_at": n.created_at,
        "running_since": n.running_since, "page": absolute(request, "notebooks:detail", n.pk),
    }


def notebook_or_404(request: HttpRequest, pk: int) -> Notebook:
    """A notebook on an instance the caller owns or collaborates on, else 404: access is the
    instance's, decided by instance_for_user as everywhere."""
    notebook = (Notebook.objects.select_related("profile", "instance__workspace",
                                                "instance__cluster")
                .filter(pk=pk).first())
    if notebook is None or instance_for_user(user=request.user, pk=notebook.instance_id) is None:
        raise NotFound("No such notebook.")
    return notebook


@router.get("/notebooks", response={200: NotebookPage, **problems(404, 422)})
def list_notebooks(
    request: HttpRequest,
    instance: int | None = Query(None, ge=1, le=MAX_ID, description="Only this instance's."),
    status: NotebookStatus | None = Query(None),
    page: int = Query(1, ge=1, le=1_000_000),
    page_size: int = Query(20, ge=1, le=100),
) -> dict:
    """Live notebooks on the instances you own or collaborate on, newest first."""
    notebooks = selectors.live_notebooks(user=request.user).order_by("-created_at", "-id")
    if instance is not None:
        notebooks = notebooks.filter(instance=instance_or_404(request, instance))
    if status:
        notebooks = notebooks.filter(status=status)
    items, paging = page_of(notebooks, page, page_size)
    return {**paging, "items": [notebook_out(request, n) for n in items]}


@router.post("/instances/{instance_id}/notebooks",
             response={201: NotebookOut, **problems(400, 404, 422)})
def deploy_notebook(request: HttpRequest, instance_id: Id, payload: DeployIn) -> Status:
    """Deploy a notebook onto a running instance. The same checks as the Deploy page: its
    resources must fit in what the instance has left."""
    instance = instance_or_404(request, instance_id)
    form = DeployForm(
        deploy_data(payload, instance),
        profiles=selectors.deployable_profiles(),
        instances=selectors.usable_instances(user=request.user))
    form.fields["profile"].to_field_name = "name"
    data = valid(form)
    notebook = services.deploy_notebook(
        instance=data["instance"], name=data["name"], profile=data["profile"],
        description=data["description"], cpu=data["cpu"], memory_gib=data["memory_gib"],
        gpus=data["gpus"], by=request.user, ip_address=client_ip(request))
    return Status(201, notebook_out(request, notebook_or_404(request, notebook.pk)))


@router.get("/notebooks/{notebook_id}", response={200: NotebookOut, **problems(404, 422)})
def get_notebook(request: HttpRequest, notebook_id: Id) -> dict:
    return notebook_out(request, notebook_or_404(request, notebook_id))


@router.delete("/notebooks/{notebook_id}", response={202: NotebookOut, **problems(404, 409, 422)})
def delete_notebook(request: HttpRequest, notebook_id: Id) -> Status:
    delete_row(request, notebook_or_404(request, notebook_id), services.delete_notebook)
    return Status(202, notebook_out(request, notebook_or_404(request, notebook_id)))


@router.post("/notebooks/{notebook_id}/retry",
             response={202: NotebookOut, **problems(404, 409, 422)})
def retry_notebook(request: HttpRequest, notebook_id: Id) -> Status:
    """Start a failed notebook again on its running instance, with its files."""
    retry_row(request, notebook_or_404(request, notebook_id), services.retry_notebook)
    return Status(202, notebook_out(request, notebook_or_404(request, notebook_id)))


@router.post("/notebooks/{notebook_id}/stop",
             response={202: NotebookOut, **problems(404, 409, 422)})
def stop_notebook(request: HttpRequest, notebook_id: Id) -> Status:
    """Stop its server and keep its files and its share of the instance; start it again
    later."""
    act_row(request, notebook_or_404(request, notebook_id), services.stop_notebook, "stop")
    return Status(202, notebook_out(request, notebook_or_404(request, notebook_id)))


@router.post("/notebooks/{notebook_id}/start",
             response={202: NotebookOut, **problems(404, 409, 422)})
def start_notebook(request: HttpRequest, notebook_id: Id) -> Status:
    """Start a stopped notebook again, with its files, on its running instance (422 when
    the instance is not running)."""
    act_row(request, notebook_or_404(request, notebook_id), services.start_notebook, "start")
    return Status(202, notebook_out(request, notebook_or_404(request, notebook_id)))


@router.post("/notebooks/{notebook_id}/token",
             response={200: NotebookTokenOut, **problems(404, 409, 422)})
def reveal_notebook_token(request: HttpRequest, notebook_id: Id) -> dict:
    """The notebook's token and a URL that signs you in. Asked for explicitly, and written to
    the audit log (notebook.token_revealed), since it is a credential."""
    notebook = notebook_or_404(request, notebook_id)
    if notebook.is_gone:
        raise ApiError(409, f"{notebook.name} is {notebook.status_label.lower()}.")
    token = services.reveal_notebook_token(notebook=notebook, by=request.user,
                                           ip_address=client_ip(request))
    url = public_url(request, notebook)
    return {"token": token, "open_url": f"{url}?token={token}" if url else ""}
