"""The test OpenID provider behaves like a real one, as seen by an OIDC client.

ID tokens are checked with PyJWT, the library allauth's openid_connect provider validates them
with, so a token these tests accept is one the portal accepts, and each misbehaviour trips the
same check there.
"""

import base64
import hashlib
import html
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import pytest
import requests

from tests.kit import oidc

CLIENT, SECRET = "portal", "portal-secret"
CALLBACK = "http://127.0.0.1:9/accounts/oidc/test/login/callback/"
PASSWORD = "wonderland"
ALICE = {"username": "alice", "password": PASSWORD, "sub": "u-alice", "groups": ["gpu"]}


@pytest.fixture(scope="module")
def provider() -> Iterator[oidc.Provider]:
    clients = [{"client_id": CLIENT, "client_secret": SECRET, "redirect_uris": [CALLBACK]}]
    with oidc.start(clients=clients, users=[ALICE]) as idp:
        yield idp


@pytest.fixture
def idp(provider: oidc.Provider) -> oidc.Provider:
    provider.reset()
    return provider


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(idp: oidc._Admin, browser: requests.Session, **extra: str) -> requests.Response:
    params = {"response_type": "code", "client_id": CLIENT, "redirect_uri": CALLBACK,
              "scope": "openid profile email", "state": "st-1", **extra}
    return browser.get(f"{idp.issuer}/authorize", params=params, allow_redirects=False)


def login(idp: oidc._Admin, browser: requests.Session | None = None, *, nonce: str = "n-1",
          password: str = PASSWORD) -> tuple[str, str]:
    """Fill in the login form like a person; return (code, verifier) from the redirect."""
    browser = browser or requests.Session()
    verifier, challenge = pkce()
    form = authorize(idp, browser, nonce=nonce, code_challenge=challenge,
                     code_challenge_method="S256")
    assert form.status_code == 200
    assert 'name="username"' in form.text and 'name="password"' in form.text
    assert ">Sign in</button>" in form.text
    done = submit(idp, browser, form, password)
    assert done.status_code == 302, done.text
    location = done.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["st-1"]
    return query["code"][0], verifier


def submit(idp: oidc._Admin, browser: requests.Session, form: requests.Response,
           password: str) -> requests.Response:
    action = re.search(r'action="([^"]+)"', form.text)
    assert action, form.text
    return browser.post(urljoin(idp.issuer, html.unescape(action[1])), allow_redirects=False,
                        data={"username": "alice", "password": password})


def exchange(idp: oidc._Admin, code: str, verifier: str | None, *, secret: str = SECRET,
             basic: bool = False) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    if verifier:
        data["code_verifier"] = verifier
    if not basic:
        data |= {"client_id": CLIENT, "client_secret": secret}
    return requests.post(f"{idp.issuer}/token", data=data,
                         auth=(CLIENT, secret) if basic else None)


def tokens(idp: oidc._Admin, **login_args: Any) -> dict[str, Any]:
    response = exchange(idp, *login(idp, **login_args))
    assert response.status_code == 200, response.text
    return response.json()


def verify(idp: oidc._Admin, id_token: str) -> dict[str, Any]:
    """Check signature, iss, aud and exp the way allauth does (PyJWT, keys from jwks_uri)."""
    jwks = jwt.PyJWKSet.from_dict(requests.get(f"{idp.issuer}/jwks").json())
    key = jwks[jwt.get_unverified_header(id_token)["kid"]]
    return jwt.decode(id_token, key.key, algorithms=["RS256"], audience=CLIENT,
                      issuer=idp.issuer, options={"require": ["exp", "iat", "iss", "aud", "sub"]})


