"""The portal's JSON API as the `gpupaas` command sees it: where it is (saved by `login`),
and one HTTP client that turns problem documents into `ApiProblem` with an exit code."""

import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from . import __version__

# Exit codes a script can rely on (also in `gpupaas --help` and the README).
OK = 0
ERROR = 1  # anything else: a server error, an unexpected answer, cancelled at a prompt
USAGE = 2  # wrong options or arguments (click's own)
UNAUTHENTICATED = 3  # not logged in, or the token is not valid (revoked, expired)
FORBIDDEN = 4  # a read-only token writing, no access to the portal
NOT_FOUND = 5  # no such instance, notebook or service (or not yours)
REFUSED = 6  # the portal refused the request: invalid input, quota, a conflict
FAILED = 7  # what --wait watched ended failed (the reason is printed)
UNREACHABLE = 8  # the portal could not be reached
TIMED_OUT = 9  # --wait gave up (--timeout)
RATE_LIMITED = 10  # too many requests with this token (429)

EXIT_CODES = {
    OK: "success", ERROR: "any other error, or cancelled", USAGE: "usage error",
    UNAUTHENTICATED: "not logged in, or the token is not valid",
    FORBIDDEN: "not allowed (e.g. a read-only token writing)",
    NOT_FOUND: "no such instance, notebook or service",
    REFUSED: "refused: invalid input, quota, conflict",
    FAILED: "the instance or notebook failed", UNREACHABLE: "the portal could not be reached",
    TIMED_OUT: "timed out waiting", RATE_LIMITED: "rate limited (try again later)",
}
BY_STATUS = {401: UNAUTHENTICATED, 403: FORBIDDEN, 404: NOT_FOUND, 409: REFUSED, 422: REFUSED,
             400: REFUSED, 429: RATE_LIMITED}


@dataclass
class ApiProblem(Exception):
    """A refusal from the portal (an RFC 9457 problem document), or a failure to reach it."""

    detail: str
    code: int = ERROR
    status: int | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.detail


# How the portal's certificate is checked, from --ca-file / --insecure (or GPUPAAS_CA_FILE /
# GPUPAAS_INSECURE); a CA file given at login is saved with the URL and used after.
TLS: dict[str, Any] = {"ca_file": "", "insecure": False}


def tls_context(ca_file: str = "", insecure: bool = False) -> ssl.SSLContext:
    """The system's CAs, or the portal's own CA from a PEM file; no check with `insecure`."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ApiProblem(f"Cannot use the CA file {ca_file}: {exc}.", USAGE) from exc


def config_path() -> Path:
    """~/.config/gpupaas/config.json on Linux (the platform's config folder elsewhere)."""
    return Path(click.get_app_dir("gpupaas")) / "config.json"


def load_config() -> dict[str, str]:
    """The saved URL and token; GPUPAAS_URL and GPUPAAS_TOKEN override them (for CI)."""
    saved: dict[str, str] = {}
    path = config_path()
    if path.exists():
        saved = json.loads(path.read_text())
    url = os.environ.get("GPUPAAS_URL") or saved.get("url", "")
    token = os.environ.get("GPUPAAS_TOKEN") or saved.get("token", "")
    return {"url": url.rstrip("/"), "token": token,
            "ca_file": TLS["ca_file"] or saved.get("ca_file", "")}


def save_config(url: str, token: str, ca_file: str = "") -> Path:
    """Write the URL, token and CA file readable by the user alone (mode 0600, from the
    start)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        saved = {"url": url.rstrip("/"), "token": token}
        if ca_file:
            saved["ca_file"] = str(Path(ca_file).resolve())
        json.dump(saved, f)
    path.chmod(0o600)  # an older file keeps its mode on O_TRUNC
    return path


class Api:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 ca_file: str = "") -> None:
        if not url or not token:
            raise ApiProblem("Not logged in: run `gpupaas login` first (or set GPUPAAS_URL "
                             "and GPUPAAS_TOKEN).", UNAUTHENTICATED)
        self.url = url.rstrip("/")
        self.tls = tls_context(ca_file or TLS["ca_file"], TLS["insecure"])
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v1", timeout=timeout, verify=self.tls,
            headers={"Authorization": f"Bearer {token}",
                     "User-Agent": f"gpupaas-cli/{__version__}"},
        )

    @classmethod
    def from_config(cls) -> "Api":
        config = load_config()
        return cls(config["url"], config["token"], ca_file=config["ca_file"])

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiProblem(f"Cannot reach the portal at {self.url}: {exc}.", UNREACHABLE) from exc
        if response.status_code == 204:
            return None
        if response.is_success:
            return response.json()
        try:
            document = response.json()
        except ValueError:
            document = {}
        if not isinstance(document, dict):
            document = {}
        detail = document.get("detail") or f"The portal answered {response.status_code}."
        if response.status_code == 429 and response.headers.get("Retry-After"):
            detail = f"{detail} (Retry-After: {response.headers['Retry-After']} s)"
        raise ApiProblem(str(detail), BY_STATUS.get(response.status_code, ERROR),
                         response.status_code, list(document.get("errors") or []), document)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def all_pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items, page = [], 1
        while True:
            answer = self.get(path, page=page, page_size=100, **params)
            items.extend(answer["items"])
            if page >= answer["pages"]:
                return items
            page += 1

    def instance_named(self, name: str) -> dict[str, Any]:
        """An instance by NAME (yours first) or OWNER/NAME (a shared one)."""
        owner, _, bare = name.rpartition("/")
        found = self.get("/instances", name=bare)["items"] if _valid_name(bare) else []
        if owner:
            found = [i for i in found if i["owner"] == owner]
        elif len(found) > 1:
            found = [i for i in found if not i["shared"]] or found
        if not found:
            raise ApiProblem(f"No instance named {name}.", NOT_FOUND, 404)
        if len(found) > 1:
            owners = ", ".join(f"{i['owner']}/{i['name']}" for i in found)
            raise ApiProblem(f"Several instances are named {name}: say which, as one of "
                             f"{owners}.", REFUSED)
        return found[0]


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 40 and all(c.isascii() and (c.isalnum() or c == "-")
                                                  for c in name) and name == name.lower()
