"""The verbs of remote access: issuing and revoking tokens, deciding every proxied request,
and the audit trail of what went through. The only writers of AccessToken and ProxyRequest."""

import base64
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import DatabaseError, close_old_connections, transaction
from django.utils import timezone

from clusters.backends import BackendError, Terminal, get_backend
from clusters.backends.kubernetes.names import instance_object_name
from clusters.backends.kubernetes.upstream import (
    Upstream,
    cluster_upstream,
    upstream_from_kubeconfig,
)
from clusters.crypto import decrypt
from instances.models import ComputeProfile, Instance
from instances.selectors import instance_for_user
from instances.services import instance_spec
from workspaces.models import AuditAction
from workspaces.selectors import role_of
from workspaces.services import audit_write_failed, ip_address_or_none, record_audit
from workspaces.tokens import check_token, hash_token, new_token, touch_due

from .models import SHELL_CLIENT, AccessToken, ProxyRequest
from .models import ShellPod as ShellPodRow
from .shellpod import CA_DIR, IN_CLUSTER, ShellPod, ShellPodError, manifest, pod_name

log = logging.getLogger(__name__)

TOKEN_PREFIX = "gpk_"  # recognisable in logs and by secret scanners
GONE = (Instance.Status.DELETING, Instance.Status.DELETED)
NAMESPACE = ComputeProfile.Kind.NAMESPACE
DEDICATED = ComputeProfile.Kind.DEDICATED


def issue_access_token(
    *,
    user: AbstractBaseUser,
    instance: Instance,
    hours: float | None = None,
    client: str = "",
    ip_address: str | None = None,
) -> tuple[AccessToken, str]:
    """A new token for `user` on `instance`; returns the row and the plain token, which is
    never stored and cannot be shown again. The caller has checked access."""
    hours = settings.ACCESS_TOKEN_TTL_HOURS if hours is None else hours
    if not 0 < hours <= settings.ACCESS_TOKEN_MAX_TTL_HOURS:
        raise ValidationError(
            {"hours": f"Choose between 1 minute and {settings.ACCESS_TOKEN_MAX_TTL_HOURS:g} "
                      "hours."}
        )
    if instance.status != Instance.Status.RUNNING:
        raise ValidationError(f"{instance.name} is {instance.status_label.lower()}, not running.")
    plain, digest, shown = new_token(TOKEN_PREFIX)
    with transaction.atomic():
        token = AccessToken.objects.create(
            user=user, instance=instance, token_hash=digest, prefix=shown,
            expires_at=timezone.now() + timedelta(hours=hours), created_from=client[:300],
        )
        record_audit(
            action=AuditAction.ACCESS_TOKEN_ISSUED, obj=instance, actor=user,
            workspace=instance.workspace, ip_address=ip_address, token=token.prefix,
            expires_at=token.expires_at.isoformat(),
        )
    return token, plain


def revoke_access_token(
    *, token: AccessToken, by: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    with transaction.atomic():
        revoked = AccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_reason=f"revoked by {by.get_username()}"
        )
        if revoked:
            record_audit(
                action=AuditAction.ACCESS_TOKEN_REVOKED, obj=token.instance, actor=by,
                workspace=token.instance.workspace, ip_address=ip_address, token=token.prefix,
            )
            tell_shells_on_commit(token.instance_id)
    return bool(revoked)


def revoke_access_tokens(
    *,
    instance: Instance,
    user: AbstractBaseUser | None = None,
    reason: str,
    by: AbstractBaseUser | None = None,
    ip_address: str | None = None,
) -> int:
    """Revoke every live token on `instance` (only `user`'s when given); returns how many.

    What removing a collaborator, a deletion or a lost role calls; the proxy refuses the
    tokens from the next request on."""
    with transaction.atomic():
        live = AccessToken.objects.filter(instance=instance, revoked_at__isnull=True)
        if user is not None:
            live = live.filter(user=user)
        count = live.update(revoked_at=timezone.now(), revoked_reason=reason[:200])
        if count:
            record_audit(
                action=AuditAction.ACCESS_TOKEN_REVOKED, obj=instance, actor=by,
                workspace=instance.workspace, ip_address=ip_address, count=count,
                reason=reason, user=user.get_username() if user is not None else None,
            )
            tell_shells_on_commit(instance.pk)
    return count


