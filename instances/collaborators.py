"""Sharing an instance: invitations by email (a signed link, its secret stored hashed),
accepting them (as a member or as a guest), and removing collaborators. Every change is
audited, and a removal ends the collaborator's access at once (tokens, shells, notebooks)."""

import hmac
import logging
import re
import secrets
import smtplib
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from gpupaas.celery import app as celery_app
from gpupaas.formats import one_line
from workspaces.models import AuditAction, AuditEvent
from workspaces.services import create_guest_account, record_audit
from workspaces.tokens import hash_token

from .models import Collaborator, Instance
from .selectors import check_may_manage

log = logging.getLogger(__name__)
Status = Instance.Status


INVITATION_SALT = "instances.invitation"
EMAIL_SEPARATORS = re.compile(r"[\s,;]+")
EMAIL_MAX = Collaborator._meta.get_field("email").max_length  # 254, as RFC 5321 allows


def _new_token(collaborator_id: int) -> tuple[str, str]:
    """(link token, hash to store). The link carries a random secret, signed together with
    the invitation's id so a forged or altered link is refused before any lookup."""
    secret = secrets.token_urlsafe(32)
    return signing.dumps([collaborator_id, secret], salt=INVITATION_SALT), hash_token(secret)


def parse_emails(text: str) -> list[str]:
    """The addresses in what the user typed (commas, semicolons, spaces or lines between),
    lower-cased, in order, without repeats; a ValidationError names every invalid one."""
    emails, invalid = [], []
    for raw in EMAIL_SEPARATORS.split(text.strip()):
        if not raw:
            continue
        email = raw.lower()
        try:
            validate_email(email)
        except ValidationError:
            invalid.append(raw)
            continue
        if len(email) > EMAIL_MAX:  # valid, but longer than an address can be stored
            invalid.append(raw)
            continue
        if email not in emails:
            emails.append(email)
    if invalid:
        raise ValidationError(
            {"emails": f"Not a valid email address: {', '.join(invalid)}. Nothing was sent."})
    if not emails:
        raise ValidationError({"emails": "Enter at least one email address."})
    return emails


def _validate_invitations(*, instance: Instance, emails: list[str], by: AbstractBaseUser
                          ) -> None:
    """Every rule an invitation must pass, checked under the instance row lock."""
    if instance.status in (Status.DELETING, Status.DELETED):
        raise ValidationError(f"{instance.name} is being deleted; it cannot be shared.")
    owner_email = (instance.workspace.owner.email or "").lower()
    problems = []
    for email in emails:
        if email == (by.email or "").lower():
            problems.append(f"{email} is you.")
        elif email == owner_email:
            problems.append(f"{email} is the owner of {instance.name}.")
    live = dict(_live(instance).values_list("email", "status"))
    for email in emails:
        if email in live:
            state = "already collaborates" if live[email] == Collaborator.Status.ACCEPTED else (
                "is already invited (use Resend to send the mail again)")
            problems.append(f"{email} {state}.")
    if problems:
        raise ValidationError({"emails": " ".join(problems) + " Nothing was sent."})
    limit = settings.COLLABORATORS_PER_INSTANCE
    if len(live) + len(emails) > limit:
        raise ValidationError({"emails": (
            f"{instance.name} can be shared with at most {limit} people: {len(live)} invited "
            f"or collaborating, {len(emails)} more asked. Nothing was sent.")})


def _live(instance: Instance) -> QuerySet[Collaborator]:
    """Who holds or may still take a place on the instance: collaborators, and invitations
    not yet expired (an expired one counts towards no limit and blocks no new invitation)."""
    return Collaborator.objects.filter(instance=instance).filter(
        Q(status=Collaborator.Status.ACCEPTED)
        | Q(status=Collaborator.Status.PENDING, expires_at__gt=timezone.now()))


def _check_mail_budget(by: AbstractBaseUser, count: int) -> None:
    """At most INVITATION_MAILS_PER_HOUR invitation mails a person sends in an hour, counted
    on what was sent (the audit rows of invitations and resends), so withdrawing and inviting
    again gains nothing."""
    limit = settings.INVITATION_MAILS_PER_HOUR
    since = timezone.now() - timezone.timedelta(hours=1)
    sent = AuditEvent.objects.filter(
        actor=by, created_at__gte=since,
        action__in=[AuditAction.COLLABORATOR_INVITED, AuditAction.COLLABORATOR_RESENT]).count()
    if sent + count > limit:
        left = max(0, limit - sent)
        raise ValidationError({"emails": (
            f"You can send at most {limit} invitations an hour; {sent} went out in the last "
            f"hour, so {left} more can go now. Nothing was sent.")})


