"""Screenshots of the portal for the README, at 1366 px and at 390 px (a phone).

Seeds a throwaway SQLite database under a temporary folder (alice with instances, one real
JupyterLab notebook, a failed instance, other users for the overview), serves the portal
with gunicorn, and drives Debian's Chromium through Playwright:

    .venv/bin/python docs/screenshots/make.py

Writes docs/screenshots/<page>-<width>.png. Needs `.venv` with the test dependencies
(`make .venv/.installed-test`) and /usr/bin/chromium.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
WIDTHS = {"1366": (1366, 900), "390": (390, 844)}
PASSWORD = "screenshot-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed() -> dict[str, int]:
    """The cast and their instances; returns the ids the pages need."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from instances import services as instances
    from instances.models import ComputeProfile, Instance
    from notebooks import services as notebooks
    from notebooks.models import Notebook, NotebookProfile
    from portal.catalogue import seed_catalogue, seed_groups
    from workspaces.services import ensure_workspace

    call_command("migrate", verbosity=0)
    seed_catalogue()
    groups = seed_groups()
    User = get_user_model()
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    sizes = {p.gpus: p for p in ComputeProfile.objects.all()}

    def user(name: str):
        person = User.objects.create_user(name, f"{name}@example.com", PASSWORD,
                                          first_name=name.capitalize())
        person.groups.add(groups["Users"])
        return person, ensure_workspace(user=person)

    def launch(owner, workspace, name: str, gpus: int, description: str = "") -> Instance:
        instance = instances.launch_instance(workspace=workspace, name=name, by=owner,
                                             profile=sizes[gpus], description=description)
        return instances.provision_instance(instance_id=instance.pk)

    alice, alice_ws = user("alice")
    train = launch(alice, alice_ws, "train-llama", 2, "Fine-tuning runs for the Q3 model.")
    launch(alice, alice_ws, "eval-suite", 1)
    pending = instances.launch_instance(workspace=alice_ws, name="sweep-lr", by=alice,
                                        profile=sizes[1])
    bob, bob_ws = user("bob")
    launch(bob, bob_ws, "bob-pretrain", 4)
    broken = launch(bob, bob_ws, "bob-broken", 1)
    Instance.objects.filter(pk=broken.pk).update(
        status="failed", status_message="The sandbox folder could not be created: disk full.",
        status_detail="OSError: [Errno 28] No space left on device")
    carol, carol_ws = user("carol")
    launch(carol, carol_ws, "carol-vision", 1)

    # Sharing: bob may use train-llama (not delete or share it); dana is invited to manage.
    from django.conf import settings
    from django.core import mail

    from instances.collaborators import accept_invitation, invite_collaborator

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"  # read back here
    invite_collaborator(instance=train, emails=["bob@example.com"], by=alice,
                        base_url="http://portal.example", access="use")
    token = mail.outbox[-1].body.split("/invitations/")[1].split("/")[0]
    accept_invitation(token=token, user=bob, proven_email="bob@example.com")
    invite_collaborator(instance=train, emails=["dana@partner.example"], by=alice,
                        base_url="http://portal.example")

    profile = NotebookProfile.objects.get(name="minimal")
    notebook = notebooks.deploy_notebook(
        instance=train, name="explore-data", profile=profile, description="", cpu=None,
        memory_gib=None, gpus=None, by=alice)
    deadline = time.monotonic() + 300  # the first time, its environment is built
    while notebooks.advance_notebook(notebook_id=notebook.pk).status == Notebook.Status.DEPLOYING:
        if time.monotonic() > deadline:
            raise SystemExit("JupyterLab did not come up in 5 minutes")
        time.sleep(0.5)
    # An API service (the seeded vLLM profile) with a key of alice's: its page shows how
    # programs call it. (Marked running: no model can be served here.)
    from django.utils import timezone

    from notebooks.models import Service, ServiceKey, ServiceProfile

    llm = Service.objects.create(
        instance=train, name="support-triage", created_by=alice, cpu=8, memory_gib=32,
        gpus=1, profile=ServiceProfile.objects.get(name="vllm"),
        model="Qwen/Qwen2.5-7B-Instruct", status="running", step="reachable",
        status_message="Running.", running_since=timezone.now())
    ServiceKey.objects.create(service=llm, user=alice, token_hash="0" * 64, prefix="gps_Xk29fQ",
                              name="eval-script", expires_at=timezone.now()
                              + timezone.timedelta(days=90))
    return {"instance": train.pk, "pending": pending.pk, "service": llm.pk}


def shoot(url: str, ids: dict[str, int]) -> None:
    from playwright.sync_api import sync_playwright

    pages = [
        ("landing", "alice", "/"),
        ("wizard", "alice", "/instances/new/"),
        ("instance", "alice", f"/instances/{ids['instance']}/"),
        ("shared", "bob", f"/instances/{ids['instance']}/"),
        ("notebooks", "alice", "/notebooks/"),
        ("service", "alice", f"/services/{ids['service']}/"),
        ("overview", "admin", "/admin/overview/"),
        ("admin", "admin", "/admin/"),
    ]
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for label, (width, height) in WIDTHS.items():
            for who in ("alice", "bob", "admin"):
                context = browser.new_context(viewport={"width": width, "height": height})
                page = context.new_page()
                page.goto(f"{url}/accounts/login/?local")
                page.fill("#id_login", who)
                page.fill("#id_password", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_load_state("networkidle")
                for name, user, path in pages:
                    if user != who:
                        continue
                    page.goto(url + path)
                    page.wait_for_load_state("networkidle")
                    if name == "wizard":
                        page.click("text=Medium · 2 GPUs")
                    if name == "landing" and width < 720:
                        page.click("button.menu-toggle")  # the folded navigation, opened
                    page.screenshot(path=str(OUT / f"{name}-{label}.png"), full_page=True)
                context.close()
        browser.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="gpupaas-shots-"))
    work.chmod(0o711)  # as root, notebooks run as the workspace's OS user, who passes through
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work / 'portal.sqlite3'}",
        "VAR_DIR": str(work),
        "CELERY_BROKER_URL": "filesystem://",
        "LOCAL_SANDBOX_ROOT": str(work / "sandboxes"),
        "LOCAL_USE_NVML": "false",
        "LOCAL_GPU_SLOTS": "16",
        "LOCAL_USER_PREFIX": f"gps{os.getpid()}-",  # removed at the end
        "DEBUG": "false",
        "SECRET_KEY": "screenshots-only",
        "OIDC_ISSUER_URL": "",
        "DJANGO_SETTINGS_MODULE": "gpupaas.settings",
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    ids = seed()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "gpupaas.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--threads", "4", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        shoot(f"http://127.0.0.1:{port}", ids)
    finally:
        server.terminate()
        server.wait(10)
        from clusters.backends.local import stop_all_servers, tenants

        stop_all_servers()
        for name in tenants.portal_users():
            subprocess.run(["userdel", name], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots: {len(list(OUT.glob('*.png')))} files in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