def lost_access(*, user: AbstractBaseUser, instance_id: int) -> tuple[Instance | None, str]:
    """The instance if `user` may reach its Kubernetes API now, else why not (a reason for
    revoking their tokens on it)."""
    if not user.is_active:
        return None, "user deactivated"
    instance = instance_for_user(user=user, pk=instance_id)
    if instance is None:
        return None, "access to the instance removed"
    # A role is what lets someone have instances of their own; a collaborator (a guest, too)
    # reaches a shared instance without one.
    if instance.workspace.owner_id == user.pk and not role_of(user):
        return None, "role removed"
    if instance.status in GONE:
        return None, "instance deleted"
    return instance, ""


def shell_group(instance_id: int) -> str:
    """The channel-layer group of the browser shells open on one instance."""
    return f"shells.instance.{int(instance_id)}"


def tell_shells_on_commit(instance_id: int) -> None:
    """Once committed, open shells on the instance decide their access again at once (they
    also do every ACCESS_RECHECK_S, so a lost message costs at most that)."""

    def tell() -> None:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(shell_group(instance_id),
                                            {"type": "access.changed"})
        except Exception as exc:  # the layer down must not undo a revocation
            log.warning("could not tell the shells of instance %s: %r", instance_id, exc)

    transaction.on_commit(tell)


def revoke_lost_access() -> int:
    """Periodic sweep: revoke live tokens whose user lost access (deactivated, role removed,
    no longer allowed on the instance, instance deleted). The proxy already refuses them on
    every request; this makes the token list say so, without a request to trigger it."""
    pairs = set(
        AccessToken.objects.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())
        .values_list("user_id", "instance_id")
    )
    users = get_user_model().objects.in_bulk({u for u, _ in pairs})
    instances = Instance.objects.select_related("workspace").in_bulk({i for _, i in pairs})
    revoked = 0
    for user_id, instance_id in sorted(pairs):
        _, reason = lost_access(user=users[user_id], instance_id=instance_id)
        if reason:
            revoked += revoke_access_tokens(
                instance=instances[instance_id], user=users[user_id], reason=reason
            )
    return revoked


def purge_proxy_requests() -> int:
    """Drop audit rows of proxied requests older than the retention."""
    cutoff = timezone.now() - timedelta(days=settings.ACCESS_AUDIT_RETENTION_DAYS)
    deleted, _ = ProxyRequest.objects.filter(created_at__lt=cutoff).delete()
    return deleted


# --- the proxy's side: called on every request -------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What the proxy may do with one request: whose it is, where it goes, as whom."""

    token_id: int
    user_id: int
    instance_id: int
    upstream_key: str  # the connection pool: one per cluster or inner cluster
    upstream: Upstream  # with the credential this request is forwarded with
    access_token: bool = False  # that credential is a namespace instance's access token


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # Kubernetes Status reason: Unauthorized, ServiceUnavailable...
    message: str


_upstreams: dict[str, tuple[float, Upstream]] = {}
UPSTREAM_TTL_S = 300.0  # rebuilt now and then: exec plugins and in-cluster tokens rotate
# Namespace instances' access tokens (TokenRequest, ten minutes), by instance and the version of
# its cluster's settings: (token, when it ends by this process's clock). Reused while at least
# ACCESS_TOKEN_MARGIN_S of their life is left; renewed on a refusal at most every RENEW_EVERY_S.
_access_tokens: dict[tuple[int, float], tuple[str, float]] = {}
_renewed: dict[int, float] = {}
ACCESS_TOKEN_MARGIN_S = 300.0
RENEW_EVERY_S = 30.0


def _upstream(instance: Instance) -> tuple[str, Upstream]:
    """The portal's credentials for this instance's API; built once per process and while
    the credential is unchanged, since building one writes temporary certificate files. A
    dedicated cluster's kubeconfig is read again from Cluster API's secret every
    DEDICATED_CREDENTIALS_TTL_S (it is rotated there, and the portal keeps no copy); a
    virtual or dedicated cluster is only ever reached over verified TLS."""
    ttl = UPSTREAM_TTL_S
    if instance.kind == NAMESPACE:
        # The host cluster's address and trust, without the portal's own credential: the
        # request goes with the instance's access token (_access_header).
        cluster = instance.cluster
        key = f"cluster:{cluster.pk}:{cluster.updated_at.timestamp()}:access"
        build = lambda: cluster_upstream(cluster, own_credentials=False)  # noqa: E731
    elif instance.kind == DEDICATED:
        key, ttl = f"instance:{instance.pk}:workload", settings.DEDICATED_CREDENTIALS_TTL_S
        build = lambda: upstream_from_kubeconfig(  # noqa: E731
            get_backend(instance.cluster).workload_kubeconfig(instance_spec(instance)),
            what=f"instance {instance.name}", from_cluster=True,
        )
    else:
        key = f"instance:{instance.pk}:{hash_token(instance.kubeconfig_encrypted)[:16]}"
        build = lambda: upstream_from_kubeconfig(  # noqa: E731
            decrypt(instance.kubeconfig_encrypted), what=f"instance {instance.name}",
            from_cluster=True,
        )
    cached = _upstreams.get(key)
    if cached is None or time.monotonic() - cached[0] > ttl:
        cached = (time.monotonic(), build())
        _upstreams[key] = cached
    return key, cached[1]