@dataclass
class Invitations:
    sent: list[Collaborator]
    unsent: list[Collaborator]  # mail could not be delivered; Resend tries again


def _send_invitation(collaborator: Collaborator, token: str, base_url: str) -> bool:
    """Mail the accept link; False (and a log line) when the mail server refuses."""
    link = f"{base_url.rstrip('/')}{reverse('invitation', args=[token])}"
    inviter = collaborator.invited_by
    context = {
        "instance": collaborator.instance,
        "inviter": one_line(inviter.get_full_name() or inviter.get_username()) if inviter
        else "Someone",
        "inviter_email": inviter.email if inviter else "",
        "link": link,
        "expires_at": collaborator.expires_at,
        "site_name": settings.SITE_NAME,
        "manage": collaborator.access == Collaborator.Access.MANAGE,
        "guest_sign_in": f"{base_url.rstrip('/')}{reverse('guest_login')}",
    }
    subject = render_to_string("instances/email/invitation_subject.txt", context).strip()
    body = render_to_string("instances/email/invitation.txt", context)
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [collaborator.email])
    # ValueError: a header Django refuses (BadHeaderError); the invitation stands, Resend
    # tries again.
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        log.warning("invitation mail to %s failed: %s", collaborator.email, exc)
        return False
    Collaborator.objects.filter(pk=collaborator.pk).update(sent_at=timezone.now())
    return True


def _deliver(pending: list[tuple[Collaborator, str]], base_url: str) -> Invitations:
    result = Invitations(sent=[], unsent=[])
    for collaborator, token in pending:
        sent = _send_invitation(collaborator, token, base_url)
        (result.sent if sent else result.unsent).append(collaborator)
    return result


def invite_collaborator(
    *, instance: Instance, emails: str | list[str], by: AbstractBaseUser, base_url: str,
    ip_address: str | None = None, access: str = Collaborator.Access.MANAGE,
) -> Invitations:
    """Invite one or more addresses (a list, or text as typed) to share the instance and mail
    each an accept link.

    All or nothing: one bad address refuses the lot, with every reason in one message. The
    mail goes out after the commit; one the server refused is reported, and Resend retries."""
    check_may_manage(instance=instance, by=by, doing="share it")
    emails = parse_emails(emails if isinstance(emails, str) else "\n".join(emails))
    pending = []
    with transaction.atomic():
        # The instance row lock serialises invitations, so two at once never pass the limit.
        instance = (Instance.objects.select_for_update().select_related("workspace__owner")
                    .get(pk=instance.pk))
        _validate_invitations(instance=instance, emails=emails, by=by)
        _check_mail_budget(by, len(emails))
        # An expired invitation to one of these addresses gives way to the new one.
        Collaborator.objects.filter(
            instance=instance, email__in=emails, status=Collaborator.Status.PENDING,
            expires_at__lte=timezone.now(),
        ).update(status=Collaborator.Status.REVOKED, ended_at=timezone.now())
        expires = timezone.now() + timezone.timedelta(days=settings.INVITATION_TTL_DAYS)
        for email in emails:
            collaborator = Collaborator.objects.create(
                instance=instance, email=email, invited_by=by, expires_at=expires,
                token_hash="-", access=Collaborator.Access(access))
            token, collaborator.token_hash = _new_token(collaborator.pk)
            collaborator.save(update_fields=["token_hash"])
            record_audit(action=AuditAction.COLLABORATOR_INVITED, obj=collaborator, actor=by,
                         workspace=instance.workspace, ip_address=ip_address,
                         instance=instance.name, email=email, expires_at=expires.isoformat(),
                         access=access)
            pending.append((collaborator, token))
    return _deliver(pending, base_url)


def resend_invitation(
    *, collaborator: Collaborator, by: AbstractBaseUser, base_url: str,
    ip_address: str | None = None,
) -> Invitations:
    """A new link and a new expiry for a pending invitation; the old link stops working."""
    check_may_manage(instance=collaborator.instance, by=by, doing="share it")
    with transaction.atomic():
        _check_mail_budget(by, 1)
        expires = timezone.now() + timezone.timedelta(days=settings.INVITATION_TTL_DAYS)
        token, token_hash = _new_token(collaborator.pk)
        if not Collaborator.objects.filter(
            pk=collaborator.pk, status=Collaborator.Status.PENDING
        ).update(token_hash=token_hash, expires_at=expires):
            raise ValidationError("Only a pending invitation can be sent again.")
        collaborator.refresh_from_db()
        record_audit(action=AuditAction.COLLABORATOR_RESENT, obj=collaborator, actor=by,
                     workspace=collaborator.instance.workspace, ip_address=ip_address,
                     email=collaborator.email, expires_at=expires.isoformat())
    return _deliver([(collaborator, token)], base_url)


