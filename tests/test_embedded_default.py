"""`make run`'s embedded default works on its own: SQLite, the filesystem broker, the local
backend, three processes that start together and stop together."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from .conftest import ROOT, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_QUEUE")}
    env.update(VAR_DIR=str(var_dir), DEMO_PASSWORD="embedded-demo-42", LOCAL_USE_NVML="false",
               RECONCILE_INTERVAL_S="5")
    return env


@pytest.fixture(scope="module")
def prepared_var(tmp_path_factory) -> Path:
    """A var/ as `make run` leaves it before starting: migrated and bootstrapped, once."""
    var_dir = tmp_path_factory.mktemp("embedded") / "var"
    for step in (["migrate", "--noinput", "-v0"], ["bootstrap"]):
        subprocess.run([sys.executable, "manage.py", *step], cwd=ROOT, env=base_env(var_dir),
                       check=True, capture_output=True)
    return var_dir


@pytest.fixture
def embedded_env(prepared_var, tmp_path) -> dict[str, str]:
    shutil.copytree(prepared_var, tmp_path / "var")
    return {**base_env(tmp_path / "var"), "PORT": str(free_port())}


def start_portal(env: dict[str, str], *, terminal: bool = False
                 ) -> tuple[subprocess.Popen, list[str], str]:
    """`manage.py runportal` until its pages answer: the process, its output lines as they
    come (read by a thread), its address. With `terminal`, in a process group of its own, as
    a terminal's foreground job is (a Ctrl-C reaches the whole group)."""
    base = f"http://127.0.0.1:{env['PORT']}"
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runportal"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=terminal,
    )
    banner = ""
    while "is running at" not in banner:
        line = proc.stdout.readline()
        assert line, "runportal exited before printing its URL:\n" + banner
        banner += line
    assert f"is running at {base}" in banner
    mail_dir = os.path.join(env["VAR_DIR"], "mail")
    assert f"Mail (invitations) is written to {mail_dir}" in banner
    output: list[str] = banner.splitlines(keepends=True)
    threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")),
                     daemon=True).start()

    def up() -> bool:
        try:
            return requests.get(base + "/accounts/login/", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # still starting, or busy
            return False

    try:
        wait_for(up, 90, 0.2)  # a busy machine imports the kubernetes client slowly
    except AssertionError:
        proc.kill()
        raise AssertionError("the portal never answered:\n" + "".join(output[-60:])) from None
    return proc, output, base


def stopped_cleanly(proc: subprocess.Popen, children: list[int], env: dict[str, str],
                    stop_signal: int) -> None:
    """runportal stops on the signal with status 0, every process started for it with it
    (their own workers too), and its port closes. SIGINT is a terminal's Ctrl-C: to the whole
    group, followed 3 s later by a service manager's TERM to runportal."""
    assert len(started_for(env["VAR_DIR"])) > 3  # the children's own workers too
    began = time.monotonic()
    if stop_signal == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(3)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    else:
        proc.send_signal(stop_signal)
    proc.wait(30)
    assert proc.returncode == 0
    assert time.monotonic() - began < float(env.get("RUNPORTAL_STOP_GRACE_S", 10)) + 5
    assert [pid for pid in children if alive(pid)] == [], "a process outlived runportal"
    # Nothing outlives runportal (a moment for the kernel to reap what was killed).
    wait_for(lambda: not started_for(env["VAR_DIR"]), 0.5, 0.05)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(env["PORT"]))) != 0


# SIGTERM's stop is checked by the root shell test below, which starts runportal anyway (each
# start costs seconds); where that test cannot run, here.
@pytest.mark.parametrize("stop_signal", [signal.SIGINT] + (
    [] if os.geteuid() == 0 else [signal.SIGTERM]))
