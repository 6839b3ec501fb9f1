"""Collaborators with the real parts: the invitation travels through a real SMTP server on
loopback, the invitee signs in at the real OpenID Connect provider (tests/kit/oidc.py), and a
real browser does the whole journey against the portal as production serves it (uvicorn:
pages, the Kubernetes proxy and the shell's WebSockets), with a real Celery worker, real
JupyterLab and a real shell."""

import email
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from email import policy
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import yaml
from aiosmtpd.controller import Controller
from allauth.socialaccount.models import SocialAccount
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse

from clusters.backends.local import tenants
from instances import collaborators, services
from instances.models import Collaborator, Instance
from notebooks import services as notebook_services
from notebooks.models import Notebook, NotebookProfile
from workspaces.services import ensure_workspace

from .conftest import make_user, wait_for, workspace_of
from .kit.asgi import client_tls, serve
from .test_identity import PROVIDER_ID, idp, sign_in, sso  # noqa: F401  (fixtures)
from .test_remote_access import emu, profile, real_profile, tls  # noqa: F401  (fixtures)
from .test_shell import fresh_channel_layer, no_shell_left

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def portal(transactional_db, settings):
    """The whole portal over ASGI on this test's database: the shell needs WebSockets."""
    from gpupaas.asgi import application

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
    with serve(application) as url, fresh_channel_layer(), no_shell_left():
        yield SimpleNamespace(url=url)


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.port = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's)
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted"

    def link(self, to: str) -> str:
        message = wait_for(lambda: next((m for m in reversed(self.messages)
                                         if m["To"] == to), None), timeout=10)
        body = message.get_body(("plain",)).get_content()
        return re.search(r"(http://\S+/invitations/\S+/)", body).group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp(settings, portal):  # noqa: F811
    """A real SMTP server on loopback; the portal sends through it and links to itself."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.PORTAL_URL = portal.url
    yield inbox
    controller.stop()


@pytest.fixture
def shared(alice, catalogue):
    instance = services.launch_instance(workspace=workspace_of(alice), name="shared-model",
                                        profile=catalogue[2], by=alice)
    return services.provision_instance(instance_id=instance.pk)


def invite_and_open_as(client, owner, instance, smtp, portal, username: str,  # noqa: F811
                      ) -> tuple[str, requests.Session, requests.Response]:
    """The owner invites carol@corp.example; `username` opens the mailed link and signs in
    at the IdP. Returns the link, their session and the page they land on."""
    client.force_login(owner)
    client.post(reverse("instances:collaborators", args=[instance.pk]),
                {"emails": "carol@corp.example"})
    link = smtp.link("carol@corp.example")
    session, page = sign_in(f"{portal.url}/accounts/login/?next={link[len(portal.url):]}",
                            username)
    return link, session, page


def accept(session: requests.Session, page: requests.Response) -> requests.Response:
    return session.post(page.url, data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
                        headers={"Referer": page.url}, timeout=10)


def test_the_invitee_gets_the_mail_signs_in_at_the_idp_and_sees_the_instance(
    sso, portal, smtp, client, alice, shared  # noqa: F811
):
    sso.set_user("carol", password="pw", email="Carol@Corp.example", email_verified=True,
                 groups=[])
    link, session, page = invite_and_open_as(client, alice, shared, smtp, portal, "carol")

    assert link.startswith(portal.url + "/invitations/")
    message = smtp.messages[-1]
    assert "shared-model" in message["Subject"] and "alice" in message["Subject"]
    signed_out = requests.get(link, timeout=10)
    assert "Invitation to shared-model" in signed_out.text
    assert page.url == link and "Accept invitation" in page.text
    landed = accept(session, page)
    assert landed.url == f"{portal.url}/instances/{shared.pk}/"
    assert "shared-model" in landed.text and "shared with you" in landed.text
    home = session.get(portal.url + "/", timeout=10).text
    assert "Shared with me" in home and "shared-model" in home
    carol = get_user_model().objects.get(socialaccount__uid="carol")
    assert Collaborator.objects.get().user == carol

    # The link worked once.
    again = session.post(link, data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
                         headers={"Referer": link}, timeout=10)
    assert again.status_code == 400 and "works only once" in again.text


def test_another_idp_user_with_the_link_is_told_whom_it_was_for(
    sso, portal, smtp, client, alice, shared  # noqa: F811
):
    sso.set_user("mallory", password="pw", email="mallory@corp.example", groups=["gpu-users"])
    _, session, page = invite_and_open_as(client, alice, shared, smtp, portal, "mallory")
    assert "This invitation is for <strong>carol@corp.example</strong>" in page.text
    assert "mallory@corp.example is the one your identity provider confirmed" in page.text
    refused = accept(session, page)
    assert refused.status_code == 403
    assert Collaborator.objects.get().status == Collaborator.Status.PENDING
    assert session.get(f"{portal.url}/instances/{shared.pk}/", timeout=10).status_code == 404


def test_an_address_the_idp_does_not_verify_is_not_trusted(
    sso, portal, smtp, client, alice, shared, settings  # noqa: F811
):
    settings.OIDC_REQUIRE_VERIFIED_EMAIL = False  # sign-in allowed, but the address unproven
    sso.set_user("carol", password="pw", email="carol@corp.example", email_verified=False,
                 groups=["gpu-users"])
    _, session, page = invite_and_open_as(client, alice, shared, smtp, portal, "carol")
    assert "your identity provider has not confirmed an address for you" in page.text
    assert accept(session, page).status_code == 403
    assert Collaborator.objects.get().status == Collaborator.Status.PENDING


def test_a_mail_server_that_refuses_is_reported_and_resend_retries(
    portal, smtp, alice_client, shared, settings  # noqa: F811
):
    settings.EMAIL_PORT = free_port()  # nothing listens there
    response = alice_client.post(reverse("instances:collaborators", args=[shared.pk]),
                                 {"emails": "carol@corp.example"}, follow=True)
    page = response.content.decode()
    assert "The mail server refused the invitation to carol@corp.example" in page
    assert "mail not sent" in page and not smtp.messages

    settings.EMAIL_PORT = smtp.port
    collaborator = Collaborator.objects.get()
    alice_client.post(reverse("instances:collaborator_resend", args=[shared.pk, collaborator.pk]))
    assert smtp.link("carol@corp.example")
    assert Collaborator.objects.get().sent_at is not None


# --- the whole journey in a browser ---------------------------------------------------------


def answers(url: str, token: str) -> bool:
    """JupyterLab's API accepts this token."""
    api = url.replace("/lab", "/api/status")
    request = urllib.request.Request(api, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def olivias_lab(sso, celery_worker_process, catalogue):  # noqa: F811
    """olivia (an IdP user with the end-user role) has a running instance with a running
    notebook; set up before the browser starts (see `page`)."""
    olivia = make_user("olivia", group=None)
    olivia.email = "olivia@corp.example"
    olivia.save()
    olivia.groups.add(Group.objects.get(name="Researchers"))
    SocialAccount.objects.create(user=olivia, provider=PROVIDER_ID, uid="olivia")
    sso.set_user("olivia", password="pw", email="olivia@corp.example", groups=["gpu-users"])
    sso.set_user("carol", password="pw", email="carol@corp.example", groups=["gpu-users"])
    instance = services.launch_instance(workspace=ensure_workspace(user=olivia), name="lab",
                                        profile=catalogue[1], by=olivia)
    # The worker provisions it (and would race a provisioning call made here).
    wait_for(lambda: Instance.objects.get(pk=instance.pk).status == "running", timeout=60)
    instance.refresh_from_db()
    notebook = notebook_services.deploy_notebook(
        instance=instance, name="olivias-nb", by=olivia,
        profile=NotebookProfile.objects.get(name="minimal"))
    wait_for(lambda: Notebook.objects.get(pk=notebook.pk).status == "running", timeout=180)
    return instance, Notebook.objects.get(pk=notebook.pk)


def idp_sign_in(page, username: str) -> None:
    page.wait_for_selector("text=Test identity provider")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw")
    page.click("button:has-text('Sign in')")


@pytest.mark.browser
def test_the_whole_journey_invite_accept_use_and_removal_ends_it_at_once(
    portal, smtp, olivias_lab, page  # noqa: F811
):
    instance, notebook = olivias_lab
    instance_url = f"{portal.url}/instances/{instance.pk}/"

    # 1. olivia invites carol from the instance page.
    page.goto(instance_url)
    idp_sign_in(page, "olivia")
    page.wait_for_selector("h1:has-text('lab')")
    page.fill("textarea[name=emails]", "carol@corp.example")
    page.click("button:has-text('Invite')")
    page.wait_for_selector("text=Invitation sent to carol@corp.example.")

    # 2. carol opens the link from the mail, signs in at the IdP, accepts, uses the notebook.
    link = smtp.link("carol@corp.example")
    carols = page.context.browser.new_context().new_page()
    carols.set_default_timeout(20_000)
    carols.goto(link)
    carols.click("a:has-text('Sign in')")
    idp_sign_in(carols, "carol")
    carols.click("button:has-text('Accept invitation')")
    carols.wait_for_selector("h1:has-text('lab')")
    carols.wait_for_selector("text=shared with you")
    # ...opens a shell in the sandbox (as the workspace's own OS user), and keeps it open.
    shell = carols.context.new_page()
    shell.set_default_timeout(20_000)
    shell.goto(instance_url)
    with_shell = os.geteuid() == 0  # sandbox shells need the portal to run as root
    if with_shell:
        shell.click("a:has-text('Open shell')")
        shell.wait_for_selector("#shell-state:has-text('Connected')")
        shell.click("#terminal")
        shell.keyboard.type("id -un; echo shell-$((6*7))")
        shell.keyboard.press("Enter")
        shell.wait_for_function(
            "(text) => document.querySelector('.xterm-rows').textContent.includes(text)",
            arg="shell-42")
        assert tenants.username(str(instance.workspace_id)) in shell.inner_text(
            ".xterm-rows")
    else:
        assert "need the portal to run as root" in shell.inner_text("#remote-access")
    carols.click("a:has-text('olivias-nb')")
    carols.wait_for_selector("text=Open JupyterLab")
    open_url = carols.get_attribute("button:has-text('Copy URL with token')", "data-copy")
    old_token = open_url.split("token=")[1]
    assert old_token == notebook.token and answers(notebook.url, old_token)
    carols.goto(instance_url)

    # 3. olivia removes carol.
    page.reload()
    page.click("tr[data-email='carol@corp.example'] summary:has-text('Remove')")
    assert "notebooks restart with new tokens" in page.inner_text(
        "tr[data-email='carol@corp.example'] details")
    page.click("tr[data-email='carol@corp.example'] button:has-text('Remove carol@corp.example')")
    page.wait_for_selector("text=carol@corp.example no longer has access to lab")
    removed_at = time.monotonic()

    # 4. Within a second: the old notebook token is refused, her open shell closes, and
    # carol's next page and partial are 404s (access is read on every request).
    wait_for(lambda: not answers(notebook.url, old_token), timeout=5, interval=0.05)
    refused_after = time.monotonic() - removed_at
    if with_shell:
        shell.wait_for_selector("#shell-state:has-text('Closed: Access to lab ended')",
                                timeout=5_000)
        closed_after = time.monotonic() - removed_at
        assert closed_after < 1.5, f"the shell stayed open {closed_after:.2f}s"
        assert shell.is_visible("#shell-reconnect")
    assert carols.reload().status == 404
    assert carols.request.get(f"{portal.url}/instances/{instance.pk}/status/").status == 404
    assert carols.request.get(f"{portal.url}/access/instances/{instance.pk}/shell/").status \
        == 404
    assert refused_after < 1.0, f"the old token still worked {refused_after:.2f}s later"
    # olivia's notebook comes back with a new token, and her notebook page tells her why.
    page.goto(f"{portal.url}/notebooks/{notebook.pk}/")
    page.wait_for_selector("a:has-text('Open JupyterLab')", timeout=120_000)
    assert "when someone lost access to the instance" in page.inner_text(".token-renewed")
    lab_url, new_token = page.get_attribute(
        "button:has-text('Copy URL with token')", "data-copy").split("?token=")
    # A program at the notebook's address on the portal: the new token works, the old not.
    origin = httpx.Client(base_url=portal.url, timeout=10,
                          headers={"Host": urlsplit(lab_url).netloc})
    assert new_token != old_token
    assert origin.get("/api/status", headers={
        "Authorization": f"token {new_token}"}).status_code == 200
    assert origin.get("/api/status", headers={
        "Authorization": f"token {old_token}"}).status_code == 401


# --- a collaborator's kubectl: downloaded kubeconfig and shell, until removed -----------------


@pytest.fixture(params=["emulator", "real"])
def kube_profile(request, transactional_db, tmp_path):
    """A namespace profile on the Kubernetes API emulator, with the kit's kubelet stand-in
    running the shell's pod, then on the real API server of the kit (skipped where there is
    none; it has no kubelet, so no shell there)."""
    if request.param == "real":
        yield request.getfixturevalue("real_profile")
        return
    from .kit import kubelet

    if not kubelet.available():
        pytest.skip("the kubelet stand-in needs root, unshare, chroot and setpriv")
    stand_in = kubelet.Kubelet(request.getfixturevalue("emu"), tmp_path / "kubelet")
    yield request.getfixturevalue("profile")
    stand_in.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_a_collaborators_kubectl_works_until_removed_then_every_path_ends(
    kube_profile, client, alice, tls, settings, tmp_path  # noqa: F811
):

    from .test_collaborators import share_with
    from .test_remote_access import (
        CONFIGMAP,
        aimed_at,
        download_kubeconfig,
        kubectl,
    )
    from .test_remote_access import running_instance as kube_instance

    settings.ACCESS_KUBECONFIG_CA_FILE = str(tls[0])
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
    instance = kube_instance(alice, kube_profile, name="shared-kube")
    carol = make_user("carol", group=None)  # no role: only what is shared with her
    collaborator = share_with(instance, alice, carol)
    config, path = download_kubeconfig(client, carol, instance, tmp_path)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    from gpupaas.asgi import application

    with serve(application, tls=tls) as url, fresh_channel_layer(), no_shell_left():
        with open(path, "w") as f:
            yaml.safe_dump(aimed_at(config, url), f)
        kubectl(path, "apply", "-f", "-", stdin=CONFIGMAP.format(name="from-carol",
                                                                   value="carol"))
        assert kubectl(path, "get", "configmap", "from-carol", "-o",
                       "jsonpath={.data.greeting}").stdout == "carol"
        if kube_profile.cluster.name == "real":
            # No kubelet on the kit's real server: the shell's pod never runs there.
            collaborators.remove_collaborator(collaborator=collaborator, by=alice)
        else:
            open_shell_then_remove(url, tls, cookie, instance, collaborator, alice)
        refused = kubectl(path, "get", "configmaps", check=False)
        assert refused.returncode == 1 and "You must be logged in" in refused.stderr


def open_shell_then_remove(url, tls, cookie, instance, collaborator, alice):  # noqa: F811
    """carol's browser shell works in her pod, and closes within a second of her removal."""
    from websockets.sync.client import connect

    from .test_remote_access import namespace_of
    from .test_shell import Shell

    with connect(url.replace("https", "wss", 1)
                 + f"/access/instances/{instance.pk}/shell/socket/",
                 ssl=client_tls(tls[0]),
                 additional_headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}",
                                     "Origin": url}) as socket_:
        shell = Shell(socket_)
        shell.type("kubectl get configmap from-carol -o name")
        shell.wait_for("configmap/from-carol")
        assert f"namespace {namespace_of(instance)}" in shell.text  # in its pod there

        collaborators.remove_collaborator(collaborator=collaborator, by=alice)

        assert shell.wait_closed(timeout=5) < 1.5
        assert shell.close_code == 4403