def test_discovery_document(idp: oidc.Provider) -> None:
    doc = requests.get(idp.discovery_url).json()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", idp.issuer)
    assert doc["issuer"] == idp.issuer
    for name, path in [("authorization_endpoint", "/authorize"), ("token_endpoint", "/token"),
                       ("userinfo_endpoint", "/userinfo"), ("jwks_uri", "/jwks"),
                       ("end_session_endpoint", "/logout")]:
        assert doc[name] == idp.issuer + path
    assert doc["response_types_supported"] == ["code"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post", "client_secret_basic"}
    assert {"openid", "email", "profile"} <= set(doc["scopes_supported"])
    assert {"sub", "email", "email_verified", "groups", "nonce"} <= set(doc["claims_supported"])
    [key] = requests.get(doc["jwks_uri"]).json()["keys"]
    assert key["kty"] == "RSA" and key["kid"] and "d" not in key


def test_code_flow_with_pkce(idp: oidc.Provider) -> None:
    result = tokens(idp, nonce="n-42")
    assert result["token_type"] == "Bearer" and result["access_token"]
    assert jwt.get_unverified_header(result["id_token"])["alg"] == "RS256"
    claims = verify(idp, result["id_token"])
    assert claims["sub"] == "u-alice" and claims["nonce"] == "n-42"
    assert claims["groups"] == ["gpu"] and claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert claims["iat"] <= time.time() < claims["exp"]
    [auth_get, auth_post] = idp.requests("authorize")
    assert auth_get["user"] is None and auth_post["user"] == "alice"
    assert auth_post["code_challenge"] and auth_post["code_challenge_method"] == "S256"
    [token] = idp.requests("token")
    assert token["code_verifier"] and token["auth_method"] == "client_secret_post"
    assert token["status"] == 200


def test_client_secret_basic(idp: oidc.Provider) -> None:
    response = exchange(idp, *login(idp), basic=True)
    assert response.status_code == 200, response.text
    assert idp.requests("token")[-1]["auth_method"] == "client_secret_basic"


@pytest.mark.parametrize("verifier", ["w" * 43, None], ids=["wrong", "missing"])
def test_bad_code_verifier_refused(idp: oidc.Provider, verifier: str | None) -> None:
    code, _ = login(idp)
    response = exchange(idp, code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == ("invalid_grant" if verifier else "invalid_request")
    assert "id_token" not in response.json()


def test_code_is_single_use(idp: oidc.Provider) -> None:
    code, verifier = login(idp)
    assert exchange(idp, code, verifier).status_code == 200
    again = exchange(idp, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_code_expires(idp: oidc.Provider) -> None:
    idp.configure(code_lifetime=0)
    response = exchange(idp, *login(idp))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("basic", [False, True], ids=["post", "basic"])
def test_wrong_client_secret_refused(idp: oidc.Provider, basic: bool) -> None:
    response = exchange(idp, *login(idp), secret="guess", basic=basic)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_redirect_uri_must_be_registered_and_match(idp: oidc.Provider) -> None:
    stranger = authorize(idp, requests.Session(), redirect_uri="http://127.0.0.1:9/evil/")
    assert stranger.status_code == 400 and "Location" not in stranger.headers
    code, verifier = login(idp)
    idp.set_client(CLIENT, redirect_uris=[CALLBACK, "http://127.0.0.1:9/other/"])
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": "http://127.0.0.1:9/other/", "client_id": CLIENT,
            "client_secret": SECRET}
    response = requests.post(f"{idp.issuer}/token", data=data)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_wrong_password_shows_the_form_again(idp: oidc.Provider) -> None:
    browser = requests.Session()
    again = submit(idp, browser, authorize(idp, browser), "nope")
    assert again.status_code == 200 and "Invalid username or password" in again.text
    assert 'name="password"' in again.text and not browser.cookies


def test_pkce_can_be_required_and_only_s256(idp: oidc.Provider) -> None:
    idp.configure(require_pkce=True)
    bare = authorize(idp, requests.Session())
    assert bare.status_code == 302
    assert parse_qs(urlsplit(bare.headers["Location"]).query)["error"] == ["invalid_request"]
    plain = authorize(idp, requests.Session(), code_challenge="p" * 43,
                      code_challenge_method="plain")
    assert "error=invalid_request" in plain.headers["Location"]


@pytest.mark.parametrize(("mode", "error"), [
    ({"audience": "someone-else"}, jwt.InvalidAudienceError),
    ({"expired": True}, jwt.ExpiredSignatureError),
    ({"issuer": "https://evil.example"}, jwt.InvalidIssuerError),
    ({"nonce": "wrong"}, None),
], ids=["audience", "expired", "issuer", "nonce"])
def test_misbehave_spoils_only_the_next_id_token(
    idp: oidc.Provider, mode: dict[str, Any], error: type[Exception] | None
) -> None:
    idp.misbehave(**mode)
    spoiled = tokens(idp, nonce="n-7")["id_token"]
    if error is None:
        assert verify(idp, spoiled)["nonce"] == "wrong"
    else:
        with pytest.raises(error):
            verify(idp, spoiled)
    assert verify(idp, tokens(idp, nonce="n-8")["id_token"])["nonce"] == "n-8"


def test_misbehave_reset_and_unknown_modes(idp: oidc.Provider) -> None:
    idp.misbehave(expired=True)
    idp.misbehave()
    verify(idp, tokens(idp)["id_token"])
    with pytest.raises(oidc.AdminError):
        idp.misbehave(sparkle="bad")


def header_and_claims(id_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return (jwt.get_unverified_header(id_token),
            jwt.decode(id_token, options={"verify_signature": False}))


@pytest.mark.parametrize("mode", [
    {"alg": "none"}, {"alg": "HS256"}, {"key": "foreign"}, {"kid": "not-published"},
    {"signature": "garbage"},
], ids=["alg-none", "hs256-client-secret", "foreign-key", "unknown-kid", "garbage-signature"])
def test_hostile_signatures_fail_verification_against_the_jwks(
    idp: oidc.Provider, mode: dict[str, Any]
) -> None:
    idp.misbehave(**mode)
    spoiled = tokens(idp)["id_token"]
    header, claims = header_and_claims(spoiled)
    assert claims["sub"] == "u-alice"  # what an unverifying client would believe
    with pytest.raises((jwt.PyJWTError, KeyError)):
        verify(idp, spoiled)
    if mode == {"alg": "HS256"}:  # a real HMAC under the client secret, as an attacker forges
        assert jwt.decode(spoiled, SECRET, algorithms=["HS256"], audience=CLIENT)["sub"]
    if mode == {"alg": "none"}:
        assert header["alg"] == "none" and spoiled.endswith(".")


def test_claims_can_be_changed_or_removed_in_the_token_and_userinfo(idp: oidc.Provider) -> None:
    idp.misbehave(claims={"groups": 7, "exp": None, "email_verified": "true"},
                  userinfo={"sub": "u-mallory"}, audience=["portal", "other"], azp="other")
    result = tokens(idp)
    _, claims = header_and_claims(result["id_token"])
    assert claims["groups"] == 7 and "exp" not in claims and claims["email_verified"] == "true"
    assert claims["aud"] == ["portal", "other"] and claims["azp"] == "other"
    assert claims["sub"] == "u-alice"
    info = requests.get(f"{idp.issuer}/userinfo",
                        headers={"Authorization": f"Bearer {result['access_token']}"}).json()
    assert info["sub"] == "u-mallory" and info["groups"] == 7
    assert info["email_verified"] == "true"
    again = requests.get(f"{idp.issuer}/userinfo",
                         headers={"Authorization": f"Bearer {result['access_token']}"}).json()
    assert again["sub"] == "u-alice"  # spoiled once


def test_a_rotated_key_is_published_and_signs(idp: oidc.Provider) -> None:
    before = requests.get(f"{idp.issuer}/jwks").json()["keys"][0]["kid"]
    kid = idp.rotate_key()
    assert kid != before
    token = tokens(idp)["id_token"]
    assert jwt.get_unverified_header(token)["kid"] == kid
    assert verify(idp, token)["sub"] == "u-alice"
    assert [r["endpoint"] for r in idp.requests("jwks")] == ["jwks", "jwks"]


def test_discovery_can_lie_and_the_jwks_can_be_down(idp: oidc.Provider) -> None:
    idp.configure(discovery_issuer="https://evil.example", jwks_down=True)
    assert requests.get(idp.discovery_url).json()["issuer"] == "https://evil.example"
    assert requests.get(f"{idp.issuer}/jwks").status_code == 503
    idp.reset()
    assert requests.get(idp.discovery_url).json()["issuer"] == idp.issuer


def test_userinfo(idp: oidc.Provider) -> None:
    access = tokens(idp)["access_token"]
    info = requests.get(f"{idp.issuer}/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert info.status_code == 200
    assert info.json() == {"sub": "u-alice", "email": "alice@example.com",
                           "email_verified": True, "name": "alice",
                           "preferred_username": "alice", "groups": ["gpu"]}
    bad = requests.get(f"{idp.issuer}/userinfo", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "invalid_token" in bad.headers["WWW-Authenticate"]


def test_session_skips_the_form_until_logout(idp: oidc.Provider) -> None:
    browser = requests.Session()
    login(idp, browser)
    again = authorize(idp, browser, nonce="n-2")
    assert again.status_code == 302 and again.headers["Location"].startswith(CALLBACK)
    assert "code=" in again.headers["Location"]
    done = f"{CALLBACK.rsplit('/accounts', 1)[0]}/signed-out/"
    out = browser.get(f"{idp.issuer}/logout", params={"post_logout_redirect_uri": done},
                      allow_redirects=False)
    assert out.status_code == 302 and out.headers["Location"] == done
    assert not browser.cookies.get(f"oidc_session_{idp.port}")
    assert authorize(idp, browser).status_code == 200
    assert "error=login_required" in authorize(idp, browser, prompt="none").headers["Location"]
    foreign = browser.get(f"{idp.issuer}/logout", allow_redirects=False,
                          params={"post_logout_redirect_uri": "https://evil.example/"})
    assert foreign.status_code == 400


def test_runtime_changes_show_in_the_next_token(idp: oidc.Provider) -> None:
    idp.set_user("alice", groups=["gpu", "admins"], email="a@corp.example")
    claims = verify(idp, tokens(idp)["id_token"])
    assert claims["groups"] == ["gpu", "admins"] and claims["email"] == "a@corp.example"
    idp.configure(groups_claim="roles")
    claims = verify(idp, tokens(idp)["id_token"])
    assert claims["roles"] == ["gpu", "admins"] and "groups" not in claims
    idp.reset()
    assert verify(idp, tokens(idp)["id_token"])["groups"] == ["gpu"]


def test_process_mode() -> None:
    clients = [{"client_id": CLIENT, "client_secret": SECRET, "redirect_uris": [CALLBACK]}]
    remote = oidc.spawn(clients=clients, users=[ALICE], token_lifetime=120)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", remote.issuer)
        assert requests.get(remote.discovery_url).json()["issuer"] == remote.issuer
        remote.set_user("alice", groups=["remote"])
        remote.misbehave(audience="someone-else")
        with pytest.raises(jwt.InvalidAudienceError):
            verify(remote, tokens(remote)["id_token"])
        claims = verify(remote, tokens(remote)["id_token"])
        assert claims["groups"] == ["remote"] and claims["exp"] - claims["iat"] == 120
        assert remote.requests("authorize")[-1]["code_challenge_method"] == "S256"
    finally:
        assert remote.terminate() == 0
