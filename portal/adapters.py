from allauth.account.adapter import DefaultAccountAdapter
from django import forms
from django.http import HttpRequest
from django.urls import reverse

from workspaces.services import client_ip


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        # Local accounts come from the administrator; everyone else signs in through the IdP.
        return False

    def authenticate(self, request: HttpRequest, **credentials):
        from .sso import sso_app

        user = super().authenticate(request, **credentials)
        if getattr(request, "guest_sign_in", False) and user is not None and not hasattr(
                user, "guest_account"):
            raise forms.ValidationError(
                "This page is for guests (people invited from outside the company). Use "
                "your company sign-in instead.")
        if (user is not None and not user.is_staff and not hasattr(user, "guest_account")
                and sso_app(request) is not None):
            # With an IdP, passwords are the administrators' break-glass path, and the way
            # guests (people outside the IdP) sign in.
            raise forms.ValidationError(
                "Password sign-in is for administrators. Please use single sign-on.")
        return user

    def get_client_ip(self, request: HttpRequest) -> str:
        # The same address the audit log records: the client's behind trusted proxies, so
        # one person's failed sign-ins do not lock out everyone behind the same proxy.
        return client_ip(request) or super().get_client_ip(request)

    def get_logout_redirect_url(self, request: HttpRequest) -> str:
        # Asked before the session ends: a user who came through the IdP is sent there to end
        # its session too, otherwise "sign in" would come straight back.
        from .sso import idp_logout_url

        back = request.build_absolute_uri(reverse("portal:signed_out"))
        return idp_logout_url(request, request.user, back) or reverse("portal:signed_out")