def test_the_embedded_default_launches_an_instance_and_stops_cleanly(embedded_env, stop_signal):
    proc, output, base = start_portal(embedded_env, terminal=True)
    try:
        s = requests.Session()
        s.get(base + "/accounts/login/")
        children = children_of(proc.pid)
        assert len(children) == 3  # web, worker, beat
        # Ctrl-C's run shows the worker at work too; the other signal's, only the stopping.
        if stop_signal == signal.SIGINT:
            launch_and_wait(s, base)
    except BaseException:
        proc.kill()
        raise
    stopped_cleanly(proc, children, embedded_env, stop_signal)
    if stop_signal != signal.SIGINT:
        return
    # `make run` logs readable lines, not production's JSON, each request with its ids.
    wait_for(lambda: any("POST /instances/new/ 302" in line for line in output), 10)
    launch = [line for line in output if "POST /instances/new/ 302" in line]
    assert launch, "".join(output[-40:])
    assert re.search(r"INFO gpupaas\.requests \[req=[0-9a-f]{32} user=\d+\] POST", launch[0])
    assert not any(line.startswith("{") for line in output)
    # The filesystem broker keeps its exchange tables under var/, not in the checkout.
    control = Path(embedded_env["VAR_DIR"]) / "broker" / "control"
    assert sorted(p.name for p in control.iterdir()) == [
        "celery.pidbox.exchange", "gpupaas.exchange"]


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox shells need the portal to run as root")
def test_runportal_as_root_serves_a_working_sandbox_shell(embedded_env):
    """Through runportal itself (its umask, its users, its web server), not another server."""
    from websockets.sync.client import connect

    proc, output, base = start_portal(embedded_env)
    children = children_of(proc.pid)
    try:
        s = requests.Session()
        s.get(base + "/accounts/login/")
        instance_url = launch_and_wait(s, base)
        instance_id = instance_url.rstrip("/").rsplit("/", 1)[-1]
        # Why the worker is root, said once in the portal's words, not Celery's warning.
        assert any("The worker runs as root" in line for line in output), "".join(output)
        assert not any("superuser privileges" in line for line in output), "".join(output)
        cookie = "; ".join(f"{k}={v}" for k, v in s.cookies.items())
        with connect(f"ws://127.0.0.1:{embedded_env['PORT']}/access/instances/{instance_id}"
                     "/shell/socket/", additional_headers={"Cookie": cookie, "Origin": base},
                     open_timeout=20) as shell:
            shell.send(b"id -un; echo SHELL-$((40+2))\r")
            screen = b""
            deadline = time.monotonic() + 30
            while b"SHELL-42" not in screen.replace(b"SHELL-$((40+2))", b""):
                assert time.monotonic() < deadline, screen.decode(errors="replace")
                with contextlib.suppress(TimeoutError):
                    frame = shell.recv(timeout=1)
                    screen += frame if isinstance(frame, bytes) else frame.encode()
        tenant = embedded_env.get("LOCAL_USER_PREFIX", "gpw-")  # the workspace's OS user
        assert re.search(rb"\r" + re.escape(tenant.encode()) + rb"[0-9a-f]{6}-\d+\r\nSHELL-42",
                         screen), screen
        assert b"Permission denied" not in screen and b"could not start" not in screen
    except BaseException:
        proc.kill()
        raise
    assert len(children) == 3  # web, worker, beat
    stopped_cleanly(proc, children, embedded_env, signal.SIGTERM)


def launch_and_wait(s: requests.Session, base: str) -> str:
    """Sign in as demo, launch an instance and see it run on a simulated GPU."""
    s.post(base + "/accounts/login/", headers={"Referer": base}, data={
        "login": "demo", "password": "embedded-demo-42",
        "csrfmiddlewaretoken": s.cookies["csrftoken"],
    })
    page = s.get(base + "/instances/new/").text
    profile = re.search(r'name="profile" value="(\d+)"', page).group(1)
    launched = s.post(base + "/instances/new/", headers={"Referer": base}, data={
        "name": "embedded", "profile": profile, "csrfmiddlewaretoken": s.cookies["csrftoken"],
    })
    status_url = launched.url + "status/"
    wait_for(lambda: "status-running" in s.get(status_url).text, 40, 0.5)
    assert "simulated GPU 0 on Local machine" in s.get(status_url).text
    return launched.url


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def started_for(var_dir: str) -> list[int]:
    """Every live process started for this var/: runportal's children and theirs (Celery's
    pool, gunicorn's workers) inherit VAR_DIR, whoever their parent is now."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (process.status() != psutil.STATUS_ZOMBIE
                    and process.environ().get("VAR_DIR") == var_dir):
                found.append(process.pid)
    return found


def test_a_signal_during_start_up_leaves_nothing_behind(embedded_env):
    env = {**embedded_env, "RUNPORTAL_STOP_GRACE_S": "5"}
    proc = subprocess.Popen([sys.executable, "manage.py", "runportal"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: children_of(proc.pid), 60, 0.01)  # the first child has started
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)  # the grace, then a kill and a wait for each child
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    wait_for(lambda: not started_for(embedded_env["VAR_DIR"]), 0.5, 0.05)
