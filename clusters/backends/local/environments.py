"""Python environments for local notebooks: one per profile and package list, built with uv.

An environment is built once, in the background, by a tracked process, then shared (read
only) by every notebook of that profile. It is a plain virtual environment on an
interpreter tenants may run, without the portal's packages: a notebook can only import what
its profile lists.
"""

import fcntl
import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from django.conf import settings
from packaging.requirements import InvalidRequirement, Requirement

from ..base import BackendError

# The local backend runs every notebook with JupyterLab; a profile need not list it.
JUPYTERLAB = "jupyterlab>=4.2,<5"


@dataclass(frozen=True)
class Environment:
    profile: str
    packages: tuple[str, ...]
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def failure_file(self) -> Path:
        return self.path.with_name(self.path.name + ".failed")

    @property
    def log_file(self) -> Path:
        return self.path.with_name(self.path.name + ".log")

    @property
    def build_file(self) -> Path:
        return self.path.with_name(self.path.name + ".building")

    def ready(self) -> bool:
        return self.python.exists()

    def failure(self) -> str:
        try:
            return self.failure_file.read_text()
        except FileNotFoundError:
            return ""


def parse_packages(text: str) -> list[str]:
    """One requirement a line (comments with #); raises ValueError with the bad line."""
    packages = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # Options (-e, --index-url ...) would let a package list reach outside itself.
        if line.startswith("-"):
            raise ValueError(f"{line!r}: options are not allowed, only package requirements.")
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            raise ValueError(f"{line!r} is not a package requirement: {exc}") from None
        packages.append(line)
    return packages


def with_jupyterlab(packages: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    named = {Requirement(p).name.lower() for p in packages}
    return tuple(packages) if "jupyterlab" in named else (JUPYTERLAB, *packages)


def interpreter() -> str:
    """A Python every tenant may run: the setting, else the portal's own base interpreter
    when every folder above it is open to others, else the system's python3."""
    if settings.LOCAL_ENV_PYTHON:
        return settings.LOCAL_ENV_PYTHON
    base = Path(sys._base_executable).resolve()
    if all(p.stat().st_mode & stat.S_IXOTH for p in base.parents):
        return str(base)
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if not system:
        raise BackendError("No Python that notebook users may run: set LOCAL_ENV_PYTHON.")
    return system


@functools.cache
def index_options() -> tuple[str, ...]:
    """pip's index and find-links settings (pip.conf, PIP_*), which uv does not read itself."""
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    options = []
    flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
             "find-links": "--find-links"}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        flag = flags.get(key.split(".", 1)[-1])
        if flag:
            for item in value.strip().strip("'\"").split():
                options += [flag, item]
    return tuple(options)


def environment(profile: str, packages: tuple[str, ...], *, jupyter: bool = True
                ) -> Environment:
    """A notebook profile's environment (JupyterLab added), or a service's (`jupyter=False`:
    exactly its packages)."""
    profile = profile or "default"
    packages = with_jupyterlab(packages) if jupyter else tuple(packages)
    python = interpreter()
    digest = hashlib.sha256(json.dumps([python, sorted(packages)]).encode()).hexdigest()[:12]
    return Environment(profile, packages, Path(settings.LOCAL_ENV_ROOT) / f"{profile}-{digest}")


def missing_commands(requires: tuple[str, ...]) -> str:
    """Says which commands a profile needs that notebooks here would not find ("" if none)."""
    # Looked up on the PATH notebooks get (jupyter.clean_environment), not the portal's.
    missing = [c for c in requires if not shutil.which(c, path="/usr/local/bin:/usr/bin:/bin")]
    return f"needs {', '.join(missing)}, which this machine does not have." if missing else ""


def problem(profile: str, packages: tuple[str, ...], requires: tuple[str, ...], *,
            jupyter: bool = True) -> str:
    """Why a profile's environment cannot be had on this machine ("" when it can)."""
    missing = missing_commands(requires)
    if missing:
        return missing
    failure = environment(profile, packages, jupyter=jupyter).failure()
    return f"its environment could not be built here: {failure}" if failure else ""


def build_command(env: Environment) -> list[str]:
    """One shell line that builds into a scratch folder and moves it in place when done, so
    a half-built environment is never used."""
    from uv import find_uv_bin

    scratch = f"{env.path}.tmp"
    script = (
        'set -e; uv="$1"; python="$2"; scratch="$3"; final="$4"; shift 4; '
        # Relocatable: its scripts (a service's `tensorboard`) still run once it is moved.
        'rm -rf "$scratch"; "$uv" venv --quiet --relocatable --python "$python" "$scratch"; '
        # (a service with no packages of its own gets a bare environment)
        + ('"$uv" pip install --python "$scratch/bin/python" "$@"; ' if env.packages else "")
        # Readable and runnable by the tenants, writable by none of them.
        + 'chmod -R a+rX,go-w "$scratch"; mv "$scratch" "$final"'
    )
    return ["sh", "-c", script, "build-environment", find_uv_bin(), interpreter(), scratch,
            str(env.path), *index_options(), *env.packages]


def _builder_alive(env: Environment) -> bool:
    try:
        cmdline = psutil.Process(int(env.build_file.read_text())).cmdline()
    except (OSError, ValueError, psutil.Error):
        return False
    return f"{env.path}.tmp" in cmdline


def _finish(env: Environment, returncode: int) -> None:
    env.build_file.unlink(missing_ok=True)
    if returncode != 0 or not env.ready():
        tail = env.log_file.read_text(errors="replace")[-2000:] if env.log_file.exists() else ""
        lines = [line for line in tail.splitlines() if line.strip()]
        env.failure_file.write_text("\n".join(lines[-6:]) or f"exit status {returncode}")


def start_build(env: Environment) -> bool:
    """Start building unless it is ready or being built; True while a build runs."""
    if env.ready():
        return False
    root = Path(settings.LOCAL_ENV_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # tenants run from here
    # One builder per environment, whichever worker asks first.
    with open(env.path.with_name(env.path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _start_build_locked(env)


def _start_build_locked(env: Environment) -> bool:
    if env.ready():
        return False
    if _builder_alive(env):
        return True
    if env.build_file.exists():  # its builder died: record how it ended
        _finish(env, 1)
    if env.failure():
        return False
    with open(env.log_file, "wb") as log:
        process = subprocess.Popen(
            build_command(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "UV_NO_PROGRESS": "1"},
        )
    env.build_file.write_text(str(process.pid))
    _reap_later(process, env)
    return True


def _reap_later(process: subprocess.Popen, env: Environment) -> None:
    """Record the outcome when the builder ends, even if nobody asks in between."""
    import threading

    def wait() -> None:
        _finish(env, process.wait())

    threading.Thread(target=wait, daemon=True).start()


def build_now(env: Environment, *, rebuild: bool = False) -> float:
    """Build in the foreground (manage.py prepare_environments); returns the seconds taken."""
    if rebuild:
        shutil.rmtree(env.path, ignore_errors=True)
    env.failure_file.unlink(missing_ok=True)
    started = time.monotonic()
    if env.ready():
        return 0.0
    start_build(env)
    while not env.ready() and not env.failure():
        time.sleep(0.2)
    if env.failure():
        raise BackendError(f"{env.profile} could not be prepared.", detail=env.failure())
    return time.monotonic() - started
