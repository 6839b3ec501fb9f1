"""Single sign-on through an OpenID Connect identity provider (django-allauth).

allauth does the authorization-code flow with PKCE and checks `state`. This module adds what
a portal needs on top: the discovery document must name the configured issuer; every ID
token's signature is verified against the issuer's JWKS (portal.idtoken) with its issuer,
audience and times; userinfo must be about the same subject; the claims the portal uses are
type-checked; a nonce binds the answer to the login attempt; refusals come in plain words
with nothing created; account linking never takes over an administrator; group membership
follows the IdP at every login; and logout ends the IdP's session too.
"""

import logging
import secrets
from typing import Any
from urllib.parse import urlencode

import requests
from allauth.account.models import EmailAddress
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.adapter import get_adapter as get_social_adapter
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialLogin
from allauth.socialaccount.providers.oauth2.views import OAuth2CallbackView, OAuth2LoginView
from allauth.socialaccount.providers.openid_connect.provider import OpenIDConnectProvider
from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import MultipleObjectsReturned, ValidationError
from django.core.validators import validate_email
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from gpupaas.formats import one_line
from workspaces.selectors import role_of
from workspaces.services import ensure_workspace, sync_groups_from_claims

from .idtoken import IdTokenRefused, KeysUnavailable, verify_id_token

log = logging.getLogger(__name__)
UID_MAX = SocialAccount._meta.get_field("uid").max_length  # 191; OIDC allows 255
TEXT_CLAIMS = ("name", "given_name", "family_name", "preferred_username")


