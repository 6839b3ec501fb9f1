"""Who a local notebook runs as.

When the portal runs as root (a service on a lab box), every workspace gets its own
unprivileged OS user, created on demand as The Littlest JupyterHub does: its sandboxes,
servers, kernels and shells run as that user, so the kernel's permission checks keep tenants
apart and away from the portal's files. Anywhere else the OS cannot do that, and the portal
says so: "single-user mode", notebooks run as the portal's own user.
"""

import os
import pwd
import re
import socket
import ssl
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from ..base import BackendError

# Written into the account's comment field, so the portal never adopts an account it did
# not create (a prefix collision with a real user would otherwise hand their files over).
COMMENT = "gpupaas workspace"
PREFIX_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,19}$")


@dataclass(frozen=True)
class Tenant:
    name: str
    uid: int
    gid: int


def isolated() -> bool:
    """True when each workspace gets its own OS user (the portal runs as root)."""
    mode = settings.LOCAL_ISOLATION
    if mode == "single-user":
        return False
    if mode == "users" and os.geteuid() != 0:
        raise BackendError("LOCAL_ISOLATION=users needs the portal to run as root.")
    return os.geteuid() == 0


def mode_line() -> str:
    """One line for the administrator and the instance page."""
    try:
        separate = isolated()
    except BackendError as exc:
        return exc.message
    if separate:
        return "Each workspace's notebooks run as its own OS user."
    return "Single-user mode: notebooks run as you (the portal's OS user)."


def username(workspace: str) -> str:
    prefix = settings.LOCAL_USER_PREFIX
    if not PREFIX_RE.match(prefix):
        raise BackendError(f"LOCAL_USER_PREFIX {prefix!r} is not a safe OS user name prefix.")
    if not workspace.isdigit():
        raise BackendError(f"Workspace id {workspace!r} is not a number.")
    return f"{prefix}{workspace}"


def ensure_tenant(workspace: str) -> Tenant | None:
    """The workspace's OS user, created if missing; None in single-user mode."""
    if not isolated():
        return None
    return ensure_os_user(username(workspace))


def shell_username(slot: int) -> str:
    """The OS user of one browser-shell slot (`gpw-sh3`): a kubectl shell runs as the user
    of the slot it holds, so two open shells never share files or processes."""
    prefix = settings.LOCAL_USER_PREFIX
    if not PREFIX_RE.match(prefix):
        raise BackendError(f"LOCAL_USER_PREFIX {prefix!r} is not a safe OS user name prefix.")
    return f"{prefix}sh{int(slot)}"


def ensure_os_user(name: str) -> Tenant:
    """An unprivileged OS user the portal created (root only), created if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            # No home of its own (its sandboxes are its homes), no login shell, its own group.
            ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
             "/usr/sbin/nologin", "--user-group", "--comment", COMMENT, name],
            capture_output=True, text=True,
        )
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise BackendError(
                f"Could not create the OS user {name}.", detail=result.stderr
            ) from None
    if entry.pw_gecos != COMMENT:
        raise BackendError(f"The OS user {name} exists and was not created by the portal.")
    return Tenant(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def own(path: Path, tenant: Tenant | None, mode: int) -> None:
    """Give a folder to its tenant (or keep it the portal's), with `mode`."""
    if tenant is not None:
        os.chown(path, tenant.uid, tenant.gid)
    path.chmod(mode)


def traversable(path: Path) -> None:
    """Others may pass through the folder to what they own, but not list it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o711)


def portal_users() -> list[str]:
    """OS users the portal created with the configured prefix (tests clean up with this)."""
    prefix = settings.LOCAL_USER_PREFIX
    return [e.pw_name for e in pwd.getpwall()
            if e.pw_name.startswith(prefix) and e.pw_gecos == COMMENT]


def protect_portal_files() -> None:
    """Tenants may pass through the var folder to their sandboxes and environments, but not
    list it or read the database, the secret key or the broker's messages."""
    var = Path(settings.VAR_DIR)
    if not isolated() or not var.is_dir():
        return
    var.chmod(0o711)
    shared = {Path(settings.LOCAL_SANDBOX_ROOT).resolve(), Path(settings.LOCAL_ENV_ROOT).resolve()}
    for entry in var.iterdir():
        if entry.is_symlink() or entry.resolve() in shared:
            continue
        entry.chmod(stat.S_IMODE(entry.stat().st_mode) & 0o700)


# --- what tenants could reach of the portal's -------------------------------------------------

REDIS_SETTINGS = ("CELERY_BROKER_URL", "CACHE_URL", "CHANNEL_LAYER_URL")
POSTGRES_SOCKET_DIR = "/var/run/postgresql"


def open_services() -> list[str]:
    """The portal's services that any local process, a tenant's kernel included, could use
    without a credential: a Redis that answers PING to anyone (sessions, the Celery broker,
    the shells' channel layer), a PostgreSQL that lets its role in without a password (trust
    authentication, over TCP or its Unix socket). Each in words, with what to change; the
    portal refuses to start in isolated mode while the list is not empty."""
    problems = []
    seen: set[tuple[str, int]] = set()
    for name in REDIS_SETTINGS:
        url = getattr(settings, name, "") or ""
        if not url.startswith(("redis://", "rediss://")):
            continue
        parts = urlsplit(url)
        where = (parts.hostname or "127.0.0.1", parts.port or 6379)
        if where in seen:
            continue
        seen.add(where)
        if _redis_answers_anyone(*where, tls=url.startswith("rediss://")):
            problems.append(
                f"Redis at {where[0]}:{where[1]} ({name}) answers without a password, so any "
                "tenant's notebook could read sessions and queue the portal's tasks. Give it "
                "an ACL user with a password (ACL SETUSER portal on >SECRET ~* &* +@all, then "
                "ACL SETUSER default off) and put it in the URL: "
                f"redis://portal:SECRET@{where[0]}:{where[1]}/0.")
    db = settings.DATABASES["default"]
    if "postgresql" in db["ENGINE"]:
        host = db.get("HOST") or ""
        places = [host] if host else []
        socket_dir = host if host.startswith("/") else POSTGRES_SOCKET_DIR
        if socket_dir not in places and Path(socket_dir).is_dir():
            places.append(socket_dir)
        for place in places:
            if _postgres_lets_in(place, db.get("PORT") or 5432, db.get("USER") or "postgres",
                                 db.get("NAME") or "postgres"):
                shown = place if place.startswith("/") else f"{place}:{db.get('PORT') or 5432}"
                problems.append(
                    f"PostgreSQL at {shown} lets the role {db.get('USER') or 'postgres'} in "
                    "without a password (trust authentication), so any tenant's notebook "
                    "could read and change the portal's database. Set scram-sha-256 for "
                    "its host and local lines in pg_hba.conf, give the role a password and "
                    "put it in DATABASE_URL.")
                break
    return problems


def _redis_answers_anyone(host: str, port: int, *, tls: bool) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3) as raw:
            conn: socket.socket = raw
            if tls:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                conn = context.wrap_socket(raw, server_hostname=host)
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False  # not reachable from here: not reachable from a tenant either


def _postgres_lets_in(host: str, port: int | str, user: str, dbname: str) -> bool:
    import psycopg

    try:
        # No password at all: neither the URL's, nor PGPASSWORD, nor a password file.
        psycopg.connect(host=host, port=port, user=user, dbname=dbname, password="",
                        passfile="/dev/null", connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True