def revoke_invitation(
    *, collaborator: Collaborator, by: AbstractBaseUser, ip_address: str | None = None
) -> bool:
    """Withdraw a pending invitation: its link is refused from now on."""
    check_may_manage(instance=collaborator.instance, by=by, doing="change who shares it")
    with transaction.atomic():
        revoked = Collaborator.objects.filter(
            pk=collaborator.pk, status=Collaborator.Status.PENDING
        ).update(status=Collaborator.Status.REVOKED, ended_at=timezone.now())
        if revoked:
            record_audit(action=AuditAction.COLLABORATOR_REVOKED, obj=collaborator, actor=by,
                         workspace=collaborator.instance.workspace, ip_address=ip_address,
                         email=collaborator.email)
    return bool(revoked)


@dataclass
class Removed:
    withdrawn: list[str]  # the addresses of the invitations they had sent, now withdrawn


def remove_collaborator(
    *, collaborator: Collaborator, by: AbstractBaseUser, ip_address: str | None = None
) -> Removed | None:
    """End a collaborator's access on every path at once: pages (the access check reads this
    row on every request), remote-access tokens, and the instance's notebook tokens, which
    they could have seen and which are renewed by a worker right after the commit. Anyone
    may leave; removing someone else takes a manager."""
    if by is None or collaborator.user_id != by.pk:
        check_may_manage(instance=collaborator.instance, by=by,
                         doing="change who shares it")
    with transaction.atomic():
        now = timezone.now()
        removed = Collaborator.objects.filter(
            pk=collaborator.pk, status=Collaborator.Status.ACCEPTED
        ).update(status=Collaborator.Status.REMOVED, ended_at=now)
        if not removed:
            return None
        instance = collaborator.instance
        Instance.objects.filter(pk=instance.pk).update(access_revoked_at=now)
        # Their pending invitations go with them: else they could come back through one
        # they sent to another address of theirs.
        theirs = list(Collaborator.objects.select_for_update().filter(
            instance=instance, invited_by_id=collaborator.user_id,
            status=Collaborator.Status.PENDING))
        for invitation in theirs:
            Collaborator.objects.filter(pk=invitation.pk).update(
                status=Collaborator.Status.REVOKED, ended_at=now)
            record_audit(action=AuditAction.COLLABORATOR_REVOKED, obj=invitation, actor=by,
                         workspace=instance.workspace, ip_address=ip_address,
                         email=invitation.email, reason=f"{collaborator.email} was removed")
        record_audit(action=AuditAction.COLLABORATOR_REMOVED, obj=collaborator, actor=by,
                     workspace=instance.workspace, ip_address=ip_address,
                     email=collaborator.email, invitations_withdrawn=[i.email for i in theirs])
        reason = f"{collaborator.email} was removed from {instance.name}"
        # Notebook tokens belong to the notebooks app, above this one: it is told by task
        # name, the way beat names its tasks, and its reconcile catches up if this is lost.
        transaction.on_commit(lambda: celery_app.send_task(
            "notebooks.tasks.rotate_notebook_tokens", args=[instance.pk, reason]))
        # Kubeconfig tokens: the access proxy asks instance_for_user on every request, so the
        # next one is refused (401) already; the sweep marks the tokens revoked in their list.
        transaction.on_commit(lambda: celery_app.send_task("access.tasks.sweep_remote_access"))
    return Removed(withdrawn=[i.email for i in theirs])


class InvitationError(Exception):
    """An invitation link that cannot be used; `message` says why and what to do."""

    def __init__(self, message: str, *, collaborator: Collaborator | None = None,
                 code: str = "unusable") -> None:
        super().__init__(message)
        self.message = message
        self.collaborator = collaborator
        self.code = code  # "mismatch": a valid link, opened by someone else


