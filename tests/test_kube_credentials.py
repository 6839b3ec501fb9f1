"""What Test connection says about the portal's token, read from the token itself."""

import base64
import json

from clusters.backends.kubernetes.credentials import expiry_in_words, token_claims

NOW = 1_800_000_000


def jwt(**claims) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.signature"


def test_a_service_account_token_names_its_account_and_its_expiry():
    claims = token_claims(jwt(sub="system:serviceaccount:gpupaas-system:gpupaas-portal",
                              exp=NOW + 3 * 86400 + 60))
    assert claims.service_account == ("gpupaas-system", "gpupaas-portal")
    assert expiry_in_words(claims, now=NOW) == "credential: expires in 3 days"
    assert expiry_in_words(claims, now=NOW + 3 * 86400) == "credential: expires in 1 minute"
    assert expiry_in_words(claims, now=NOW + 4 * 86400) == "credential: EXPIRED"


def test_a_token_secret_never_expires_and_other_credentials_are_not_guessed_at():
    secret_token = token_claims(jwt(sub="system:serviceaccount:ops:portal"))
    assert expiry_in_words(secret_token, now=NOW) == "credential: no expiry"
    assert token_claims("static-token") is None
    assert token_claims(jwt(sub="alice")).service_account is None
    assert expiry_in_words(None) == "credential: not a ServiceAccount token (expiry unknown)"
