"""Who is calling: a personal access token (Authorization: Bearer gpa_…) or the browser's
session (with Django's CSRF check for writes). Either way the portal's own access rules
apply: a role, or instances shared with the user."""

import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import APIKeyCookie, HttpBearer

from workspaces.services import client_ip

from . import ratelimit, services
from .problems import ApiError

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
NO_ACCESS = ("Your account has not been given access to the portal. Ask your administrator "
             "to add you to a group with access.")
READ_ONLY = ("This token is read-only. Create a read-and-write token on the API tokens page "
             "to make changes.")


def _admit(request: HttpRequest, access: services.PortalAccess) -> None:
    request.portal_role = access.role
    request.shared_only = access.shared_only


def _revokes_itself(request: HttpRequest) -> bool:
    """`DELETE /api/v1/me/token`: any token may end itself (`gpupaas logout`)."""
    return request.method == "DELETE" and request.path.rstrip("/").endswith("/api/v1/me/token")


class BearerToken(HttpBearer):
    """A personal access token. A token that is not valid is refused (401), never passed on
    to the session check."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        address = client_ip(request)
        # Guessing is slowed per address: past the budget of refused tokens, no token is
        # even looked at until the window ends.
        guesses, who = ratelimit.budget("API_INVALID_TOKEN_LIMIT"), f"bad-token:{address}"
        if guesses and (wait := ratelimit.spent(who, guesses)):
            raise ApiError(429, ratelimit.too_many(wait, "refused tokens from your address"),
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        try:
            row, access = services.authenticate_api_token(plain=token.strip(),
                                                          ip_address=address)
        except services.TokenRefused as exc:
            if guesses:
                ratelimit.consume(who, guesses)
            raise ApiError(401, exc.message,
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
        if request.method not in SAFE_METHODS and not row.can_write and not _revokes_itself(
                request):
            raise ApiError(403, READ_ONLY)
        request.user, request.api_token = row.user, row
        _admit(request, access)
        return row.user


class PortalSession(APIKeyCookie):
    """The browser's session: what the interactive docs use. Writes need the CSRF token
    (the X-CSRFToken header), as the pages' forms do."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None  # no session: a 401, not a CSRF complaint
        try:
            return super()._get_key(request)
        except HttpError as exc:
            raise ApiError(403, "CSRF check failed: send the csrftoken cookie's value in the "
                           "X-CSRFToken header.") from exc

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        if not request.user.is_authenticated:
            return None
        access = services.portal_access(request.user)
        if access.refusal:
            raise ApiError(403, NO_ACCESS)
        request.api_token = None
        _admit(request, access)
        return request.user
