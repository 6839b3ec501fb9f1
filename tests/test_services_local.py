"""Catalogue services on the local backend are real processes (TensorBoard, MLflow) in a
network of their own, reached through the portal only, on an origin of their own: the owner
and the instance's collaborators get in, nobody else does, and losing access (or signing
out of the portal) ends it within a second."""

import re
import time
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from django.core import mail
from django.test import Client

from clusters.backends.local import jupyter
from instances import collaborators
from notebooks import services
from notebooks.models import Service, ServiceProfile

from .conftest import make_user, running_instance
from .kit.asgi import serve

Status = Service.Status


def until(service: Service, status: str, timeout: float = 120) -> Service:
    deadline = time.monotonic() + timeout
    while service.status != status:
        assert time.monotonic() < deadline and service.status != Status.FAILED, (
            f"{service.status}: {service.status_message} {service.status_detail}")
        time.sleep(0.3)
        service = services.advance_service(service_id=service.pk)
    return service


class Browser:
    """One person's browser on the origin of a service (or of a local notebook): its own
    cookie jar, the Host header a browser would send for s<id>-<suffix>.localhost."""

    def __init__(self, server: str, service: Service, timeout: float = 20) -> None:
        self.port = urlsplit(server).port
        self.host = f"{service.host_label}.localhost:{self.port}"
        self.http = httpx.Client(base_url=server, headers={"Host": self.host}, timeout=timeout)

    def open(self, portal: Client, service: Service) -> httpx.Response:
        """Open from the portal's page: its redirect, then the sign-in on the origin."""
        kind = "services" if isinstance(service, Service) else "notebooks"
        to = portal.get(f"/{kind}/{service.pk}/open/")
        assert to.status_code == 302, to.status_code
        target = urlsplit(to["Location"])
        assert target.hostname == f"{service.host_label}.localhost"
        return self.http.get(f"{target.path}?{target.query}")

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def tensorboard(transactional_db, alice, catalogue):
    instance = running_instance(alice, catalogue[2], "train")
    profile = ServiceProfile.objects.get(name="tensorboard")
    service = services.deploy_service(instance=instance, name="curves", profile=profile,
                                      by=alice)
    return until(service, Status.RUNNING)


@pytest.fixture
def server():
    from gpupaas.asgi import application

    with serve(application) as url:
        yield url


def runtime_of(service: Service, sandbox_root) -> dict:
    return jupyter.read_runtime(sandbox_root / ".portal" / "local" / service.instance.key
                                / service.key)


def test_tensorboard_runs_in_a_network_of_its_own_as_the_workspace(tensorboard, sandbox_root):
    runtime = runtime_of(tensorboard, sandbox_root)
    relay = psutil.Process(runtime["pid"])
    app = relay.children()[0]
    assert "tensorboard" in " ".join(app.cmdline())
    assert app.uids().real != 0  # the workspace's OS user, not root
    # Its port exists only in its own network: nothing on this machine's loopback answers.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{runtime['port']}/", timeout=2)
    assert tensorboard.step == "reachable" and tensorboard.running_since