def invitation_for_token(token: str) -> Collaborator:
    """The pending invitation a link stands for, or InvitationError in plain words."""
    try:
        collaborator_id, secret = signing.loads(token, salt=INVITATION_SALT)
    except (signing.BadSignature, ValueError, TypeError) as exc:
        raise InvitationError("This invitation link is not valid. Check that you copied "
                              "all of it, or ask for a new invitation.") from exc
    collaborator = (Collaborator.objects.select_related("instance__workspace__owner",
                                                        "invited_by")
                    .filter(pk=collaborator_id).first())
    if collaborator is None or not hmac.compare_digest(collaborator.token_hash,
                                                       hash_token(str(secret))):
        raise InvitationError("This invitation link is no longer valid: a newer one was sent, "
                              "or it was never issued. Use the most recent invitation mail.")
    inviter = collaborator.invited_by.get_username() if collaborator.invited_by else "the owner"
    instance = collaborator.instance
    if collaborator.status == Collaborator.Status.ACCEPTED:
        raise InvitationError("This invitation was already accepted; it works only once.",
                              collaborator=collaborator)
    if collaborator.status != Collaborator.Status.PENDING:
        raise InvitationError(f"This invitation was withdrawn. Ask {inviter} to invite you "
                              "again if you still need access.", collaborator=collaborator)
    if collaborator.invited_by_id not in (None, instance.workspace.owner_id) and not (
            Collaborator.objects.filter(instance=instance, user_id=collaborator.invited_by_id,
                                        status=Collaborator.Status.ACCEPTED).exists()):
        raise InvitationError(f"This invitation was withdrawn: {inviter} no longer has access "
                              f"to {instance.name}.", collaborator=collaborator)
    if instance.status in (Status.DELETING, Status.DELETED):
        raise InvitationError(f"The instance {instance.name} has been deleted, so this "
                              "invitation can no longer be accepted.", collaborator=collaborator)
    if collaborator.expires_at <= timezone.now():
        expired = timezone.localtime(collaborator.expires_at).strftime("%b %-d, %Y %H:%M")
        raise InvitationError(f"This invitation expired on {expired}. Ask {inviter} to send "
                              "it again.", collaborator=collaborator)
    return collaborator


def accept_invitation(
    *, token: str, user: AbstractBaseUser, proven_email: str, ip_address: str | None = None
) -> Collaborator:
    """Accept the invitation for `user`, whose address `proven_email` was proven by the
    identity provider (or by the link itself, for a guest) and never typed by them.

    Raises InvitationError when the link cannot be used or the address differs."""
    collaborator = invitation_for_token(token)
    instance = collaborator.instance
    if (proven_email or "").lower() != collaborator.email:
        raise InvitationError(
            f"This invitation is for {collaborator.email}, not for the address you signed in "
            "with.", collaborator=collaborator, code="mismatch")
    if instance.workspace.owner_id == user.pk:
        raise InvitationError(f"You own {instance.name} already.", collaborator=collaborator)
    with transaction.atomic():
        try:
            with transaction.atomic():
                accepted = Collaborator.objects.filter(
                    pk=collaborator.pk, status=Collaborator.Status.PENDING,
                    token_hash=collaborator.token_hash, expires_at__gt=timezone.now(),
                ).update(status=Collaborator.Status.ACCEPTED, user=user,
                         accepted_at=timezone.now())
        except IntegrityError as exc:
            raise InvitationError(f"You already collaborate on {instance.name}.",
                                  collaborator=collaborator) from exc
        if not accepted:  # used or withdrawn a moment ago
            raise InvitationError("This invitation was used or withdrawn a moment ago.",
                                  collaborator=collaborator)
        collaborator.refresh_from_db()
        record_audit(action=AuditAction.COLLABORATOR_ACCEPTED, obj=collaborator, actor=user,
                     workspace=instance.workspace, ip_address=ip_address,
                     email=collaborator.email)
    return collaborator


def accept_invitation_as_guest(
    *, token: str, password: str, ip_address: str | None = None
) -> tuple[AbstractBaseUser, Collaborator]:
    """For someone outside the identity provider: the link proves the address, so it creates
    a guest account with that address and accepts, both or neither."""
    collaborator = invitation_for_token(token)
    with transaction.atomic():
        user = create_guest_account(email=collaborator.email, password=password,
                                    ip_address=ip_address)
        collaborator = accept_invitation(token=token, user=user, proven_email=collaborator.email,
                                         ip_address=ip_address)
        if (settings.GUEST_MAX_ACCESS == Collaborator.Access.USE
                and collaborator.access == Collaborator.Access.MANAGE):
            # A guest gets at most what the administrator allows guests (GUEST_MAX_ACCESS).
            collaborator.access = Collaborator.Access.USE
            collaborator.save(update_fields=["access"])
    return user, collaborator


