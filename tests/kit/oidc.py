"""oidc: a small, real OpenID Connect provider on loopback, for testing the portal's SSO.

The portal signs people in through django-allauth's ``openid_connect`` provider (code flow with
PKCE). A mock of allauth's internals would prove little, so this is an identity provider over real
HTTP that the portal, ``requests`` and a browser talk to as they would to Keycloak. The protocol
is Authlib's (code grant, PKCE, client authentication, OAuth errors); ID tokens are RS256 JWTs
signed with joserfc, Authlib's own JOSE library. On top, a JSON admin API lets a test change
users, clients and settings between logins, spoil the next ID token, and read a request log.

In a test::

    from tests.kit import oidc

    with oidc.start(clients=[{"client_id": "portal", "client_secret": "s3cret",
                              "redirect_uris": [callback]}],
                    users=[{"username": "alice", "password": "pw", "groups": ["gpu"]}]) as idp:
        idp.set_user("alice", groups=["gpu", "admins"])
        idp.misbehave(audience="someone-else")   # only the next ID token
        assert idp.requests("authorize")[-1]["code_challenge_method"] == "S256"

As a process: ``python -m tests.kit.oidc --port 18003 --config idp.json``; ``spawn()`` does that
and returns the same helpers, spoken over HTTP.

Hostile modes (``misbehave``, ``configure``, ``rotate_key``) play an IdP, or whoever answers
for it, that forges signatures, bends claims, lies in discovery or userinfo, or loses its keys.

Deliberate simplifications: one signing key at a time, no refresh tokens, no consent screen,
userinfo is not filtered by scope, redirect URIs match exactly, and ``/logout`` only redirects
to a ``post_logout_redirect_uri`` on the origin of some registered redirect URI. allauth 65
neither sends nor checks a nonce, so ``misbehave(nonce=...)`` only trips clients that do.
"""

from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
import hashlib
import hmac
import html
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar, cast
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, InvalidRequestError, OAuth2Payload, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.util import create_half_hash
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

__all__ = ["Client", "Provider", "RemoteProvider", "User", "main", "spawn", "start"]

ROOT = Path(__file__).resolve().parents[2]
SCOPES = ["openid", "profile", "email", "groups"]
AUTH_METHODS = ["client_secret_post", "client_secret_basic"]
MISBEHAVIOURS = {"nonce", "audience", "expired", "issuer", "alg", "key", "kid", "signature",
                 "azp", "claims", "userinfo"}
SETTINGS = {"groups_claim", "token_lifetime", "code_lifetime", "require_pkce",
            "discovery_issuer", "jwks_down"}
Response = tuple[int, Any, list[tuple[str, str]]]
T = TypeVar("T")


@dataclass
class User:
    """A person who can sign in; empty fields get defaults derived from the username."""

    username: str
    password: str = "password"
    sub: str = ""
    email: str = ""
    email_verified: bool = True
    name: str = ""
    groups: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sub = self.sub or self.username
        self.email = self.email or f"{self.username}@example.com"
        self.name = self.name or self.username
        self.groups = [str(g) for g in self.groups]


@dataclass
class Client(ClientMixin):
    """A confidential relying party; redirect URIs are compared as exact strings."""

    client_id: str
    client_secret: str
    redirect_uris: list[str] = field(default_factory=list)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class _Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    username: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time


class _Payload(OAuth2Payload):
    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    @property
    def data(self) -> dict[str, str]:
        return {k: v[0] for k, v in self._values.items()}

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._values


class _Request(OAuth2Request):
    """One HTTP request as Authlib sees it; parameters are query and form merged, as in Flask."""

    def __init__(self, method: str, uri: str, headers: Message, query: dict[str, list[str]],
                 form: dict[str, list[str]]) -> None:
        super().__init__(method, uri, headers=headers)
        self.query, self._form = query, form
        merged = {k: list(v) for k, v in query.items()}
        for key, values in form.items():
            merged.setdefault(key, []).extend(values)
        self.payload = _Payload(merged)

    @property
    def args(self) -> dict[str, str]:
        return {k: v[0] for k, v in self.query.items()}

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in self._form.items()}