def _access_header(instance: Instance) -> dict[str, str]:
    """A namespace instance's users act on the cluster as its access ServiceAccount, which
    holds `admin` in the instance's namespace and nothing else: the API server scopes every
    request, and the portal impersonates no one. Its short-lived token is minted by
    TokenRequest and reused for a few minutes; it never leaves the portal."""
    key = (instance.pk, instance.cluster.updated_at.timestamp())
    token, expires = _access_tokens.get(key, ("", 0.0))
    if expires - time.monotonic() < ACCESS_TOKEN_MARGIN_S:
        token, lives = get_backend(instance.cluster).access_token(instance_spec(instance))
        expires = time.monotonic() + lives
        _access_tokens[key] = (token, expires)
    return {"Authorization": f"Bearer {token}"}


def instance_upstream(instance: Instance) -> tuple[str, Upstream]:
    """The instance's API with the credential its users act with there (raises
    BackendError): the proxy's, and the browser shell pod's."""
    key, upstream = _upstream(instance)
    if instance.kind == NAMESPACE:
        upstream = replace(upstream, headers=_access_header(instance))
    return key, upstream


def renew_access_token(instance_id: int) -> dict[str, str] | None:
    """The API server refused the cached token (the account was made again since, which
    voids its tokens): a new one, for the request to go again once. None when one was asked
    for less than RENEW_EVERY_S ago: a client cannot make the portal mint a token per
    request."""
    now = time.monotonic()
    if now - _renewed.get(instance_id, -RENEW_EVERY_S) < RENEW_EVERY_S:
        return None
    _renewed[instance_id] = now
    close_old_connections()  # on the proxy's worker thread, outside a request cycle
    for key in [k for k in _access_tokens if k[0] == instance_id]:
        del _access_tokens[key]
    instance = Instance.objects.select_related("cluster", "workspace__owner").get(
        pk=instance_id)
    return _access_header(instance)


def _refuse(message: str) -> Refusal:
    return Refusal(401, "Unauthorized", message)


def authorize_proxy_request(
    *, token: str, instance_id: int, client: str = "", touch: bool = True
) -> Grant | Refusal:
    """Decide one request to `/k8s/<instance_id>/`: the token must be live and bound to this
    instance, and its user still allowed on the running instance (asked of
    `instance_for_user`, the one access decision). Nothing is cached, so a revoked or expired
    token, or a lost role, is refused from the next request on."""
    close_old_connections()  # this runs on the proxy's worker thread, outside a request cycle
    row, refusal = check_token(AccessToken, token)
    if row is None or row.instance_id != instance_id:
        return _refuse("The token is not valid for this instance.")
    if refusal:
        return _refuse(refusal)
    instance, reason = lost_access(user=row.user, instance_id=instance_id)
    if instance is None:
        gone = Instance.objects.filter(pk=instance_id).select_related("workspace").first()
        if gone is not None:
            revoke_access_tokens(instance=gone, user=row.user, reason=reason)
        return _refuse(f"The token was revoked ({reason}).")
    if instance.status != Instance.Status.RUNNING:
        return Refusal(503, "ServiceUnavailable",
                       f"{instance.name} is {instance.status_label.lower()}, not running.")
    if not instance.has_kubernetes_api:
        return Refusal(404, "NotFound", f"{instance.name} has no Kubernetes API.")
    if touch and (touch_due(row, 5) or row.client != client[:300]):
        # At most one write every few seconds per token, not one per request.
        AccessToken.objects.filter(pk=row.pk).update(last_used_at=timezone.now(),
                                                     client=client[:300])
    try:
        key, upstream = instance_upstream(instance)
    except BackendError as exc:
        return Refusal(503, "ServiceUnavailable", exc.message)
    return Grant(
        token_id=row.pk, user_id=row.user_id, instance_id=instance.pk, upstream_key=key,
        upstream=upstream, access_token=instance.kind == NAMESPACE,
    )


