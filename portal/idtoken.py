"""ID token verification: signature against the issuer's JWKS, then the claims.

allauth 65 skips the signature for ID tokens fetched from the token endpoint, which leaves
the portal trusting whatever the TLS peer (or anyone who can answer for it) says. We verify
every ID token ourselves and fail closed: no keys, no sign-in.
"""

import hashlib
import logging
from typing import Any

import jwt
import requests
from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

# Public-key signatures only: `none` proves nothing, and an HMAC keyed with the client secret
# can be forged by anyone who holds that secret (every replica, every backup of the portal).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


class IdTokenRefused(Exception):
    """The ID token is not one the portal can trust; `str(exc)` says why (for the log)."""


class KeysUnavailable(Exception):
    """The issuer's JWKS could not be had: the sign-in fails closed."""


def _cache_key(jwks_uri: str) -> str:
    return "oidc-jwks:" + hashlib.sha256(jwks_uri.encode()).hexdigest()


def _fetch_jwks(jwks_uri: str) -> list[dict[str, Any]]:
    try:
        response = requests.get(jwks_uri, timeout=settings.OIDC_HTTP_TIMEOUT_S)
        response.raise_for_status()
        keys = response.json()["keys"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise KeysUnavailable(f"JWKS at {jwks_uri}: {exc}") from exc
    if not isinstance(keys, list):
        raise KeysUnavailable(f"JWKS at {jwks_uri} has no list of keys")
    keys = [k for k in keys if isinstance(k, dict)]
    cache.set(_cache_key(jwks_uri), keys, settings.OIDC_JWKS_CACHE_S)
    return keys


def _find_key(keys: list[dict[str, Any]], kid: str | None, alg: str) -> jwt.PyJWK | None:
    candidates = [k for k in keys if k.get("use", "sig") == "sig"
                  and k.get("alg", alg) == alg and (kid is None or k.get("kid") == kid)]
    if len(candidates) != 1:  # none, or (without a kid) no way to tell which
        return None
    try:
        return jwt.PyJWK(candidates[0], algorithm=alg)
    except jwt.PyJWTError:  # e.g. an EC key for an RS256 header
        return None


def signing_key(jwks_uri: str, kid: str | None, alg: str) -> tuple[jwt.PyJWK, bool]:
    """The issuer's key for this token, and whether it came from the cache; an unknown kid
    refreshes the cache once (the IdP may have rotated its keys)."""
    keys = cache.get(_cache_key(jwks_uri))
    key = _find_key(keys, kid, alg) if keys is not None else None
    if key is not None:
        return key, True
    key = _find_key(_fetch_jwks(jwks_uri), kid, alg)
    if key is None:
        raise IdTokenRefused(f"no published {alg} key with kid {kid!r}")
    return key, False


def _may_refetch(jwks_uri: str) -> bool:
    """At most one refetch per OIDC_JWKS_REFETCH_S for a signature the cached key does not
    verify: a forger cannot make the portal hammer the IdP."""
    return cache.add(_cache_key(jwks_uri) + ":refetched", 1, settings.OIDC_JWKS_REFETCH_S)


def _decode(raw: str, key: Any, alg: str, client_id: str, issuer: str) -> dict[str, Any]:
    return jwt.decode(
        raw, key, algorithms=[alg], audience=client_id, issuer=issuer,
        leeway=settings.OIDC_CLOCK_SKEW_S,
        # iat and nbf in the future are refused by PyJWT (beyond the leeway).
        options={"require": ["exp", "iat", "iss", "aud", "sub"], "strict_aud": False},
    )


def verify_id_token(raw: str, *, jwks_uri: str, issuer: str, client_id: str,
                    client_secret: str) -> dict[str, Any]:
    """The ID token's claims once its signature, issuer, audience and times check out."""
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.PyJWTError as exc:
        raise IdTokenRefused(f"not a JWT: {exc}") from exc
    alg = header.get("alg")
    allowed = ASYMMETRIC_ALGORITHMS + (HMAC_ALGORITHMS if settings.OIDC_ALLOW_HMAC else ())
    if alg not in allowed:
        raise IdTokenRefused(f"signed with {alg!r}, which is not accepted")
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    cached = False
    key: Any = client_secret.encode()
    if alg not in HMAC_ALGORITHMS:
        key, cached = signing_key(jwks_uri, kid, alg)
    try:
        try:
            claims = _decode(raw, key, alg, client_id, issuer)
        except jwt.InvalidSignatureError:
            # An IdP may rotate its key under the same kid: the cached key then fails every
            # sign-in until the cache expires. Fetch once more, then refuse.
            if not (cached and _may_refetch(jwks_uri)):
                raise
            fresh = _find_key(_fetch_jwks(jwks_uri), kid, alg)
            if fresh is None:
                raise IdTokenRefused(f"no published {alg} key with kid {kid!r}") from None
            claims = _decode(raw, fresh, alg, client_id, issuer)
    except jwt.PyJWTError as exc:
        raise IdTokenRefused(str(exc)) from exc
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    # OIDC Core 3.1.3.7: with several audiences, the authorized party must be us.
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise IdTokenRefused(f"several audiences {audiences} and azp {azp!r}")
    return claims
