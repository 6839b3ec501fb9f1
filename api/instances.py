"""Sizes, quota, instances, their timeline, kubeconfigs and collaborators: the instance
pages' verbs (instances.services, access.services), answered as JSON."""

from typing import Annotated, Literal

from django.conf import settings
from django.http import HttpRequest
from ninja import Path, Query, Router, Status

from access import services as access_services
from api import services as api_services
from instances import collaborators, selectors, services
from instances.forms import LaunchForm
from instances.models import Collaborator, Instance
from workspaces.models import AuditEvent
from workspaces.services import client_ip

from .common import (
    MAX_ID,
    absolute,
    act_row,
    choice,
    delete_row,
    instance_or_404,
    own_workspace,
    page_of,
    problems,
    retry_row,
    valid,
)
from .problems import ApiError
from .schemas import (
    CollaboratorOut,
    EventOut,
    InstanceOut,
    InstancePage,
    InstanceStatus,
    InviteIn,
    InviteOut,
    KubeconfigIn,
    KubeconfigOut,
    LaunchIn,
    MeOut,
    ProfileOut,
    QuotaOut,
)

router = Router(tags=["instances"])
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Status_ = Instance.Status


# What instance_out reads, and nothing more: a page of rows builds five objects each.
LISTED_FIELDS = (
    "name", "description", "status", "status_message", "kind", "gpus", "gpu_model", "cpu",
    "memory_gib", "storage_gib", "created_at", "status_changed_at", "running_since",
    "deleted_at", "profile__name", "profile__display_name", "cluster__backend",
    "workspace__owner__username")


def instance_out(request: HttpRequest, i: Instance) -> dict:
    owner, given = i.workspace.owner, selectors.allotment(i)
    return {
        "id": i.pk, "name": i.name, "description": i.description, "status": i.status,
        "status_label": i.status_label, "status_message": i.status_message,
        "final": i.is_final, "profile": i.profile.name, "size": i.profile.display_name,
        "kind": i.kind, "gpus": i.gpus, "gpu_model": i.gpu_model, "cpu": float(given.cpu),
        "memory_gib": given.memory_gib, "shared_limits": given.shared,
        "storage_gib": i.storage_gib,
        "owner": owner.get_username(), "shared": owner.pk != request.user.pk,
        "created_at": i.created_at, "status_changed_at": i.status_changed_at,
        "running_since": i.running_since, "deleted_at": i.deleted_at,
        "page": absolute(request, "instances:detail", i.pk),
    }


# --- who I am, what I may launch ----------------------------------------------------------


@router.get("/me", response={200: MeOut, **problems()}, tags=["account"])
def get_me(request: HttpRequest) -> dict:
    """Who the token (or session) acts as; `gpupaas login` checks a token with it."""
    token = request.api_token
    return {
        "username": request.user.get_username(), "email": request.user.email or "",
        "role": request.portal_role,
        "token": token and {"name": token.name, "prefix": token.prefix, "scope": token.scope,
                            "expires_at": token.expires_at},
    }


@router.delete("/me/token", response={204: None, **problems(400)}, tags=["account"])
def revoke_my_token(request: HttpRequest) -> Status:
    """Revoke the token this request came with (`gpupaas logout`); a read-only token may
    revoke itself too."""
    token = request.api_token
    if token is None:
        raise ApiError(400, "This request came with no token (a browser session): revoke "
                            "tokens on the API tokens page.")
    api_services.revoke_api_token(token=token, by=request.user, reason="logged out",
                                  ip_address=client_ip(request))
    return Status(204, None)


@router.get("/profiles", response={200: list[ProfileOut], **problems()})
def list_profiles(request: HttpRequest) -> list[dict]:
    """The sizes you may launch, in the catalogue's order, and whether each fits your quota
    now (the launch wizard's cards)."""
    workspace = own_workspace(request)
    usage = selectors.quota_usage(workspace=workspace)
    return [{
        "name": c.profile.name, "display_name": c.profile.display_name,
        "description": c.profile.description, "kind": c.profile.kind, "gpus": c.profile.gpus,
        "gpu_model": c.profile.gpu_model, "cpu": float(c.cpu), "memory_gib": c.memory_gib,
        "shared_limits": c.local,
        "storage_gib": c.profile.storage_gib, "fits": not c.refusal, "refusal": c.refusal,
        "cost": c.cost,
    } for c in selectors.size_cards(selectors.launchable_profiles(user=request.user), usage)]


@router.get("/quota", response={200: QuotaOut, **problems()})
def get_quota(request: HttpRequest) -> dict:
    """Your workspace's quota and what holds it now (failed and deleted instances hold none)."""
    usage = selectors.quota_usage(workspace=own_workspace(request))
    return {"max_gpus": usage.max_gpus, "max_instances": usage.max_instances,
            "gpus_used": usage.gpus_used, "instances_used": usage.instances_used,
            "gpus_left": usage.gpus_left, "instances_left": usage.instances_left}