def record_proxy_request(
    *, grant: Grant, method: str, verb: str, path: str, status: int, duration_ms: int,
    client_ip: str | None, user_agent: str,
) -> None:
    """The proxy's audit row of one request; as every audit row, never failing the request
    and never lost in silence (workspaces.services.record_audit)."""
    fields = {
        "user_id": grant.user_id, "instance_id": grant.instance_id, "token_id": grant.token_id,
        "method": method[:10], "verb": verb[:20], "path": path[:500], "status": status,
        "duration_ms": duration_ms, "client_ip": ip_address_or_none(client_ip),
        "user_agent": user_agent[:200],
    }
    try:
        ProxyRequest.objects.create(**fields)
    except (DatabaseError, TypeError, ValueError) as exc:
        audit_write_failed("proxy", fields, exc)


# --- browser shells --------------------------------------------------------------------------


class ShellRefused(Exception):
    """No shell on this instance for this user; `hidden`: answer as for an instance that does
    not exist (someone else's), else say `message`."""

    def __init__(self, message: str, *, hidden: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.hidden = hidden


@dataclass(frozen=True)
class ShellGrant:
    """A browser shell one user may open on one instance, decided when it opens."""

    user_id: int
    username: str
    instance_id: int
    instance_name: str
    kind: str  # "pod" (a Kubernetes instance) or "sandbox" (a local one)
    namespace: str  # where the shell's pod runs (pod shells)
    token_id: int | None  # the session token (pod shells)
    token: str  # its plain value, for the pod's kubeconfig only
    expires_at: datetime


def shell_offer(*, instance: Instance) -> tuple[str, str]:
    """(kind, why not): what "Open shell" gives on this instance, or why it cannot now."""
    if instance.status != Instance.Status.RUNNING:
        return "", f"A shell opens once {instance.name} is running."
    if instance.has_kubernetes_api:
        return "pod", ""
    from clusters.backends.local.tenants import isolated

    try:
        separate = isolated()
    except BackendError as exc:
        return "sandbox", exc.message
    if not separate:
        return "sandbox", (
            "Shells on local sandboxes need the portal to run as root, so that each "
            "workspace has its own OS user; this portal runs in single-user mode, where a "
            "shell would run as the portal itself. Use a JupyterLab terminal in a notebook.")
    return "sandbox", ""


def open_shell(*, user: AbstractBaseUser, instance_id: int, client: str = "",
               ip_address: str | None = None) -> ShellGrant:
    """Decide a new browser shell: the user may reach the running instance now (the same
    decision as the proxy's). A pod shell gets a session token of the kind a downloaded
    kubeconfig holds, valid for at most SHELL_MAX_SESSION_S and revoked when the shell
    closes: the same identity, scope and audit trail."""
    instance, _ = lost_access(user=user, instance_id=instance_id)
    if instance is None:
        raise ShellRefused("No such instance.", hidden=True)
    kind, problem = shell_offer(instance=instance)
    if problem:
        raise ShellRefused(problem)
    seconds = min(settings.SHELL_MAX_SESSION_S, settings.ACCESS_TOKEN_MAX_TTL_HOURS * 3600)
    token, plain, namespace = None, "", ""
    if kind == "pod":
        token, plain = issue_access_token(
            user=user, instance=instance, hours=seconds / 3600,
            client=f"{SHELL_CLIENT} · {client}", ip_address=ip_address,
        )
        namespace = instance_object_name(
            key=instance.key, owner=instance.workspace.owner.get_username(),
            name=instance.name) if instance.kind == NAMESPACE else "default"
    record_audit(action=AuditAction.SHELL_OPENED, obj=instance, actor=user,
                 workspace=instance.workspace, ip_address=ip_address, kind=kind,
                 token=token.prefix if token else None)
    return ShellGrant(
        user_id=user.pk, username=user.get_username(), instance_id=instance.pk,
        instance_name=instance.name, kind=kind, namespace=namespace,
        token_id=token.pk if token else None, token=plain,
        expires_at=token.expires_at if token else timezone.now() + timedelta(seconds=seconds),
    )


def kubeconfig(*, instance: Instance, username: str, token: str, server: str) -> str:
    """A kubeconfig whose server is this portal's proxy for the instance (`server`, its
    `/k8s/<id>/` address) and whose only credential is the token: nothing of the cluster's
    own address or credentials. A downloaded kubeconfig, and the shell pod's."""
    name = f"{settings.PORTAL_ID}-{instance.name}"
    context: dict[str, str] = {"cluster": name, "user": f"{username}@{name}"}
    if instance.kind == NAMESPACE:
        context["namespace"] = instance_object_name(
            key=instance.key, owner=instance.workspace.owner.get_username(), name=instance.name
        )
    cluster = {"server": server}
    if settings.ACCESS_KUBECONFIG_CA_FILE:
        cluster["certificate-authority-data"] = base64.b64encode(
            Path(settings.ACCESS_KUBECONFIG_CA_FILE).read_bytes()).decode()
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": context["user"], "user": {"token": token}}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }, sort_keys=False)


def shell_pod(*, grant: ShellGrant, portal_url: str) -> tuple[ShellPod, dict, str, float]:
    """The user's shell pod on the instance (the handle, the manifest to create when it is
    missing), the kubeconfig to write into it, and how often to write it again (0: never).
    Raises ShellRefused."""
    close_old_connections()
    instance = Instance.objects.select_related("cluster", "workspace__owner").get(
        pk=grant.instance_id)
    try:
        _, upstream = instance_upstream(instance)
    except BackendError as exc:
        raise ShellRefused(exc.message) from exc
    name = pod_name(grant.user_id)
    ShellPodRow.objects.update_or_create(
        instance=instance, name=name,
        defaults={"user_id": grant.user_id, "namespace": grant.namespace,
                  "last_active_at": timezone.now()})
    image = instance.cluster.shell_image or settings.SHELL_IMAGE
    config, renew = shell_kubeconfig(instance=instance, grant=grant, portal_url=portal_url)
    return (ShellPod(upstream, namespace=grant.namespace, name=name),
            manifest(name=name, namespace=grant.namespace, image=image,
                     user_id=grant.user_id), config, renew)


def shell_kubeconfig(*, instance: Instance, grant: ShellGrant,
                     portal_url: str) -> tuple[str, float]:
    """The shell pod's kubeconfig and how often it must be written again (0: never).

    Where the cluster's pods reach the portal: its proxy as the pod reaches it
    (SHELL_PORTAL_URL, else PORTAL_URL, else `portal_url`, the address the browser used),
    with the shell's own session token. Where they cannot (the cluster's "shell pods reach
    the portal" off), a namespace instance's pod goes straight to the API server with a
    TokenRequest token of the instance's access account, which lives at most ten minutes:
    renewed at half its life while a shell is open, so a copy outlives the user's access by
    no more than that."""
    if instance.cluster.shell_reaches_portal:
        base = settings.SHELL_PORTAL_URL or settings.PORTAL_URL or portal_url.rstrip("/")
        return kubeconfig(instance=instance, username=grant.username, token=grant.token,
                          server=f"{base}/k8s/{instance.pk}/"), 0.0
    if instance.kind != NAMESPACE:
        raise ShellRefused(
            "This cluster's pods cannot reach the portal, and a virtual or dedicated "
            "cluster's shell has no token of its own to fall back on; an administrator "
            "makes the portal reachable from the cluster (see the docs).")
    try:
        token, lives = get_backend(instance.cluster).access_token(instance_spec(instance))
    except BackendError as exc:
        raise ShellRefused(exc.message) from exc
    name = f"{settings.PORTAL_ID}-{instance.name}"
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": IN_CLUSTER, "certificate-authority": f"{CA_DIR}/ca.crt"}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name,
                                                "namespace": grant.namespace}}],
        "current-context": name,
    }, sort_keys=False), max(lives / 2, 1.0)