class _CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: _AuthServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.server.provider._save_code(_Code(
            code=code, client_id=request.client.client_id,
            redirect_uri=data.get("redirect_uri") or request.client.get_default_redirect_uri(),
            scope=request.scope, username=request.user.username, nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=int(time.time()), expires_at=0.0))

    def query_authorization_code(self, code: str, client: Client) -> _Code | None:
        return self.server.provider._take_code(code, client.client_id)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        """Nothing to do: ``query_authorization_code`` already consumed it, even on failure."""

    def authenticate_user(self, authorization_code: _Code) -> User | None:
        return self.server.provider._users.get(authorization_code.username)


class _PKCE(CodeChallenge):
    """S256 only; optionally required of every client, not just public ones."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def __init__(self, provider: Provider) -> None:
        super().__init__(required=True)
        self.provider = provider

    def validate_code_challenge(self, grant: _CodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only 'code_challenge_method=S256' is supported.")
        if self.provider.require_pkce and not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge'.")
        super().validate_code_challenge(grant, redirect_uri)


class _OpenIDCode(OpenIDCode):
    """Builds the ID token itself so that a test can make the next one wrong on purpose."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return self.provider._nonce_pending(request.payload.client_id, nonce)

    def encode_id_token(self, token: dict[str, Any], request: OAuth2Request) -> str:
        p, code = self.provider, request.authorization_code
        bad = p._take_misbehaviour()
        now = int(time.time())
        iat = now - p.token_lifetime - 60 if bad.get("expired") else now
        claims: dict[str, Any] = {
            "iss": bad.get("issuer", p.issuer),
            "aud": bad.get("audience", request.client.client_id),
            "iat": iat, "exp": iat + p.token_lifetime, "auth_time": code.auth_time,
            "at_hash": create_half_hash(token["access_token"], "RS256").decode(),
            **p._claims(request.user),
        }
        if code.nonce or "nonce" in bad:
            claims["nonce"] = bad.get("nonce", code.nonce)
        if "azp" in bad:
            claims["azp"] = bad["azp"]
        claims = _override(claims, bad.get("claims", {}))
        return _sign(claims, bad, p._key, request.client.client_secret)


