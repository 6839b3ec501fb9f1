"""What the portal can tell about its own credential: whose it is and when it expires.

ServiceAccount tokens are JWTs. The portal reads their claims (without verifying the
signature: the API server does that) to name its own ServiceAccount, which it binds to the
manager role in each namespace it creates, and to warn before the token expires.
"""

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

# What the portal must be allowed cluster-wide, per profile kind: (verb, group, resource,
# name), checked with SelfSubjectAccessReview by Test connection. Inside its own namespaces it
# binds itself to gpupaas-portal-manager, which the `bind` rights below make possible.
NEEDS: dict[str, list[tuple[str, str, str, str]]] = {
    "namespace": [
        ("create", "", "namespaces", ""), ("delete", "", "namespaces", ""),
        ("list", "", "namespaces", ""), ("list", "", "nodes", ""),
        ("list", "", "resourcequotas", ""), ("list", "networking.k8s.io", "networkpolicies", ""),
        ("list", "networking.k8s.io", "ingresses", ""), ("list", "apps", "deployments", ""),
        ("list", "", "persistentvolumeclaims", ""),
        ("list", "discovery.k8s.io", "endpointslices", ""),
        ("list", "", "serviceaccounts", ""),
        ("create", "rbac.authorization.k8s.io", "rolebindings", ""),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "gpupaas-portal-manager"),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "admin"),
    ],
    "vcluster": [("list", "helm.toolkit.fluxcd.io", "helmreleases", ""),
                 ("list", "source.toolkit.fluxcd.io", "helmrepositories", "")],
    "dedicated": [("list", "cluster.x-k8s.io", "clusters", "")],
}


@dataclass(frozen=True)
class TokenClaims:
    subject: str = ""
    expires_at: float | None = None

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) of a ServiceAccount token's owner."""
        parts = self.subject.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return parts[2], parts[3]
        return None


def token_claims(token: str) -> TokenClaims | None:
    """The claims of a JWT bearer token; None for anything else (a client certificate, a
    static token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    exp = payload.get("exp")
    return TokenClaims(subject=str(payload.get("sub", "")),
                       expires_at=float(exp) if isinstance(exp, int | float) else None)


def bearer_token(configuration: Any) -> str:
    """The bearer token a kubernetes client Configuration sends, or ''."""
    value = (getattr(configuration, "api_key", None) or {}).get("authorization", "")
    if not value and hasattr(configuration, "auth_settings"):
        value = (configuration.auth_settings().get("BearerToken") or {}).get("value", "")
    return value.removeprefix("Bearer ").strip()


def expiry_in_words(claims: TokenClaims | None, now: float | None = None) -> str:
    if claims is None:
        return "credential: not a ServiceAccount token (expiry unknown)"
    if claims.expires_at is None:
        return "credential: no expiry"
    left = claims.expires_at - (time.time() if now is None else now)
    if left <= 0:
        return "credential: EXPIRED"
    days = int(left // 86400)
    if days >= 1:
        return f"credential: expires in {days} day{'s' if days != 1 else ''}"
    hours = int(left // 3600)
    if hours >= 1:
        return f"credential: expires in {hours} hour{'s' if hours != 1 else ''}"
    minutes = max(int(left // 60), 1)
    return f"credential: expires in {minutes} minute{'s' if minutes != 1 else ''}"