def renewed_shell_kubeconfig(*, grant: ShellGrant) -> tuple[str, float]:
    """The fallback kubeconfig again, with a new token (see shell_kubeconfig)."""
    close_old_connections()
    instance = Instance.objects.select_related("cluster", "workspace__owner").get(
        pk=grant.instance_id)
    return shell_kubeconfig(instance=instance, grant=grant, portal_url="")


def touch_shell_pod(*, grant: ShellGrant) -> None:
    """An open shell keeps its pod from the idle sweep."""
    close_old_connections()
    ShellPodRow.objects.filter(instance_id=grant.instance_id,
                               name=pod_name(grant.user_id)).update(
        last_active_at=timezone.now())


def delete_shell_pod(row: ShellPodRow, *, reason: str) -> bool:
    """Delete a shell pod (it may be gone already) and forget it; False when its cluster
    cannot be reached (the row stays, for the next sweep)."""
    instance = Instance.objects.select_related("cluster", "workspace__owner").filter(
        pk=row.instance_id).first()
    if instance is not None and instance.status not in GONE:
        try:
            _, upstream = instance_upstream(instance)
            ShellPod(upstream, namespace=row.namespace, name=row.name).delete()
        except (BackendError, ShellPodError) as exc:
            log.warning("shell pod %s/%s on instance %s: not deleted yet: %s",
                        row.namespace, row.name, row.instance_id, exc)
            return False
        record_audit(action=AuditAction.SHELL_POD_DELETED, obj=instance, actor=None,
                     workspace=instance.workspace, pod=row.name, reason=reason)
    row.delete()
    return True