def _override(claims: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`claims` with `changes` applied; a change to None removes the claim."""
    merged = {**claims, **changes}
    return {k: v for k, v in merged.items() if changes.get(k, "") is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(claims: dict[str, Any], bad: Mapping[str, Any], key: RSAKey, secret: str) -> str:
    """The ID token as a well-behaved provider signs it, or spoiled as `bad` says:
    alg="none" (unsigned), alg="HS256" (an HMAC keyed with the client secret), key="foreign"
    (a key the JWKS does not hold, under the published kid), kid= (another key id),
    signature="garbage" (random bytes in place of the signature)."""
    header = {"alg": "RS256", "kid": bad.get("kid", key.kid), "typ": "JWT"}
    if bad.get("alg") in ("none", "HS256"):
        header = {"alg": bad["alg"], "typ": "JWT"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = b"" if bad["alg"] == "none" else hmac.new(
            secret.encode(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"
    if bad.get("key") == "foreign":
        key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
    token = jwt.encode(header, claims, key)
    if bad.get("signature") == "garbage":
        token = token.rsplit(".", 1)[0] + "." + _b64(secrets.token_bytes(256))
    return token


class _AuthServer(AuthorizationServer):
    def __init__(self, provider: Provider) -> None:
        super().__init__(scopes_supported=SCOPES)
        self.provider = provider
        self.register_token_generator("default", self._bearer)
        self.register_grant(_CodeGrant, [_PKCE(provider), _OpenIDCode(provider)])

    def _bearer(self, grant_type: str, client: Client, user: User | None = None,
                scope: str | None = None, expires_in: int | None = None,
                include_refresh_token: bool = True) -> dict[str, Any]:
        return {"token_type": "Bearer", "access_token": secrets.token_urlsafe(32),
                "expires_in": self.provider.token_lifetime, "scope": scope or ""}

    def query_client(self, client_id: str) -> Client | None:
        return self.provider._clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.provider._save_token(token, request.user.username)

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


def _as(cls: type[T], value: T | Mapping[str, Any]) -> T:
    return value if isinstance(value, cls) else cls(**cast(Mapping[str, Any], value))


class _Admin:
    """The test helpers, written once over the admin API; subclasses say how to reach it."""

    issuer: str

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return int(self.issuer.rsplit(":", 1)[1])

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def set_user(self, username: str, **fields: Any) -> dict[str, Any]:
        """Create the user, or change only the given fields of an existing one."""
        return self._call("PUT", f"/_admin/users/{username}", fields)

    def remove_user(self, username: str) -> None:
        self._call("DELETE", f"/_admin/users/{username}")

    def set_client(self, client_id: str, **fields: Any) -> dict[str, Any]:
        """Create the client, or change only the given fields (client_secret, redirect_uris)."""
        return self._call("PUT", f"/_admin/clients/{client_id}", fields)

    def remove_client(self, client_id: str) -> None:
        self._call("DELETE", f"/_admin/clients/{client_id}")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change groups_claim, token_lifetime, code_lifetime or require_pkce."""
        return self._call("PUT", "/_admin/settings", settings)

    def misbehave(self, **modes: Any) -> dict[str, Any]:
        """Spoil the next ID token: nonce=, audience= (a string or a list), issuer=, azp=
        (values used), expired=True; alg="none" or "HS256" (keyed with the client secret),
        key="foreign", kid="...", signature="garbage"; claims={...} changes the claims of the
        ID token and the next userinfo answer, userinfo={...} only the latter (None removes
        a claim)."""
        return self._call("POST", "/_admin/misbehave", modes)

    def rotate_key(self, *, same_kid: bool = False) -> str:
        """Sign with a new key from now on; returns its kid (with `same_kid`, the old one's:
        an IdP that rotates its key under the same kid)."""
        return self._call("POST", "/_admin/rotate-key", {"same_kid": same_kid})["kid"]

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        query = f"?{urlencode({'endpoint': endpoint})}" if endpoint else ""
        return self._call("GET", f"/_admin/requests{query}")

    def reset(self) -> None:
        """Back to the start configuration; sessions, codes, tokens and the log are dropped."""
        self._call("POST", "/_admin/reset")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        raise NotImplementedError


class AdminError(RuntimeError):
    """The admin API refused a change (unknown field, bad value, unknown user)."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    provider: Provider


class Provider(_Admin):
    """The provider itself, served from a background thread of this process."""

    groups_claim: str
    token_lifetime: int
    code_lifetime: int
    require_pkce: bool
    discovery_issuer: str  # '' is the truth; anything else is a discovery document that lies
    jwks_down: bool  # the JWKS endpoint answers 503

    def __init__(self, port: int = 0, *, clients: Iterable[Client | Mapping[str, Any]] = (),
                 users: Iterable[User | Mapping[str, Any]] = (), groups_claim: str = "groups",
                 token_lifetime: int = 3600, code_lifetime: int = 60,
                 require_pkce: bool = False, discovery_issuer: str = "",
                 jwks_down: bool = False) -> None:
        self._lock = threading.RLock()
        self._key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
        self._key.ensure_kid()
        self._initial_clients = {c.client_id: c for c in [_as(Client, x) for x in clients]}
        self._initial_users = {u.username: u for u in [_as(User, x) for x in users]}
        self._initial_settings = {"groups_claim": groups_claim, "token_lifetime": token_lifetime,
                                  "code_lifetime": code_lifetime, "require_pkce": require_pkce,
                                  "discovery_issuer": discovery_issuer, "jwks_down": jwks_down}
        self._reset_state()
        self._server = _AuthServer(self)
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.provider = self
        self.issuer = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._cookie = f"oidc_session_{self.port}"
        self._thread: threading.Thread | None = None

    def _reset_state(self) -> None:
        with self._lock:
            self._clients = copy.deepcopy(self._initial_clients)
            self._users = copy.deepcopy(self._initial_users)
            for name, value in self._initial_settings.items():
                setattr(self, name, value)
            self._codes: dict[str, _Code] = {}
            self._tokens: dict[str, tuple[str, float]] = {}
            self._sessions: dict[str, str] = {}
            self._log: list[dict[str, Any]] = []
            self._misbehaviour: dict[str, Any] = {}
            self._userinfo_spoil: dict[str, Any] = {}

    def serve_in_background(self) -> Self:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="oidc", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        url = urlsplit(path)
        status, result = self._admin(method, url.path, parse_qs(url.query), body or {})
        if status >= 400:
            raise AdminError(f"{method} {path}: {status} {result}")
        return result

    # -- state, for the grant classes ------------------------------------------------------

    def _save_code(self, code: _Code) -> None:
        with self._lock:
            code.expires_at = time.time() + self.code_lifetime
            self._codes[code.code] = code

    def _take_code(self, code: str, client_id: str) -> _Code | None:
        with self._lock:
            found = self._codes.pop(code, None)
        if found and found.client_id == client_id and found.expires_at > time.time():
            return found
        return None

    def _nonce_pending(self, client_id: str | None, nonce: str) -> bool:
        with self._lock:
            return any(c.client_id == client_id and c.nonce == nonce for c in self._codes.values())

    def _save_token(self, token: dict[str, Any], username: str) -> None:
        with self._lock:
            self._tokens[token["access_token"]] = username, time.time() + token["expires_in"]

    def _take_misbehaviour(self) -> dict[str, Any]:
        """The spoils for this ID token; those for userinfo wait for the next userinfo call."""
        with self._lock:
            bad, self._misbehaviour = self._misbehaviour, {}
            self._userinfo_spoil = {**bad.get("claims", {}), **bad.get("userinfo", {})}
            return bad

    def _rotate_key(self, same_kid: bool = False) -> None:
        """Sign from now on with a new key (a new kid, or the old one's); the JWKS publishes
        only the new one."""
        with self._lock:
            kid = self._key.kid
            self._key = RSAKey.generate_key(2048, parameters={
                "use": "sig", "alg": "RS256", **({"kid": kid} if same_kid else {})})
            self._key.ensure_kid()

    def _claims(self, user: User) -> dict[str, Any]:
        return {"sub": user.sub, "email": user.email, "email_verified": user.email_verified,
                "name": user.name, "preferred_username": user.username,
                self.groups_claim: list(user.groups)}

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append({"time": time.time(), **entry})

    # -- HTTP ------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Message, body: bytes) -> Response:
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path.startswith("/_admin/"):
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                return 400, {"error": "body is not JSON"}, []
            status, result = self._admin(method, url.path, query, data)
            return status, result, []
        form = {}
        if "x-www-form-urlencoded" in headers.get("Content-Type", ""):
            form = parse_qs(body.decode(), keep_blank_values=True)
        request = _Request(method, self.issuer + target, headers, query, form)
        route = {"/.well-known/openid-configuration": self._discovery, "/jwks": self._jwks,
                 "/authorize": self._authorize, "/token": self._token,
                 "/userinfo": self._userinfo, "/logout": self._logout}.get(url.path)
        allowed = ("POST",) if url.path == "/token" else ("GET", "POST")
        if route is None or method not in allowed:
            return 404, {"error": "not_found"}, []
        return route(request)

    def _jwks(self, request: _Request) -> Response:
        self._record({"endpoint": "jwks", "status": 503 if self.jwks_down else 200})
        if self.jwks_down:
            return 503, {"error": "temporarily_unavailable"}, []
        return 200, KeySet([self._key]).as_dict(private=False), []

    def _discovery(self, request: _Request) -> Response:
        endpoints = {"authorization_endpoint": "authorize", "token_endpoint": "token",
                     "userinfo_endpoint": "userinfo", "jwks_uri": "jwks",
                     "end_session_endpoint": "logout"}
        self._record({"endpoint": "discovery"})
        return 200, {
            "issuer": self.discovery_issuer or self.issuer,
            **{name: f"{self.issuer}/{path}" for name, path in endpoints.items()},
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": SCOPES,
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                                 "at_hash", "email", "email_verified", "name",
                                 "preferred_username", self.groups_claim],
        }, []

    def _session_user(self, request: _Request) -> User | None:
        morsel = SimpleCookie(request.headers.get("Cookie", "")).get(self._cookie)
        with self._lock:
            username = self._sessions.get(morsel.value) if morsel else None
            return self._users.get(username) if username else None

    def _authorize(self, request: _Request) -> Response:
        user, cookie = self._session_user(request), None
        try:
            grant = self._server.get_consent_grant(request, end_user=user)
        except OAuth2Error as error:
            response = self._server.handle_error_response(request, error)
        else:
            if request.method == "POST":
                user = self._check_password(request.form)
                if user is not None:
                    cookie = secrets.token_urlsafe(24)
                    with self._lock:
                        self._sessions[cookie] = user.username
            if user is None or (request.method == "GET" and grant.prompt == "login"):
                failed = request.method == "POST"
                response = 200, self._login_page(request, failed), []
            else:
                response = self._server.create_authorization_response(
                    request, grant_user=user, grant=grant)
        if cookie:
            response[2].append(("Set-Cookie", f"{self._cookie}={cookie}; Path=/; HttpOnly; "
                                              "SameSite=Lax"))
        data = request.payload.data
        self._record({"endpoint": "authorize", "method": request.method, "status": response[0],
                      **{k: data.get(k) for k in (
                          "client_id", "redirect_uri", "response_type", "scope", "state",
                          "nonce", "prompt", "code_challenge", "code_challenge_method")},
                      "user": user.username if user else None})
        return response

    def _check_password(self, form: dict[str, str]) -> User | None:
        with self._lock:
            user = self._users.get(form.get("username", ""))
        password = form.get("password", "").encode()
        if user and secrets.compare_digest(password, user.password.encode()):
            return user
        return None

    def _login_page(self, request: _Request, failed: bool) -> str:
        action = html.escape("/authorize?" + urlencode(request.query, doseq=True))
        client = html.escape(request.payload.client_id or "")
        error = '<p role="alert">Invalid username or password.</p>' if failed else ""
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Test IdP</title></head>"
            f"<body><h1>Test identity provider</h1><p>Continue to {client}</p>{error}"
            f'<form method="post" action="{action}">'
            '<label>Username <input name="username" autocomplete="username" autofocus></label>'
            '<label>Password <input name="password" type="password" '
            'autocomplete="current-password"></label>'
            '<button type="submit">Sign in</button></form></body></html>'
        )

    def _token(self, request: _Request) -> Response:
        response = self._server.create_token_response(request)
        form, basic = request.form, request.headers.get("Authorization", "")
        method = ("client_secret_basic" if basic.lower().startswith("basic ")
                  else "client_secret_post" if "client_secret" in form else None)
        body = response[1] if isinstance(response[1], dict) else {}
        self._record({"endpoint": "token", "method": "POST", "status": response[0],
                      "grant_type": form.get("grant_type"), "client_id": form.get("client_id"),
                      "auth_method": method, "redirect_uri": form.get("redirect_uri"),
                      "code_verifier": "code_verifier" in form, "error": body.get("error")})
        return response

    def _userinfo(self, request: _Request) -> Response:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        with self._lock:
            username, expires_at = self._tokens.get(value, ("", 0.0))
            user = self._users.get(username) if scheme.lower() == "bearer" else None
        if user is None or expires_at < time.time():
            self._record({"endpoint": "userinfo", "status": 401})
            return 401, {"error": "invalid_token"}, [
                ("WWW-Authenticate", 'Bearer error="invalid_token"')]
        with self._lock:
            spoil, self._userinfo_spoil = self._userinfo_spoil, {}
        self._record({"endpoint": "userinfo", "status": 200, "user": user.username})
        return 200, _override(self._claims(user), spoil), [("Cache-Control", "no-store")]

    def _logout(self, request: _Request) -> Response:
        morsel = SimpleCookie(request.headers.get("Cookie", "")).get(self._cookie)
        target = request.payload.data.get("post_logout_redirect_uri")
        with self._lock:
            if morsel:
                self._sessions.pop(morsel.value, None)
            origins = {urlsplit(u)[:2] for c in self._clients.values() for u in c.redirect_uris}
        self._record({"endpoint": "logout", "post_logout_redirect_uri": target})
        clear = ("Set-Cookie", f"{self._cookie}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
        if not target:
            return 200, "<!doctype html><title>Signed out</title><p>Signed out.</p>", [clear]
        if urlsplit(target)[:2] not in origins:
            return 400, {"error": "invalid_request",
                         "error_description": "post_logout_redirect_uri is not registered"}, []
        state = request.payload.data.get("state")
        location = target + (("&" if "?" in target else "?") + urlencode({"state": state})
                             if state else "")
        return 302, "", [clear, ("Location", location)]

    # -- admin API -------------------------------------------------------------------------

    def _admin(self, method: str, path: str, query: dict[str, list[str]],
               data: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")[1:]
        try:
            with self._lock:
                return self._admin_locked(method, parts, query, data)
        except (TypeError, ValueError, AttributeError) as error:
            return 400, {"error": str(error)}

    def _admin_locked(self, method: str, parts: list[str], query: dict[str, list[str]],
                      data: Any) -> tuple[int, Any]:
        match method, parts:
            case "GET", ["requests"]:
                endpoint = query.get("endpoint", [None])[0]
                return 200, [e for e in self._log if endpoint in (None, e["endpoint"])]
            case "POST", ["reset"]:
                self._reset_state()
                return 200, {}
            case "POST", ["rotate-key"]:
                self._rotate_key(bool((data or {}).get("same_kid")))
                return 200, {"kid": self._key.kid}
            case "POST", ["misbehave"]:
                if set(data) - MISBEHAVIOURS:
                    raise ValueError(f"unknown modes {sorted(set(data) - MISBEHAVIOURS)}")
                self._misbehaviour = {k: v for k, v in data.items() if v not in (None, False)}
                return 200, self._misbehaviour
            case "PUT", ["settings"]:
                if set(data) - SETTINGS:
                    raise ValueError(f"unknown settings {sorted(set(data) - SETTINGS)}")
                for name, value in data.items():
                    setattr(self, name, type(getattr(self, name))(value))
                return 200, {name: getattr(self, name) for name in SETTINGS}
            case "PUT", ["users", username]:
                old = self._users.get(username)
                base = dataclasses.asdict(old) if old else {}
                self._users[username] = User(**{**base, **data, "username": username})
                return 200, dataclasses.asdict(self._users[username])
            case "PUT", ["clients", client_id]:
                old = self._clients.get(client_id)
                base = dataclasses.asdict(old) if old else {}
                self._clients[client_id] = Client(**{**base, **data, "client_id": client_id})
                return 200, dataclasses.asdict(self._clients[client_id])
            case "DELETE", ["users" | "clients" as kind, name]:
                table: dict[str, Any] = self._users if kind == "users" else self._clients
                return (200, {}) if table.pop(name, None) else (404, {"error": "not found"})
        return 404, {"error": f"no admin route {method} /_admin/{'/'.join(parts)}"}


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def _dispatch(self) -> None:
        provider = self.server.provider
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            status, payload, headers = provider.handle(self.command, self.path, self.headers, body)
        except Exception as error:  # a test server must answer, not hang up
            status, payload, headers = 500, {"error": "server_error", "detail": repr(error)}, []
        if isinstance(payload, dict | list):
            data, kind = json.dumps(payload).encode(), "application/json"
        else:
            data, kind = str(payload).encode(), "text/html; charset=utf-8"
        self.send_response(status)
        if not any(name.lower() == "content-type" for name, _ in headers):
            self.send_header("Content-Type", kind)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log in the admin API is what tests read."""


def start(port: int = 0, *, clients: Iterable[Client | Mapping[str, Any]] = (),
          users: Iterable[User | Mapping[str, Any]] = (), **settings: Any) -> Provider:
    """Serve a provider from this process; port 0 picks a free one. Stop it with ``.stop()``."""
    return Provider(port, clients=clients, users=users, **settings).serve_in_background()


class RemoteProvider(_Admin):
    """A provider in a child process (see ``spawn``), driven over its admin API."""

    def __init__(self, process: subprocess.Popen[str], issuer: str, config: Path) -> None:
        self.process, self.issuer, self._config = process, issuer, config

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.issuer + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AdminError(f"{method} {path}: {error.code} {error.read()!r}") from error

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM the child and return its exit code (0 when it shut down cleanly)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        finally:
            self._config.unlink(missing_ok=True)
            if self.process.stdout:
                self.process.stdout.close()

    def stop(self) -> None:
        self.terminate()


def spawn(port: int = 0, *, clients: Iterable[Client | Mapping[str, Any]] = (),
          users: Iterable[User | Mapping[str, Any]] = (), timeout: float = 20,
          **settings: Any) -> RemoteProvider:
    """Run ``python -m tests.kit.oidc`` with a temporary config; return once it listens."""
    config = {"clients": [dataclasses.asdict(_as(Client, c)) for c in clients],
              "users": [dataclasses.asdict(_as(User, u)) for u in users], **settings}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    path = Path(handle.name)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.kit.oidc", "--port", str(port), "--config", str(path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stdout, lines = process.stdout, []
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    prefix = "oidc listening on "
    if not lines or not lines[0].startswith(prefix):
        process.kill()
        process.wait()
        path.unlink(missing_ok=True)
        raise RuntimeError(f"oidc provider did not start: {lines!r}, exit {process.returncode}")
    return RemoteProvider(process, lines[0][len(prefix):].strip(), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kit.oidc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config", type=Path, help="JSON: clients, users and settings")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text()) if args.config else {}
    provider = Provider(args.port, **config)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    print(f"oidc listening on {provider.issuer}", flush=True)
    try:
        provider._httpd.serve_forever(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        provider.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
