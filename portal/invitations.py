"""Invitation links: what someone who received one sees, and accepting it.

The link itself is reachable signed out (it explains itself and offers sign-in, or a guest
account to people outside the identity provider). Accepting needs an address the portal did
not take from the user: the one the identity provider verified, or the one a guest account
was created for."""

from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from instances import collaborators
from instances.models import Collaborator
from workspaces.models import GuestAccount
from workspaces.services import client_ip, guest_refusal

from .sso import sso_app, verified_sso_email


class GuestForm(forms.Form):
    password1 = forms.CharField(label="Choose a password", widget=forms.PasswordInput(
        attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(label="Repeat it", widget=forms.PasswordInput(
        attrs={"autocomplete": "new-password"}))

    def clean(self) -> dict:
        data = super().clean()
        if data.get("password1") != data.get("password2"):
            raise ValidationError("The two passwords differ.")
        return data


def proven_email(request: HttpRequest) -> str:
    """The signed-in user's address as someone other than the user vouched for it."""
    guest = GuestAccount.objects.filter(user=request.user).first()
    return guest.email if guest else verified_sso_email(request, request.user)


def _refused(request: HttpRequest, error: collaborators.InvitationError) -> HttpResponse:
    return render(request, "portal/invitation_refused.html", {"reason": error.message},
                  status=400)


def _page(request: HttpRequest, collaborator: Collaborator, *, status: int = 200,
          guest_form: GuestForm | None = None) -> HttpResponse:
    email = proven_email(request) if request.user.is_authenticated else ""
    return render(request, "portal/invitation.html", {
        "collaborator": collaborator,
        "instance": collaborator.instance,
        "inviter": collaborator.invited_by,
        "proven_email": email,
        "matches": email.lower() == collaborator.email,
        "sign_in_url": reverse("account_login") + "?" + urlencode({"next": request.path}),
        "sso": sso_app(request),
        "guest_refusal": guest_refusal(collaborator.email),
        "guest_form": guest_form or GuestForm(),
    }, status=status)


@login_not_required
@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """GET explains the invitation; POST accepts it for the signed-in user, whose verified
    address must be the invited one (else a page that says which it was for)."""
    try:
        collaborator = collaborators.invitation_for_token(token)
    except collaborators.InvitationError as exc:
        return _refused(request, exc)
    if request.method == "GET" or not request.user.is_authenticated:
        return _page(request, collaborator)
    try:
        collaborators.accept_invitation(token=token, user=request.user,
                                   proven_email=proven_email(request),
                                   ip_address=client_ip(request))
    except collaborators.InvitationError as exc:
        if exc.code != "mismatch":
            return _refused(request, exc)
        return _page(request, collaborator, status=403)
    messages.success(request, f"{collaborator.instance.name} is now shared with you.")
    return redirect("instances:detail", pk=collaborator.instance_id)


@login_not_required
@require_http_methods(["POST"])
def invitation_guest(request: HttpRequest, token: str) -> HttpResponse:
    """Someone outside the identity provider sets a password: the link proved the address."""
    try:
        collaborator = collaborators.invitation_for_token(token)
    except collaborators.InvitationError as exc:
        return _refused(request, exc)
    if request.user.is_authenticated:
        return redirect("invitation", token=token)
    form = GuestForm(request.POST)
    if form.is_valid():
        try:
            user, collaborator = collaborators.accept_invitation_as_guest(
                token=token, password=form.cleaned_data["password1"],
                ip_address=client_ip(request))
        except collaborators.InvitationError as exc:
            return _refused(request, exc)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome! {collaborator.instance.name} is shared with "
                             "you. Next time, sign in with your email address and password "
                             f"at {reverse('account_login')}?local; you can add a second "
                             "factor from your home page.")
            return redirect("instances:detail", pk=collaborator.instance_id)
    return _page(request, collaborator, status=400, guest_form=form)