def end_shell_pod(*, grant: ShellGrant, reason: str) -> None:
    """Access ended while a shell was open: its pod goes now, not after the idle timeout."""
    close_old_connections()
    for row in ShellPodRow.objects.filter(instance_id=grant.instance_id,
                                          name=pod_name(grant.user_id)):
        delete_shell_pod(row, reason=reason)


def sweep_shell_pods() -> int:
    """Periodic: delete the shell pods no shell has used for SHELL_IDLE_TIMEOUT_S, and those
    whose user lost access to the instance. Returns how many went."""
    idle_since = timezone.now() - timedelta(seconds=settings.SHELL_IDLE_TIMEOUT_S)
    deleted = 0
    for row in ShellPodRow.objects.select_related("user"):
        reason = "idle" if row.last_active_at < idle_since else ""
        if not reason:
            reason = "account removed" if row.user is None else lost_access(
                user=row.user, instance_id=row.instance_id)[1]
        if reason:
            deleted += delete_shell_pod(row, reason=reason)
    return deleted


def sandbox_terminal(*, grant: ShellGrant) -> Terminal:
    """The login shell the local backend offers in the instance's sandbox."""
    instance = Instance.objects.select_related("workspace__owner", "cluster", "profile").get(
        pk=grant.instance_id)
    try:
        return get_backend(instance.cluster).terminal(
            instance_spec(instance), tuple(instance.gpu_indices))
    except BackendError as exc:
        raise ShellRefused(exc.message) from exc


def shell_access(*, grant: ShellGrant) -> str:
    """Why an open shell must close now ('' while it may stay): asked every ACCESS_RECHECK_S
    and whenever access on its instance changes. A kubectl shell is held to its session
    token as the proxy holds every request (revoked, expired, access lost); a sandbox shell
    to the same access decision."""
    if grant.token:
        decision = authorize_proxy_request(token=grant.token, instance_id=grant.instance_id,
                                           touch=False)
        return decision.message if isinstance(decision, Refusal) else ""
    close_old_connections()
    user = get_user_model().objects.filter(pk=grant.user_id).first()
    if user is None:
        return "The account was removed."
    instance, reason = lost_access(user=user, instance_id=grant.instance_id)
    if instance is None:
        return f"Access to {grant.instance_name} ended ({reason})."
    if instance.status != Instance.Status.RUNNING:
        return f"{instance.name} is {instance.status_label.lower()}."
    return ""


def close_shell(*, grant: ShellGrant, reason: str, ip_address: str | None = None) -> None:
    """The shell closed: its session token dies with it, and the audit trail says why."""
    close_old_connections()
    with transaction.atomic():
        if grant.token_id is not None:
            AccessToken.objects.filter(pk=grant.token_id, revoked_at__isnull=True).update(
                revoked_at=timezone.now(), revoked_reason=f"shell closed: {reason}"[:200])
        instance = Instance.objects.select_related("workspace").filter(
            pk=grant.instance_id).first()
        if instance is not None:
            record_audit(action=AuditAction.SHELL_CLOSED, obj=instance,
                         actor=get_user_model().objects.filter(pk=grant.user_id).first(),
                         workspace=instance.workspace, ip_address=ip_address,
                         reason=reason[:200])
