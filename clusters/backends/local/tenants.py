"""Who a local notebook runs as.

When the portal runs as root (a service on a lab box), every workspace gets its own
unprivileged OS user, created on demand as The Littlest JupyterHub does: its sandboxes,
servers, kernels and shells run as that user, so the kernel's permission checks keep tenants
apart and away from the portal's files. Anywhere else the OS cannot do that, and the portal
says so: "single-user mode", notebooks run as the portal's own user.
"""

import contextlib
import fcntl
import logging
import os
import pwd
import re
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from ..base import BackendError

log = logging.getLogger(__name__)

# Written into the account's comment field with this portal's install id, so the portal
# never adopts an account it did not create (a prefix collision with a real user, or another
# portal on the machine, would otherwise hand their files over).
COMMENT = "gpupaas {install} workspace"
# What accounts made before names carried the install id say (gpw-12): see adopt_legacy.
LEGACY_COMMENT = "gpupaas workspace"
# The whole name (prefix, install id, workspace id) must also fit useradd's 32 characters.
PREFIX_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,19}$")
INSTALL_RE = re.compile(r"^[0-9a-f]{6}$")


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


def _control() -> Path:
    """The sandbox root's root-only folder (also the backend's: see LocalBackend)."""
    path = Path(settings.LOCAL_SANDBOX_ROOT) / ".portal"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@contextlib.contextmanager
