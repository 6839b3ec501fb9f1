"""Catalogue services: the service pages' verbs (notebooks.services), answered as JSON.
Opening one is a browser's business (its own origin, signed in by the portal): the API
gives the link that does it."""

from typing import Annotated

from django.http import HttpRequest
from ninja import Path, Query, Router, Status

from access import origins
from instances.selectors import instance_for_user
from notebooks import selectors, services
from notebooks.forms import DeployForm
from notebooks.models import Service, ServiceKey, ServiceProfile
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
from .problems import NotFound
from .schemas import (
    NewServiceKeyOut,
    NotebookStatus,
    ServiceIn,
    ServiceKeyIn,
    ServiceKeyOut,
    ServiceOut,
    ServicePage,
    ServiceProfileOut,
)

router = Router(tags=["services"])
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


def service_out(request: HttpRequest, s: Service) -> dict:
    return {
        "id": s.pk, "name": s.name, "description": s.description,
        "instance_id": s.instance_id, "instance": s.instance.name,
        "service": s.profile.name, "service_name": s.profile.display_name,
        "status": s.status, "status_label": s.status_label, "step": s.step,
        "status_message": s.status_message, "final": s.is_final, "cpu": float(s.cpu),
        "memory_gib": s.memory_gib, "gpus": s.gpus, "created_at": s.created_at,
        "running_since": s.running_since, "page": absolute(request, "services:detail", s.pk),
        "open": absolute(request, "services:open", s.pk), "exposure": s.profile.exposure,
        "model": s.model, "api_base": api_base(request, s),
    }


def api_base(request: HttpRequest, s: Service) -> str:
    if s.profile.exposure != ServiceProfile.Exposure.API:
        return ""
    return f"{origins.origin_for(s, request)}/v1"


def key_out(key: ServiceKey) -> dict:
    return {"id": key.pk, "prefix": key.prefix, "name": key.name, "state": key.state,
            "created_at": key.created_at, "expires_at": key.expires_at,
            "last_used_at": key.last_used_at}


def service_or_404(request: HttpRequest, pk: int) -> Service:
    """A service on an instance the caller owns or collaborates on, else 404."""
    service = (Service.objects.select_related("profile", "instance__workspace")
               .filter(pk=pk).first())
    if service is None or instance_for_user(user=request.user, pk=service.instance_id) is None:
        raise NotFound("No such service.")
    return service


@router.get("/service-profiles", response={200: list[ServiceProfileOut], **problems()})
def list_service_profiles(request: HttpRequest) -> list[dict]:
    """The catalogue: the services you may deploy onto your instances."""
    return [{"name": p.name, "display_name": p.display_name, "description": p.description,
             "cpu": float(p.default_cpu), "memory_gib": p.default_memory_gib,
             "gpus": p.default_gpus, "max_gpus": p.max_gpus, "exposure": p.exposure,
             "models": p.model_choices}
            for p in selectors.service_profiles_for(user=request.user)]


@router.get("/services", response={200: ServicePage, **problems(404, 422)})
def list_services(
    request: HttpRequest,
    instance: int | None = Query(None, ge=1, le=MAX_ID, description="Only this instance's."),
    status: NotebookStatus | None = Query(None),
    page: int = Query(1, ge=1, le=1_000_000),
    page_size: int = Query(20, ge=1, le=100),
) -> dict:
    """Live services on the instances you own or collaborate on, newest first."""
    rows = selectors.live_services(user=request.user).order_by("-created_at", "-id")
    if instance is not None:
        rows = rows.filter(instance=instance_or_404(request, instance))
    if status:
        rows = rows.filter(status=status)
    items, paging = page_of(rows, page, page_size)
    return {**paging, "items": [service_out(request, s) for s in items]}


@router.post("/instances/{instance_id}/services",
             response={201: ServiceOut, **problems(400, 404, 422)})