def test_the_owner_and_a_collaborator_open_it_and_nobody_else_does(
        tensorboard, server, alice, settings):
    owner = Browser(server, tensorboard)
    signed = owner.open(signed_in(alice), tensorboard)
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    page = owner.get("/")
    assert page.status_code == 200 and "TensorBoard" in page.text
    assert owner.get("/data/environment").status_code == 200  # the app's own API

    # Without signing in, with a used ticket, or with a forged cookie: nothing.
    stranger = Browser(server, tensorboard)
    assert stranger.get("/").status_code == 401
    assert "Open this service from the portal" in stranger.get("/").text
    replay = stranger.http.get(str(signed.request.url.raw_path, "ascii"))
    assert replay.status_code == 401
    stranger.http.cookies.set("gpupaas_app", "forged")
    assert stranger.get("/").status_code == 401

    # bob has no access: the portal's Open is a 404, and so is his own app session here.
    bob = make_user("bob-svc")
    assert signed_in(bob).get(f"/services/{tensorboard.pk}/open/").status_code == 404

    # carol collaborates: she gets in; removed, she is out within a second.
    carol = make_user("carol-svc")
    collaborators.invite_collaborator(instance=tensorboard.instance, emails=[carol.email],
                                      by=alice, base_url="http://portal.test/")
    token = re.search(r"/invitations/([^/\s]+)/", mail.outbox[-1].body).group(1)
    membership = collaborators.accept_invitation(token=token, user=carol,
                                                 proven_email=carol.email)
    guest = Browser(server, tensorboard)
    assert guest.open(signed_in(carol), tensorboard).status_code == 303
    assert guest.get("/").status_code == 200
    collaborators.remove_collaborator(collaborator=membership, by=alice)
    time.sleep(settings.APPS_DECISION_CACHE_S + 0.1)
    assert guest.get("/").status_code == 404
    assert owner.get("/").status_code == 200  # alice is still in


def test_signing_out_of_the_portal_ends_the_app_session(tensorboard, server, alice, settings):
    portal = signed_in(alice)
    owner = Browser(server, tensorboard)
    owner.open(portal, tensorboard)
    assert owner.get("/").status_code == 200
    portal.post("/accounts/logout/")
    time.sleep(settings.APPS_DECISION_CACHE_S + 0.1)
    assert owner.get("/").status_code == 401


def test_another_services_session_does_not_open_this_one(tensorboard, server, alice):
    second = until(services.deploy_service(
        instance=tensorboard.instance, name="other", by=alice, cpu=1, memory_gib=1,
        profile=tensorboard.profile), Status.RUNNING)
    owner = Browser(server, second)
    owner.open(signed_in(alice), second)
    # The same cookie sent to the first service's origin (as a hostile page could make it):
    cookie = owner.http.cookies.get("gpupaas_app")
    other = Browser(server, tensorboard)
    other.http.cookies.set("gpupaas_app", cookie)
    assert other.get("/").status_code == 401


def test_deleting_it_stops_its_processes(tensorboard, sandbox_root, alice):
    runtime = runtime_of(tensorboard, sandbox_root)
    relay = psutil.Process(runtime["pid"])
    tree = [relay, *relay.children(recursive=True)]
    services.delete_service(service=tensorboard, by=alice)
    assert services.teardown_service(service_id=tensorboard.pk).status == Status.DELETED
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


def test_an_mlflow_server_records_an_experiment_through_its_origin(
        transactional_db, alice, catalogue, server, sandbox_root):
    instance = running_instance(alice, catalogue[2], "train")
    mlflow = until(services.deploy_service(
        instance=instance, name="tracking", by=alice,
        profile=ServiceProfile.objects.get(name="mlflow")), Status.RUNNING, timeout=240)
    owner = Browser(server, mlflow)
    owner.open(signed_in(alice), mlflow)
    assert "MLflow" in owner.get("/").text
    created = owner.http.post("/api/2.0/mlflow/experiments/create", json={"name": "resnet"})
    assert created.status_code == 200, created.text
    found = owner.http.get("/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": "resnet"})
    assert found.json()["experiment"]["experiment_id"] == created.json()["experiment_id"]
    # Kept in the instance's work folder, written as the workspace's OS user.
    store = sandbox_root / "local" / instance.key / "work" / "mlflow.db"
    assert store.stat().st_size > 0 and store.stat().st_uid != 0


HOSTILE = '''python3 -c "import http.server as h, sys
class H(h.BaseHTTPRequestHandler):
    def do_GET(s):
        s.send_response(200)
        s.send_header('Set-Cookie', 'tossed=1; Domain=localhost; Path=/')
        s.send_header('Set-Cookie', 'own=1; Path=/; HttpOnly')
        s.send_header('Content-Length', '2')
        s.end_headers()
        s.wfile.write(b'ok')
h.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()" {port}'''


