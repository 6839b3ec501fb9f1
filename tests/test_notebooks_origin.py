"""A local notebook is reached through the portal at a stable address (#27): its origin,
`n<id>-<suffix>.<APPS_DOMAIN>`, served by the portal's web server, so a lab box's notebooks
work from a laptop and survive a restart on another port. A browser gets there from the
portal's Open (signed in there once; the portal hands Jupyter the token), a program with
the notebook's own token; nobody else gets in."""

import json
import time
from urllib.parse import urlsplit

import httpx
import pytest

from instances import collaborators
from notebooks import services
from notebooks.models import Notebook

from .conftest import make_user, running_instance
from .kit.asgi import serve
from .test_collaborators import share_with
from .test_notebooks_local import until
from .test_services_local import Browser, signed_in

Status = Notebook.Status


@pytest.fixture
def server(transactional_db):
    from gpupaas.asgi import application

    with serve(application) as url:
        yield url


def test_a_local_notebook_is_reached_through_the_portal_for_its_users_only(
        server, alice, catalogue, minimal, settings):
    instance = running_instance(alice, catalogue[2], "train")
    notebook = until(services.deploy_notebook(instance=instance, name="explore", by=alice,
                                              profile=minimal), Status.RUNNING)
    laptop = Browser(server, notebook, timeout=30)
    signed = laptop.open(signed_in(alice), notebook)
    assert signed.status_code == 303 and signed.headers["location"] == "/lab"
    assert "JupyterLab" in laptop.http.get("/lab").text
    # The portal hands Jupyter its token: the browser never needs it, and writes work
    # (Jupyter skips its XSRF check for token-authenticated requests).
    assert laptop.http.get("/api/status").json()["kernels"] == 0
    own = f"http://{laptop.host}"
    made = laptop.http.post("/api/contents", content=json.dumps({"type": "notebook"}),
                            headers={"Origin": own, "Content-Type": "application/json"})
    assert made.status_code == 201, made.text
    # Another origin's page cannot post with alice's cookie.
    forged = laptop.http.post("/api/contents", content=json.dumps({"type": "notebook"}),
                              headers={"Origin": f"http://s1-aaaaaaaaaa.localhost:{laptop.port}"})
    assert forged.status_code == 403

    # The page shows that address, not the server's port on the portal's loopback.
    page = signed_in(alice).get(f"/notebooks/{notebook.pk}/").content.decode()
    assert f"http://{notebook.host_label}.localhost/lab" in page
    assert "127.0.0.1" not in page

    # A program with the notebook's token gets in; without it, or with another, not.
    program = httpx.Client(base_url=server, headers={"Host": laptop.host}, timeout=30)
    assert program.get("/api/status").status_code == 401
    assert program.get("/api/status", headers={
        "Authorization": "token not-the-token"}).status_code == 401
    assert program.get("/api/status", headers={
        "Authorization": f"token {notebook.token}"}).status_code == 200
    assert program.get(f"/api/status?token={notebook.token}").status_code == 200

    # bob has no access: the portal's Open is a 404.
    assert signed_in(make_user("bob-nb")).get(f"/notebooks/{notebook.pk}/open/"
                                              ).status_code == 404

    # Stopped and started, the server listens on another port; the address is the same.
    port = urlsplit(notebook.url).port
    assert services.stop_notebook(notebook=notebook, by=alice)
    services.release(kind=Notebook.KIND, pk=notebook.pk)
    assert services.start_notebook(notebook=notebook, by=alice)
    notebook = until(Notebook.objects.get(pk=notebook.pk), Status.RUNNING)
    assert urlsplit(notebook.url).port != port
    assert laptop.http.get("/api/status").status_code == 200


def test_a_removed_collaborator_is_out_of_a_local_notebook_within_a_second(
        server, alice, catalogue, minimal, settings):
    instance = running_instance(alice, catalogue[2], "train")
    notebook = until(services.deploy_notebook(instance=instance, name="explore", by=alice,
                                              profile=minimal), Status.RUNNING)
    carol = make_user("carol-nb")
    membership = share_with(instance, alice, carol)
    laptop = Browser(server, notebook, timeout=30)
    assert laptop.open(signed_in(carol), notebook).status_code == 303
    assert laptop.http.get("/api/status").status_code == 200
    collaborators.remove_collaborator(collaborator=membership, by=alice)
    time.sleep(settings.APPS_DECISION_CACHE_S + 0.1)
    assert laptop.http.get("/api/status").status_code == 404