class Refused(Exception):
    """An answer from the IdP the portal will not use: `reason` is shown as it is."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def sso_app(request: HttpRequest) -> SocialApp | None:
    """The configured identity provider (from the environment or the admin), if any."""
    apps = get_social_adapter().list_apps(request, provider="openid_connect")
    return apps[0] if apps else None


def refusal(request: HttpRequest, reason: str, status: int = 403) -> HttpResponse:
    return render(request, "portal/sso_refused.html", {"reason": reason}, status=status)


def unreachable(app: SocialApp, exc: Exception) -> Refused:
    log.warning("identity provider %s unreachable: %s", app.provider_id, exc)
    return Refused(f"The sign-in service ({app.name}) cannot be reached right now. "
                   "Try again in a few minutes; if it persists, tell your administrator.",
                   status=503)


def expected_issuer(app: SocialApp) -> str:
    """The issuer as configured (OIDC_ISSUER_URL or the social app's server URL)."""
    url = app.settings["server_url"]
    return url.split("/.well-known/", 1)[0].rstrip("/")


def _require_text(claims: dict[str, Any], name: str, *, required: bool = False) -> None:
    value = claims.get(name)
    if (value is None and required) or (value is not None and not isinstance(value, str)):
        raise Refused(f"Your identity provider sent a '{name}' claim the portal cannot use "
                      f"({type(value).__name__} instead of text). Tell your administrator.")


def check_claims(claims: dict[str, Any]) -> None:
    """Refuse, in plain words, claims of a shape the portal would choke on."""
    _require_text(claims, "sub", required=True)
    if not 0 < len(claims["sub"]) <= UID_MAX:
        raise Refused(f"Your identity provider identifies you with a subject of "
                      f"{len(claims['sub'])} characters; the portal takes at most {UID_MAX}. "
                      "Tell your administrator.")
    for name in TEXT_CLAIMS:
        _require_text(claims, name)
    groups = claims.get(settings.OIDC_GROUPS_CLAIM)
    if groups is not None and not isinstance(groups, str) and not (
            isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise Refused(f"Your identity provider sent the '{settings.OIDC_GROUPS_CLAIM}' claim "
                      f"as {type(groups).__name__}, not as a list of group names, so your "
                      "groups cannot be known. Tell your administrator.")
    email = claims.get("email")
    try:
        if not isinstance(email, str):
            raise ValidationError("not text")
        validate_email(email)
    except ValidationError:
        raise Refused("Your identity provider did not send a valid email address, so the "
                      "portal cannot sign you in. Ask your administrator.") from None
    longest = get_user_model()._meta.get_field("email").max_length
    if len(email) > longest:
        # A valid address the account cannot hold: allauth would ask for another one on a
        # sign-up form, and the portal never takes a typed address for an IdP's.
        raise Refused(f"Your identity provider sent an email address of {len(email)} "
                      f"characters; the portal stores at most {longest}, so it cannot sign "
                      "you in. Ask your administrator.")
    if settings.OIDC_REQUIRE_VERIFIED_EMAIL and claims.get("email_verified") is not True:
        raise Refused("Your identity provider does not confirm that your email address "
                      "is verified, so the portal cannot sign you in. Verify your email with "
                      "your identity provider, or ask your administrator.")


class PortalOIDCAdapter(OpenIDConnectOAuth2Adapter):
    """allauth's adapter, verifying what it trusts: discovery, the ID token, userinfo."""

    @property
    def openid_config(self) -> dict[str, Any]:
        if not hasattr(self, "_openid_config"):
            app = self.get_provider().app
            try:
                response = requests.get(self.get_provider().server_url,
                                        timeout=settings.OIDC_HTTP_TIMEOUT_S)
                response.raise_for_status()
                config = response.json()
                issuer = config["issuer"]
            except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
                raise unreachable(app, exc) from exc
            # Exact, but for a trailing slash (Auth0's issuers end in one, Keycloak's not).
            if not isinstance(issuer, str) or issuer.rstrip("/") != expected_issuer(app):
                log.warning("discovery names issuer %r, configured %r", issuer,
                            expected_issuer(app))
                raise Refused(f"The sign-in service ({app.name}) names itself {issuer!r}, "
                              "not the issuer the portal is configured for, so it is not "
                              "trusted. Tell your administrator.", status=503)
            config.update(app.settings.get("openid_configuration_overrides", {}))
            self._openid_config = config
        return self._openid_config

    def complete_login(self, request: HttpRequest, app: SocialApp, token, **kwargs):
        raw = kwargs["response"].get("id_token")
        if not raw:
            raise Refused("Your identity provider sent no ID token. Tell your administrator.")
        try:
            id_token = verify_id_token(
                raw, jwks_uri=self.openid_config["jwks_uri"], issuer=self.openid_config["issuer"],
                client_id=app.client_id, client_secret=app.secret)
        except KeysUnavailable as exc:
            raise unreachable(app, exc) from exc
        except IdTokenRefused as exc:
            log.warning("ID token refused: %s", exc)
            raise Refused("The answer from your identity provider could not be trusted "
                          "(its ID token is not validly signed, or not for this portal, or "
                          "not current), so it was refused. If it keeps failing, tell your "
                          "administrator.") from exc
        data: dict[str, Any] = {"id_token": id_token}
        if app.settings.get("fetch_userinfo", True):
            try:
                userinfo = self._fetch_user_info(token.token)
            except (requests.RequestException, ValueError) as exc:
                raise unreachable(app, exc) from exc
            # OIDC Core 5.3.2: a userinfo answer about someone else must not be used.
            if not isinstance(userinfo, dict) or userinfo.get("sub") != id_token["sub"]:
                raise Refused("Your identity provider's user information was about another "
                              "person than its ID token, so it was refused.")
            data["userinfo"] = userinfo
        check_claims({**id_token, **data.get("userinfo", {})})
        return self.get_provider().sociallogin_from_response(request, data)


class PortalOpenIDConnectProvider(OpenIDConnectProvider):
    """allauth's OpenID Connect provider with the adapter above and a nonce."""

    package = "portal.oidc"  # login and callback through the views below
    oauth2_adapter_class = PortalOIDCAdapter
    supports_token_authentication = False  # no ID tokens handed in by apps

    def redirect(self, request: HttpRequest, process, next_url=None, data=None, **kwargs):
        # The nonce travels in the authorization request and is kept with allauth's state;
        # the ID token must carry it back (checked in pre_social_login).
        nonce = secrets.token_urlsafe(24)
        auth_params = kwargs.pop("auth_params", None)
        if auth_params is None:
            auth_params = self.get_auth_params()
        kwargs["auth_params"] = {**auth_params, "nonce": nonce}
        return super().redirect(request, process, next_url, data, nonce=nonce, **kwargs)

    def extract_uid(self, data: dict[str, Any]) -> str:
        return data["id_token"]["sub"]  # verified, and userinfo's is the same

    def extract_email_addresses(self, data: dict[str, Any]) -> list[EmailAddress]:
        # Verified means the JSON boolean true, as everywhere else (not the string "true").
        claims = {**data.get("id_token", {}), **data.get("userinfo", {})}
        return [EmailAddress(email=claims["email"], verified=claims.get("email_verified") is True,
                             primary=True)]


def _oidc_view(view_class: type[OAuth2LoginView] | type[OAuth2CallbackView]):
    @login_not_required
    def view(request: HttpRequest, provider_id: str) -> HttpResponse:
        try:
            return view_class.adapter_view(PortalOIDCAdapter(request, provider_id))(request)
        except SocialApp.DoesNotExist:
            raise Http404("No such sign-in service.") from None
        except MultipleObjectsReturned:
            return refusal(request, "Single sign-on is configured twice (two social "
                           f"applications with the id {provider_id!r}). Tell your "
                           "administrator.", status=503)
        except Refused as exc:
            return refusal(request, exc.reason, exc.status)
        except requests.RequestException as exc:  # e.g. discovery failing at the callback
            return refusal(request, unreachable(SocialApp(name=provider_id), exc).reason, 503)
    return view


login_view = _oidc_view(OAuth2LoginView)
callback_view = _oidc_view(OAuth2CallbackView)


def _claims(sociallogin: SocialLogin) -> dict[str, Any]:
    data = sociallogin.account.extra_data or {}
    return {**(data.get("id_token") or {}), **(data.get("userinfo") or {})}


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest, sociallogin: SocialLogin) -> bool:
        # Whoever the IdP vouches for gets an account; their groups decide what they may do.
        return True

    def on_authentication_error(self, request, provider, error=None, exception=None,
                                extra_context=None) -> None:
        # A token endpoint that is down is an outage, not a tampered answer.
        if isinstance(exception, requests.ConnectionError | requests.Timeout):
            raise ImmediateHttpResponse(refusal(
                request, unreachable(provider.app, exception).reason, status=503))

    def pre_social_login(self, request: HttpRequest, sociallogin: SocialLogin) -> None:
        id_token = (sociallogin.account.extra_data or {}).get("id_token") or {}
        expected = (sociallogin.state or {}).get("nonce")
        if not expected or id_token.get("nonce") != expected:
            raise ImmediateHttpResponse(refusal(
                request, "The sign-in response did not belong to this sign-in attempt "
                "(nonce mismatch), so it was refused. Please sign in again."))
        claims = _claims(sociallogin)  # checked by PortalOIDCAdapter.complete_login
        email, verified = claims["email"], claims.get("email_verified") is True
        if not sociallogin.is_existing:
            owner = get_user_model().objects.filter(email__iexact=email).first()
            # Linking hands the account over: never an administrator's (break-glass) one.
            linkable = (settings.OIDC_LINK_BY_VERIFIED_EMAIL and verified and owner is not None
                        and not owner.is_staff and not owner.is_superuser)
            if owner is not None and not linkable:
                raise ImmediateHttpResponse(refusal(
                    request, f"An account with the email {email} already exists in the portal "
                    "and is not linked to your sign-in. Ask your administrator to link them."))
            if owner is not None:
                sociallogin.connect(request, owner)  # its password, if any, stays as it is
        if sociallogin.is_existing:
            self._sync(request, sociallogin.user, sociallogin)

    def populate_user(self, request: HttpRequest, sociallogin: SocialLogin, data: dict):
        # An IdP's name may carry a newline or an escape: it would break a mail header (the
        # invitation's subject names the inviter) or forge a log line.
        names = {key: one_line(value) for key, value in data.items()
                 if key in ("name", "first_name", "last_name") and isinstance(value, str)}
        return super().populate_user(request, sociallogin, {**data, **names})

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
    if app is None or not user.is_authenticated or not SocialAccount.objects.filter(
            user=user, provider=app.provider_id).exists():
        return ""
    try:
        provider = app.get_provider(request)
        end_session = provider.get_oauth2_adapter(request).openid_config.get(
            "end_session_endpoint", "")
    except Refused:
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