# --- instances ---------------------------------------------------------------------------


@router.get("/instances", response={200: InstancePage, **problems(422)})
def list_instances(
    request: HttpRequest,
    status: InstanceStatus | None = Query(None, description="Only this status; without it, "
                                          "every status but deleted (as the lists show)."),
    name: str | None = Query(None, max_length=40, pattern=r"^[-a-z0-9]+$",
                             description="Only instances with exactly this name."),
    scope: Literal["all", "own", "shared"] = Query("all", description="Yours, shared with "
                                                   "you, or both."),
    page: int = Query(1, ge=1, le=1_000_000),
    page_size: int = Query(settings.INSTANCES_PER_PAGE, ge=1, le=100),
) -> dict:
    """Instances you own or collaborate on, newest first, a page at a time."""
    instances = (selectors.listable_instances(user=request.user, scope=scope)
                 .select_related("profile", "cluster", "workspace__owner")
                 .only(*LISTED_FIELDS).order_by("-created_at", "-id"))
    instances = (instances.filter(status=status) if status
                 else instances.exclude(status=Status_.DELETED))
    if name:
        instances = instances.filter(name=name)
    items, paging = page_of(instances, page, page_size)
    return {**paging, "items": [instance_out(request, i) for i in items]}


@router.post("/instances", response={201: InstanceOut, **problems(400, 422)})
def launch_instance(request: HttpRequest, payload: LaunchIn) -> Status:
    """Launch an instance of a size (profile). The same checks as the launch wizard: name
    rules, sizes open to you, and your quota, counted under the workspace lock."""
    workspace = own_workspace(request)
    form = LaunchForm({"name": payload.name, "description": payload.description,
                       "profile": choice(payload.profile)},
                      profiles=selectors.launchable_profiles(user=request.user))
    form.fields["profile"].to_field_name = "name"
    data = valid(form)
    instance = services.launch_instance(
        workspace=workspace, name=data["name"], description=data["description"],
        profile=data["profile"], by=request.user, ip_address=client_ip(request))
    return Status(201, instance_out(request, instance_or_404(request, instance.pk)))


@router.get("/instances/{instance_id}", response={200: InstanceOut, **problems(404, 422)})
def get_instance(request: HttpRequest, instance_id: Id) -> dict:
    return instance_out(request, instance_or_404(request, instance_id))


@router.delete("/instances/{instance_id}", response={202: InstanceOut, **problems(404, 409, 422)})
def delete_instance(request: HttpRequest, instance_id: Id) -> Status:
    """Delete the instance: it turns `deleting` at once, and `deleted` once a worker has
    released its resources (its GPUs then go back to the quota)."""
    delete_row(request, instance_or_404(request, instance_id), services.delete_instance)
    return Status(202, instance_out(request, instance_or_404(request, instance_id)))


@router.post("/instances/{instance_id}/retry",
             response={202: InstanceOut, **problems(404, 409, 422)})
def retry_instance(request: HttpRequest, instance_id: Id) -> Status:
    """Send a failed instance back to provisioning under its name, if it fits the quota."""
    retry_row(request, instance_or_404(request, instance_id), services.retry_instance)
    return Status(202, instance_out(request, instance_or_404(request, instance_id)))


@router.post("/instances/{instance_id}/stop",
             response={202: InstanceOut, **problems(404, 409, 422)})
def stop_instance(request: HttpRequest, instance_id: Id) -> Status:
    """Give a running instance's GPUs back and keep its data; its notebooks and services
    stop with it and start again with it. Virtual and dedicated clusters cannot be stopped
    (422)."""
    act_row(request, instance_or_404(request, instance_id), services.stop_instance, "stop")
    return Status(202, instance_out(request, instance_or_404(request, instance_id)))


@router.post("/instances/{instance_id}/start",
             response={202: InstanceOut, **problems(404, 409, 422)})
def start_instance(request: HttpRequest, instance_id: Id) -> Status:
    """Bring a stopped instance back, if its GPUs fit your quota again (422 says why not)."""
    act_row(request, instance_or_404(request, instance_id), services.start_instance, "start")
    return Status(202, instance_out(request, instance_or_404(request, instance_id)))


@router.get("/instances/{instance_id}/events",
            response={200: list[EventOut], **problems(404, 422)})
def list_instance_events(
    request: HttpRequest, instance_id: Id, limit: int = Query(100, ge=1, le=500),
) -> list[dict]:
    """The instance's timeline, oldest first: the audit log's rows for it (launch, every
    status change with its message, deletion)."""
    instance = instance_or_404(request, instance_id)
    events = list(
        AuditEvent.objects.filter(object_type=Instance._meta.label_lower,
                                  object_id=str(instance.pk))
        .select_related("actor").order_by("-created_at", "-id")[:limit])
    return [{
        "id": e.pk, "at": e.created_at, "action": e.action,
        "actor": e.actor.get_username() if e.actor else None,
        "message": str(e.data.get("message", "")) if isinstance(e.data, dict) else "",
    } for e in reversed(events)]


