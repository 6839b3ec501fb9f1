"""Single sign-on through an OpenID Connect identity provider (django-allauth).

allauth does the authorization-code flow with PKCE and checks `state`, the ID token's
issuer, audience and expiry. This module adds what a portal needs on top: a nonce bound to
the login attempt, refusals in plain words, safe account linking, group membership that
follows the IdP at every login, and logout at the IdP.
"""

import logging
import secrets
from typing import Any
from urllib.parse import urlencode

import requests
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.adapter import get_adapter as get_social_adapter
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialLogin
from allauth.socialaccount.providers.openid_connect.provider import OpenIDConnectProvider
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from workspaces.selectors import role_of
from workspaces.services import ensure_workspace, sync_groups_from_claims

log = logging.getLogger(__name__)


def sso_app(request: HttpRequest) -> SocialApp | None:
    """The configured identity provider (from the environment or the admin), if any."""
    apps = get_social_adapter().list_apps(request, provider="openid_connect")
    return apps[0] if apps else None


def refusal(request: HttpRequest, reason: str, status: int = 403) -> HttpResponse:
    return render(request, "portal/sso_refused.html", {"reason": reason}, status=status)


class PortalOpenIDConnectProvider(OpenIDConnectProvider):
    """allauth's OpenID Connect provider, plus a nonce and a clear page when the IdP is down."""

    package = "allauth.socialaccount.providers.openid_connect"  # its URLs, not ours

    def redirect(self, request: HttpRequest, process, next_url=None, data=None, **kwargs):
        # The nonce travels in the authorization request and is kept with allauth's state;
        # the ID token must carry it back (checked in pre_social_login).
        nonce = secrets.token_urlsafe(24)
        auth_params = kwargs.pop("auth_params", None)
        if auth_params is None:
            auth_params = self.get_auth_params()
        kwargs["auth_params"] = {**auth_params, "nonce": nonce}
        try:
            return super().redirect(request, process, next_url, data, nonce=nonce, **kwargs)
        except requests.RequestException as exc:
            log.warning("identity provider unreachable: %s", exc)
            return refusal(
                request,
                f"The sign-in service ({self.app.name}) cannot be reached right now. "
                "Try again in a few minutes; if it persists, tell your administrator.",
                status=503,
            )


def _claims(sociallogin: SocialLogin) -> dict[str, Any]:
    data = sociallogin.account.extra_data or {}
    return {**(data.get("id_token") or {}), **(data.get("userinfo") or {})}


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest, sociallogin: SocialLogin) -> bool:
        # Whoever the IdP vouches for gets an account; their groups decide what they may do.
        return True

    def pre_social_login(self, request: HttpRequest, sociallogin: SocialLogin) -> None:
        id_token = (sociallogin.account.extra_data or {}).get("id_token") or {}
        expected = (sociallogin.state or {}).get("nonce")
        if not expected or id_token.get("nonce") != expected:
            raise ImmediateHttpResponse(refusal(
                request, "The sign-in response did not belong to this sign-in attempt "
                "(nonce mismatch), so it was refused. Please sign in again."))
        claims = _claims(sociallogin)
        email = claims.get("email") or ""
        verified = claims.get("email_verified") is True
        if settings.OIDC_REQUIRE_VERIFIED_EMAIL and not verified:
            raise ImmediateHttpResponse(refusal(
                request, "Your identity provider does not confirm that your email address "
                "is verified, so the portal cannot sign you in. Verify your email with your "
                "identity provider, or ask your administrator."))
        if not sociallogin.is_existing and email:
            owner = get_user_model().objects.filter(email__iexact=email).first()
            linkable = settings.OIDC_LINK_BY_VERIFIED_EMAIL and verified
            if owner is not None and not linkable:
                raise ImmediateHttpResponse(refusal(
                    request, f"An account with the email {email} already exists in the portal "
                    "and is not linked to your sign-in. Ask your administrator to link them."))
        if sociallogin.is_existing:
            self._sync(request, sociallogin.user, sociallogin)

    def save_user(self, request: HttpRequest, sociallogin: SocialLogin, form=None):
        user = super().save_user(request, sociallogin, form)
        self._sync(request, user, sociallogin)
        return user

    def _sync(self, request: HttpRequest, user, sociallogin: SocialLogin) -> None:
        sync_groups_from_claims(user=user, claims=_claims(sociallogin),
                                claim_name=settings.OIDC_GROUPS_CLAIM)
        if role_of(user):
            ensure_workspace(user=user)  # a role comes with a workspace, ready at first login


def idp_logout_url(request: HttpRequest, user, back: str) -> str:
    """Where to send a user who signed in through the IdP so that its session ends too
    (RP-initiated logout); '' when the user did not or the IdP offers no such endpoint."""
    app = sso_app(request)
    if app is None or not SocialAccount.objects.filter(user=user, provider=app.provider_id
                                                      ).exists():
        return ""
    try:
        provider = app.get_provider(request)
        end_session = provider.get_oauth2_adapter(request).openid_config.get(
            "end_session_endpoint", "")
    except requests.RequestException:
        return ""
    if not end_session:
        return ""
    return f"{end_session}?" + urlencode({"client_id": app.client_id,
                                          "post_logout_redirect_uri": back})


def verified_sso_email(request: HttpRequest, user) -> str:
    """The address the identity provider confirmed (`email_verified`) at the user's latest
    sign-in through it; '' when there is none. Never an address the user typed."""
    app = sso_app(request)
    if app is None or not user.is_authenticated:
        return ""
    account = SocialAccount.objects.filter(user=user, provider=app.provider_id).first()
    if account is None:
        return ""
    data = account.extra_data or {}
    claims = {**(data.get("id_token") or {}), **(data.get("userinfo") or {})}
    return str(claims.get("email") or "") if claims.get("email_verified") is True else ""