def deploy_service(request: HttpRequest, instance_id: Id, payload: ServiceIn) -> Status:
    """Deploy a catalogue service onto a running instance, with the Deploy page's checks."""
    instance = instance_or_404(request, instance_id)
    form = DeployForm(
        deploy_data(payload, instance),
        profiles=selectors.service_profiles_for(user=request.user),
        instances=selectors.usable_instances(user=request.user), what="service")
    form.fields["profile"].to_field_name = "name"
    data = valid(form)
    service = services.deploy_service(
        instance=data["instance"], name=data["name"], profile=data["profile"],
        description=data["description"], cpu=data["cpu"], memory_gib=data["memory_gib"],
        gpus=data["gpus"], model=payload.model, by=request.user,
        ip_address=client_ip(request))
    return Status(201, service_out(request, service_or_404(request, service.pk)))


@router.get("/services/{service_id}", response={200: ServiceOut, **problems(404, 422)})
def get_service(request: HttpRequest, service_id: Id) -> dict:
    return service_out(request, service_or_404(request, service_id))


@router.delete("/services/{service_id}", response={202: ServiceOut, **problems(404, 409, 422)})
def delete_service(request: HttpRequest, service_id: Id) -> Status:
    delete_row(request, service_or_404(request, service_id), services.delete_service)
    return Status(202, service_out(request, service_or_404(request, service_id)))


@router.post("/services/{service_id}/retry",
             response={202: ServiceOut, **problems(404, 409, 422)})
def retry_service(request: HttpRequest, service_id: Id) -> Status:
    """Start a failed service again on its running instance."""
    retry_row(request, service_or_404(request, service_id), services.retry_service)
    return Status(202, service_out(request, service_or_404(request, service_id)))


@router.post("/services/{service_id}/stop",
             response={202: ServiceOut, **problems(404, 409, 422)})
def stop_service(request: HttpRequest, service_id: Id) -> Status:
    """Stop it and keep its data and its share of the instance; start it again later."""
    act_row(request, service_or_404(request, service_id), services.stop_service, "stop")
    return Status(202, service_out(request, service_or_404(request, service_id)))


@router.post("/services/{service_id}/start",
             response={202: ServiceOut, **problems(404, 409, 422)})
def start_service(request: HttpRequest, service_id: Id) -> Status:
    """Start a stopped service again on its running instance."""
    act_row(request, service_or_404(request, service_id), services.start_service, "start")
    return Status(202, service_out(request, service_or_404(request, service_id)))


@router.get("/services/{service_id}/keys",
            response={200: list[ServiceKeyOut], **problems(404, 422)})
def list_service_keys(request: HttpRequest, service_id: Id) -> list[dict]:
    """Your keys to an API service (never anyone else's), newest first."""
    service = service_or_404(request, service_id)
    return [key_out(k) for k in ServiceKey.objects.filter(service=service,
                                                          user=request.user)[:100]]


@router.post("/services/{service_id}/keys",
             response={201: NewServiceKeyOut, **problems(400, 404, 422)})
def create_service_key(request: HttpRequest, service_id: Id, payload: ServiceKeyIn) -> Status:
    """A new key of yours to an API service, shown this once."""
    service = service_or_404(request, service_id)
    row, plain = services.issue_service_key(service=service, by=request.user,
                                            name=payload.name, ip_address=client_ip(request))
    return Status(201, {**key_out(row), "key": plain, "api_base": api_base(request, service)})


@router.delete("/services/{service_id}/keys/{key_id}",
               response={200: ServiceKeyOut, **problems(404, 422)})
def revoke_service_key(request: HttpRequest, service_id: Id, key_id: Id) -> dict:
    """Revoke one of your keys: refused from the next request on (within a second)."""
    service = service_or_404(request, service_id)
    key = ServiceKey.objects.filter(pk=key_id, service=service, user=request.user).first()
    if key is None:
        raise NotFound("No such key.")
    services.revoke_service_key(key=key, by=request.user, ip_address=client_ip(request))
    key.refresh_from_db()
    return key_out(key)