# --- remote access -------------------------------------------------------------------------


@router.post("/instances/{instance_id}/kubeconfig",
             response={201: KubeconfigOut, **problems(400, 404, 409, 422)})
def create_kubeconfig(request: HttpRequest, instance_id: Id, payload: KubeconfigIn) -> Status:
    """A kubeconfig for the instance, reaching it through the portal's Kubernetes proxy with a
    new token of yours (the instance page's Download kubeconfig)."""
    instance = instance_or_404(request, instance_id)
    if not instance.has_kubernetes_api:
        raise ApiError(409, "This instance has no Kubernetes API.")
    hours = settings.ACCESS_TOKEN_TTL_HOURS if payload.hours is None else payload.hours
    token, plain = access_services.issue_access_token(
        user=request.user, instance=instance, hours=hours,
        client=f"{client_ip(request) or '?'} {request.headers.get('User-Agent', '')}".strip(),
        ip_address=client_ip(request))
    return Status(201, {
        "kubeconfig": access_services.kubeconfig(
            instance=instance, username=request.user.get_username(), token=plain,
            server=request.build_absolute_uri(f"/k8s/{instance.pk}/")),
        "context": f"{settings.PORTAL_ID}-{instance.name}", "token_prefix": token.prefix,
        "expires_at": token.expires_at,
    })


# --- collaborators -------------------------------------------------------------------------


def collaborator_out(c: Collaborator) -> dict:
    return {
        "id": c.pk, "email": c.email, "status": c.status, "status_label": c.get_status_display(),
        "access": c.access,
        "user": c.user.get_username() if c.user else None,
        "guest": bool(c.user and hasattr(c.user, "guest_account")),
        "invited_by": c.invited_by.get_username() if c.invited_by else None,
        "created_at": c.created_at, "expires_at": c.expires_at, "accepted_at": c.accepted_at,
    }


def collaborator_or_404(instance: Instance, collaborator_id: int) -> Collaborator:
    collaborator = (Collaborator.objects.select_related("instance__workspace", "user")
                    .filter(pk=collaborator_id, instance=instance,
                            status__in=Collaborator.LIVE_STATES).first())
    if collaborator is None:
        raise ApiError(404, "No such collaborator.")
    return collaborator


@router.get("/instances/{instance_id}/collaborators",
            response={200: list[CollaboratorOut], **problems(404, 422)})
def list_collaborators(request: HttpRequest, instance_id: Id) -> list[dict]:
    """Pending invitations and collaborators, oldest first."""
    instance = instance_or_404(request, instance_id)
    return [collaborator_out(c) for c in selectors.collaborators_of(instance=instance)]


def _invitations(invitations: collaborators.Invitations) -> dict:
    return {"sent": [collaborator_out(c) for c in invitations.sent],
            "unsent": [collaborator_out(c) for c in invitations.unsent]}


@router.post("/instances/{instance_id}/collaborators",
             response={201: InviteOut, **problems(400, 404, 422)})
def invite_collaborators(request: HttpRequest, instance_id: Id, payload: InviteIn) -> Status:
    """Invite addresses to share the instance; each gets a mail with an accept link. All or
    nothing: one bad address refuses the lot, naming every reason."""
    instance = instance_or_404(request, instance_id)
    invitations = collaborators.invite_collaborator(
        instance=instance, emails=payload.emails, by=request.user,
        base_url=selectors.base_url(request), ip_address=client_ip(request),
        access=payload.access)
    return Status(201, _invitations(invitations))


@router.post("/instances/{instance_id}/collaborators/{collaborator_id}/resend",
             response={200: InviteOut, **problems(404, 422)})
def resend_invitation(request: HttpRequest, instance_id: Id, collaborator_id: Id) -> dict:
    """A new link and expiry for a pending invitation; the old link stops working."""
    collaborator = collaborator_or_404(instance_or_404(request, instance_id), collaborator_id)
    return _invitations(collaborators.resend_invitation(
        collaborator=collaborator, by=request.user, base_url=selectors.base_url(request),
        ip_address=client_ip(request)))


@router.delete("/instances/{instance_id}/collaborators/{collaborator_id}",
               response={204: None, **problems(404, 422)})
def remove_collaborator(request: HttpRequest, instance_id: Id, collaborator_id: Id) -> Status:
    """Withdraw a pending invitation, or remove a collaborator: their access ends on every
    path at once, and the instance's notebooks restart with new tokens."""
    collaborator = collaborator_or_404(instance_or_404(request, instance_id), collaborator_id)
    ip = client_ip(request)
    if collaborator.status == Collaborator.Status.PENDING:
        collaborators.revoke_invitation(collaborator=collaborator, by=request.user, ip_address=ip)
    else:
        collaborators.remove_collaborator(collaborator=collaborator, by=request.user, ip_address=ip)
    return Status(204, None)
