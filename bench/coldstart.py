"""Cold start: `make run` from a fresh clone until the sign-in page answers, twice: with empty
package caches (every wheel downloaded from the index) and with the caches the first run
filled (a machine that has installed the portal before). Each run is a new clone with no
virtual environment, on the embedded default (SQLite, no Redis), as a newcomer runs it.

    python bench/coldstart.py

Needs the package index (PyPI). Last line:

    coldstart: empty_cache_s=<x> warm_cache_s=<y>
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def cold_start(work: Path, caches: Path, label: str) -> float:
    clone = work / f"clone-{label}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "CELERY_", "VIRTUAL_ENV", "CACHE_URL"))}
    env.update(PORT=str(port), UV_CACHE_DIR=str(caches / "uv"),
               PIP_CACHE_DIR=str(caches / "pip"), PYTHON=sys.executable)
    log = work / f"make-run-{label}.log"
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(["make", "run", f"PYTHON={sys.executable}"], cwd=clone,
                                   env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        while not answers(f"http://127.0.0.1:{port}/accounts/login/"):
            if process.poll() is not None:
                raise RuntimeError(f"make run ended ({process.returncode}); see {log.name}")
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"no sign-in page after 900 s; see {log.name}")
            time.sleep(0.25)
        return time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    caches = work / "caches"  # empty for the first run, filled by it for the second
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start",
          flush=True)
    empty = cold_start(work, caches, "empty")
    print(f"empty caches: {empty:.1f}s to the sign-in page", flush=True)
    warm = cold_start(work, caches, "warm")
    print(f"warm caches: {warm:.1f}s to the sign-in page", flush=True)
    print(f"coldstart: empty_cache_s={empty:.1f} warm_cache_s={warm:.1f}")


if __name__ == "__main__":
    main()