def test_a_service_can_neither_toss_cookies_nor_send_a_user_elsewhere(
        transactional_db, alice, catalogue, server):
    """Whatever an administrator adds runs the same way; and whatever it answers, it keeps
    its cookies to its own host (none for the portal or the other services under the same
    parent domain), and the sign-in sends nobody off the origin."""
    profile = ServiceProfile.objects.create(name="hostile", display_name="Hostile",
                                            local_command=HOSTILE)
    instance = running_instance(alice, catalogue[2], "train")
    service = until(services.deploy_service(instance=instance, name="cookies", by=alice,
                                            profile=profile), Status.RUNNING)
    owner = Browser(server, service)
    to = urlsplit(signed_in(alice).get(
        f"/services/{service.pk}/open/?next=//evil.example/x")["Location"])
    assert "next=/&" in f"{to.query}&" or to.query.endswith("next=/")
    ticket = to.query.split("ticket=")[1].split("&")[0]
    signed = owner.http.get(f"{to.path}?ticket={ticket}&next=/%5Cevil.example")
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    answer = owner.get("/")
    assert answer.text == "ok"
    cookies = answer.headers.get_list("set-cookie")
    assert cookies == ["own=1; Path=/; HttpOnly"]


WS_ECHO = '''python -c "import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for m in ws:
        await ws.send('echo: ' + m)
async def main():
    async with serve(echo, '127.0.0.1', int(sys.argv[1])):
        await asyncio.Future()
asyncio.run(main())" {port}'''


def websocket_to(server: str, service: Service, cookie: str, origin: str = ""):
    """A browser's WebSocket to the service's origin (its Host), with its cookie jar, from a
    page of `origin` (default: the service's own)."""
    import socket

    from websockets.sync.client import connect

    port = urlsplit(server).port
    own = f"http://{service.host_label}.localhost:{port}"
    return connect(f"ws://{service.host_label}.localhost:{port}/socket", open_timeout=10,
                   sock=socket.create_connection(("127.0.0.1", port)), origin=origin or own,
                   additional_headers={"Cookie": f"gpupaas_app={cookie}"} if cookie else None)


def test_websockets_reach_a_service_for_its_users_and_close_when_access_ends(
        transactional_db, alice, catalogue, server, settings):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    profile = ServiceProfile.objects.create(
        name="wsecho", display_name="WebSocket echo", local_packages="websockets>=13,<16",
        local_command=WS_ECHO)
    instance = running_instance(alice, catalogue[2], "train")
    service = until(services.deploy_service(instance=instance, name="live", by=alice,
                                            profile=profile), Status.RUNNING)
    carol = make_user("carol-ws")
    collaborators.invite_collaborator(instance=instance, emails=[carol.email], by=alice,
                                      base_url="http://portal.test/")
    token = re.search(r"/invitations/([^/\s]+)/", mail.outbox[-1].body).group(1)
    membership = collaborators.accept_invitation(token=token, user=carol,
                                                 proven_email=carol.email)
    guest = Browser(server, service)
    assert guest.open(signed_in(carol), service).status_code == 303
    # Another service's page cannot open it with her cookie (one APPS_DOMAIN is one site).
    with pytest.raises(InvalidStatus):
        websocket_to(server, service, guest.http.cookies["gpupaas_app"],
                     origin=f"http://s1-aaaaaaaaaa.localhost:{urlsplit(server).port}")
    with websocket_to(server, service, guest.http.cookies["gpupaas_app"]) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        # Her access ends while the socket is open: the portal closes it within a second.
        collaborators.remove_collaborator(collaborator=membership, by=alice)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=settings.APPS_DECISION_CACHE_S * 2 + 1)
    # Without an app session, or with hers now: no socket at all.
    for cookie in ("", guest.http.cookies["gpupaas_app"]):
        with pytest.raises(InvalidStatus):
            websocket_to(server, service, cookie)
