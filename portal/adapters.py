from urllib.parse import urlencode

from allauth.account.adapter import DefaultAccountAdapter
from django import forms
from django.http import HttpRequest
from django.urls import reverse


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        # Local accounts come from the administrator; everyone else signs in through the IdP.
        return False

    def authenticate(self, request: HttpRequest, **credentials):
        from .sso import sso_app

        user = super().authenticate(request, **credentials)
        if user is not None and not user.is_staff and sso_app(request) is not None:
            # With an IdP, passwords are the administrators' break-glass path only.
            raise forms.ValidationError(
                "Password sign-in is for administrators. Please use single sign-on.")
        return user

    def logout(self, request: HttpRequest) -> None:
        end_session = request.session.get("sso_end_session", "")
        client_id = request.session.get("sso_client_id", "")
        super().logout(request)
        if end_session:
            # Ending the IdP's session too: otherwise "sign in" would come straight back.
            back = request.build_absolute_uri(reverse("portal:signed_out"))
            request.sso_logout_url = f"{end_session}?" + urlencode(
                {"client_id": client_id, "post_logout_redirect_uri": back})

    def get_logout_redirect_url(self, request: HttpRequest) -> str:
        return getattr(request, "sso_logout_url", "") or reverse("portal:signed_out")