def _accounts_locked() -> Iterator[None]:
    """One account change at a time on this portal (workers, the web, the reconcile pass)."""
    with open(_control() / ".accounts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def install_id(*, create: bool = True) -> str:
    """This portal's id on this machine: six hex digits, made on first use and kept in the
    sandbox root's root-only control folder. It is part of every OS user's name, so two
    portals on one machine never share `gpw-1`; it moves with the sandboxes it owns.
    Without `create`, "" where none was made yet (so no account either). Written whole
    before it appears (a link to a finished file), so no reader sees half of it."""
    path = Path(settings.LOCAL_SANDBOX_ROOT) / ".portal" / ".install-id"
    if not path.exists():
        if not create:
            return ""
        draft = _control() / f".install-id.{os.getpid()}.{secrets.token_hex(4)}"
        draft.write_text(secrets.token_hex(3) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: theirs stands
        finally:
            draft.unlink()
    text = path.read_text().strip()
    if not INSTALL_RE.match(text):
        raise BackendError(f"{path} does not hold an install id (six hex digits).",
                           detail=repr(text[:40]))
    return text


def _prefix() -> str:
    prefix = settings.LOCAL_USER_PREFIX
    if not PREFIX_RE.match(prefix):
        raise BackendError(f"LOCAL_USER_PREFIX {prefix!r} is not a safe OS user name prefix "
                           "(a lower-case letter, then a-z, 0-9, - and _).")
    return prefix


def username(workspace: str) -> str:
    """The workspace's OS user: the prefix, this portal's install id, the workspace id
    (gpw-3fa9c1-12); at most useradd's 32 characters."""
    if not workspace.isdigit() or not workspace.isascii():
        raise BackendError(f"Workspace id {workspace!r} is not a number.")
    name = f"{_prefix()}{install_id()}-{workspace}"
    if len(name) > 32:
        raise BackendError(f"The OS user name {name} is longer than 32 characters: shorten "
                           "LOCAL_USER_PREFIX.")
    return name


def comment() -> str:
    return COMMENT.format(install=install_id())


def ensure_tenant(workspace: str, sandbox: Path | None = None) -> Tenant | None:
    """The workspace's OS user, created if missing; None in single-user mode. An account
    from before install ids that owns one of this portal's sandboxes is adopted instead of
    replaced (see _adopt_legacy); a sandbox another account owns is refused in words."""
    if not isolated():
        return None
    name = username(workspace)
    with _accounts_locked():
        tenant = _adopt_legacy(name, workspace) or ensure_os_user(name, comment())
    if sandbox is not None:
        try:
            owner = sandbox.stat().st_uid
        except FileNotFoundError:
            return tenant
        if owner not in (tenant.uid, 0):
            raise BackendError(
                f"The sandbox {sandbox} belongs to uid {owner}, not to {tenant.name}: another "
                "portal on this machine shared its OS user, or this one made it before it "
                f"ran as root. Give it to {tenant.name} (chown -R {tenant.name}: {sandbox}) "
                "and start it again.")
    return tenant


def _adopt_legacy(name: str, workspace: str) -> Tenant | None:
    """Accounts made before names carried the install id are `<prefix><workspace>` with the
    old comment, and own their sandboxes' files. Where one owns a sandbox of this portal's,
    it is renamed with its group (same uid: every file stays theirs). usermod refuses while
    a process of its runs (a notebook started before the upgrade): the account serves as it
    is until a later call finds it idle. None when there is nothing to adopt."""
    try:
        pwd.getpwnam(name)
        return None  # already adopted, or made fresh
    except KeyError:
        pass
    legacy = f"{_prefix()}{workspace}"
    try:
        entry = pwd.getpwnam(legacy)
    except KeyError:
        return None
    if entry.pw_gecos != LEGACY_COMMENT or not any(
            place.lstat().st_uid == entry.pw_uid for place in _sandboxes()):
        return None
    renamed = subprocess.run(["usermod", "--login", name, "--comment", comment(), legacy],
                             capture_output=True, text=True)
    if renamed.returncode != 0:
        log.info("the OS user %s keeps its name for now: %s", legacy, renamed.stderr.strip())
        return Tenant(name=legacy, uid=entry.pw_uid, gid=entry.pw_gid)
    regrouped = subprocess.run(["groupmod", "--new-name", name, legacy], capture_output=True,
                               text=True)
    if regrouped.returncode != 0:
        log.warning("the group %s was not renamed: %s", legacy, regrouped.stderr.strip())
    log.info("renamed the OS user %s to %s (uid %s)", legacy, name, entry.pw_uid)
    return Tenant(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def ensure_os_user(name: str, marker: str) -> Tenant:
    """An unprivileged OS user the portal created (root only), created if missing; `marker`
    goes in its comment field and must be there on an existing one. Its uid and gid are
    above any this portal ever gave (a high-water mark in the control folder): an account
    removed since never hands its uid, and whatever still carries it, to a new tenant."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        mark = _control() / ".uid-high-water"
        high = int(mark.read_text()) if mark.exists() else 0
        floor = [] if not high else ["-K", f"UID_MIN={high + 1}", "-K", f"GID_MIN={high + 1}"]
        result = subprocess.run(
            # No home of its own (its sandboxes are its homes), no login shell, its own group.
            ["useradd", *floor, "--no-create-home", "--home-dir", "/nonexistent", "--shell",
             "/usr/sbin/nologin", "--user-group", "--comment", marker, name],
            capture_output=True, text=True,
        )
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise BackendError(
                f"Could not create the OS user {name}.", detail=result.stderr
            ) from None
        mark.write_text(str(max(high, entry.pw_uid, entry.pw_gid)))
    if entry.pw_gecos != marker:
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
    """OS users any portal created with the configured prefix (tests clean up with this)."""
    prefix = settings.LOCAL_USER_PREFIX
    return [e.pw_name for e in pwd.getpwall()
            if e.pw_name.startswith(prefix) and e.pw_gecos.startswith("gpupaas ")]


@dataclass(frozen=True)
class Account:
    """One of this portal's OS users, and what keeps it ("" once nothing does)."""
    name: str
    uid: int
    workspace: str
    kept_by: str


def accounts(live_workspaces: Callable[[], set[str]]) -> list[Account]:
    """This portal's OS users (its prefix, its install id and its comment). One stays while
    its workspace exists, or while a sandbox (a quarantined one too) or an entry in the
    shared temporary folders is its: an administrator may still want them as that user.
    The accounts are listed before the workspaces are read, so one made for a workspace
    created in between is never taken for stale."""
    install = install_id(create=False)
    if not install:
        return []
    named = re.compile(rf"^{re.escape(_prefix())}{install}-([0-9]+)$")
    marker = COMMENT.format(install=install)  # read once, not per account
    mine = [(e, m.group(1)) for e in pwd.getpwall()
            if (m := named.match(e.pw_name)) and e.pw_gecos == marker]
    if not mine:
        return []
    live = live_workspaces()
    # Looking through the sandboxes and temporary folders only when some workspace is gone.
    held = _uids_holding() if any(ws not in live for _, ws in mine) else {}
    return [Account(name=e.pw_name, uid=e.pw_uid, workspace=ws,
                    kept_by="its workspace" if ws in live else held.get(e.pw_uid, ""))
            for e, ws in mine]


def remove_stale_accounts(live_workspaces: Callable[[], set[str]]) -> list[str]:
    """Remove this portal's OS users that nothing keeps (see accounts), after stopping every
    process still running as one (a daemon its notebook left behind); their names. Their
    uids are never given again (see ensure_os_user)."""
    removed = []
    with _accounts_locked():
        for account in accounts(live_workspaces):
            if account.kept_by:
                continue
            _kill_all(account.uid)
            result = subprocess.run(["userdel", account.name], capture_output=True, text=True)
            if result.returncode == 0:
                log.info("removed the OS user %s (uid %s): its workspace is gone",
                         account.name, account.uid)
                removed.append(account.name)
            else:
                log.warning("could not remove the OS user %s: %s", account.name,
                            result.stderr.strip())
    return removed


def _kill_all(uid: int) -> None:
    """SIGKILL every process of `uid`, from a child that becomes it: kill(-1) reaches all of
    them at once, so one forking as fast as it can is caught too (a scan of /proc is not)."""
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then out
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(200):
                os.kill(-1, signal.SIGKILL)
                time.sleep(0.01)
        except ProcessLookupError:
            os._exit(0)  # nothing of its is left
        except BaseException:
            os._exit(2)
        os._exit(1)
    os.waitpid(pid, 0)


def _sandboxes() -> list[Path]:
    """Every sandbox under the root (each cluster's folder), quarantined ones included."""
    base = Path(settings.LOCAL_SANDBOX_ROOT)
    if not base.is_dir():
        return []
    return [place for cluster in base.iterdir()
            if cluster.is_dir() and not cluster.name.startswith(".")
            for place in cluster.iterdir()]


def _uids_holding() -> dict[int, str]:
    """Which uids own a sandbox, or an entry in the shared temporary folders."""
    held: dict[int, str] = {}
    for place in _sandboxes():
        with contextlib.suppress(OSError):
            held.setdefault(place.lstat().st_uid, f"the sandbox {place}")
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    held.setdefault(entry.stat(follow_symlinks=False).st_uid, entry.path)
    return held


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
    without a credential: a Redis that lets anyone in (sessions, the Celery broker, the
    shells' channel layer), a RabbitMQ broker taking its `guest` login (which it allows from
    this machine), a PostgreSQL that lets its role or `postgres` in without a password
    (trust authentication, over TCP or its Unix socket). Each in words, with what to change;
    the portal refuses to start in isolated mode while the list is not empty."""
    problems = []
    seen: set[str] = set()
    for name in REDIS_SETTINGS:
        url = getattr(settings, name, "") or ""
        parts = urlsplit(url)
        if url.startswith(("redis://", "rediss://")):
            where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
        elif url.startswith("unix://"):
            where = parts.path
        elif url.startswith(("amqp://", "pyamqp://")) and name == "CELERY_BROKER_URL":
            if _amqp_takes_guest(parts.hostname or "127.0.0.1", parts.port or 5672):
                problems.append(
                    f"RabbitMQ at {parts.hostname or '127.0.0.1'}:{parts.port or 5672} "
                    f"({name}) takes the guest login from this machine, so any tenant's "
                    "notebook could queue the portal's tasks. Delete the guest user "
                    "(rabbitmqctl delete_user guest) and give the portal a user of its own.")
            continue
        else:
            continue
        if where in seen:
            continue
        seen.add(where)
        if _redis_lets_in(where, tls=url.startswith("rediss://")):
            problems.append(
                f"Redis at {where} ({name}) answers without a password, so any "
                "tenant's notebook could read sessions and queue the portal's tasks. Give it "
                "an ACL user with a password (ACL SETUSER portal on >SECRET ~* &* +@all, then "
                "ACL SETUSER default off) and put it in the URL: "
                "redis://portal:SECRET@<host>:<port>/0.")
    db = settings.DATABASES["default"]
    if "postgresql" in db["ENGINE"]:
        problems += _postgres_problems(db)
    return problems


def _postgres_problems(db: dict) -> list[str]:
    host, port = db.get("HOST") or "", db.get("PORT") or 5432
    places = [host] if host else []
    for other in ("127.0.0.1", host if host.startswith("/") else POSTGRES_SOCKET_DIR):
        if other not in places and (not other.startswith("/") or Path(other).is_dir()):
            places.append(other)
    roles = dict.fromkeys([db.get("USER") or "postgres", "postgres"])
    for place in places:
        for role in roles:
            if _postgres_lets_in(place, port, role, db.get("NAME") or "postgres"):
                shown = place if place.startswith("/") else f"{place}:{port}"
                return [
                    f"PostgreSQL at {shown} lets the role {role} in without a password "
                    "(trust authentication), so any tenant's notebook could read and change "
                    "the portal's database. Set scram-sha-256 for its host and local lines in "
                    "pg_hba.conf, give the role a password and put it in DATABASE_URL."]
    return []


def _redis_lets_in(where: str, *, tls: bool) -> bool:
    """Whether a client with no credential gets anything but an authentication error."""
    try:
        if where.startswith("/"):
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(3)
            conn.connect(where)
        else:
            host, _, port = where.rpartition(":")
            conn = socket.create_connection((host, int(port)), timeout=3)
        with conn:
            if tls:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                conn = context.wrap_socket(conn, server_hostname=where.rpartition(":")[0])
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            answer = conn.recv(64)
    except OSError:
        return False  # not reachable from here: not reachable from a tenant either
    return bool(answer) and not answer.startswith((b"-NOAUTH", b"-WRONGPASS", b"-ERR AUTH"))


def _amqp_takes_guest(host: str, port: int) -> bool:
    from kombu import Connection

    try:
        with Connection(f"amqp://guest:guest@{host}:{port}//", connect_timeout=3) as conn:
            conn.connect()
    except Exception:  # refused, not reachable: either way, not a way in
        return False
    return True


def _postgres_lets_in(host: str, port: int | str, user: str, dbname: str) -> bool:
    import psycopg

    try:
        # No password at all: neither the URL's, nor PGPASSWORD, nor a password file.
        psycopg.connect(host=host, port=port, user=user, dbname=dbname, password="",
                        passfile="/nonexistent/.pgpass", connect_timeout=3).close()
    except psycopg.Error as exc:
        # Past authentication, a missing database is still a way in.
        return "does not exist" in str(exc) and "database" in str(exc)
    return True
