"""A user in a real browser: logs in, launches, watches it run without reloading, deletes it.

Debian's Chromium driven by Playwright (never a browser download) against a live server, with
a real Celery worker process doing the provisioning.
"""

import re

import pytest

from .conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_user_launches_watches_and_deletes_an_instance(
    portal_server, celery_worker_process, alice, catalogue, page
):
    page.goto(portal_server.url + "/")
    assert "/accounts/login/" in page.url
    page.fill("#id_login", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Your workspace is ready")

    page.click("text=Launch your first instance")
    page.fill("#id_name", "browser-run")
    page.click("text=Medium · 2 GPUs")
    page.click("button:has-text('Launch')")
    page.wait_for_selector("h1:has-text('browser-run')")

    # Mark this document: if the page were reloaded, the mark would be gone.
    page.evaluate("window.__still_here = true")
    page.wait_for_selector("#instance-status .status-running", timeout=30_000)
    assert page.evaluate("window.__still_here") is True
    assert "simulated" in page.inner_text("#instance-status")

    page.click("a:has-text('Delete')")
    page.wait_for_selector("text=This cannot be undone")
    page.click("button:has-text('Delete browser-run')")
    page.wait_for_selector("h1:has-text('Instances')")
    page.evaluate("window.__still_here = true")
    page.wait_for_selector("text=No instances yet", timeout=30_000)
    assert page.evaluate("window.__still_here") is True



@pytest.fixture
def lab_host(alice, catalogue):
    """A running instance of alice's (set up before the browser, see `page`)."""
    from .conftest import running_instance

    return running_instance(alice, catalogue[1], "lab-host")


@pytest.fixture
def asgi_portal(transactional_db):
    """The whole portal over ASGI: a local notebook's origin is served beside the pages."""
    from types import SimpleNamespace

    from gpupaas.asgi import application

    from .kit.asgi import serve

    with serve(application) as url:
        yield SimpleNamespace(url=url)


def test_a_user_deploys_a_notebook_and_opens_jupyterlab(
    asgi_portal, celery_worker_process, lab_host, page
):
    portal_server = asgi_portal
    instance = lab_host
    page.goto(portal_server.url + "/accounts/login/")
    page.fill("#id_login", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{portal_server.url}/instances/{instance.pk}/")
    page.click("a:has-text('New notebook')")
    page.fill("#id_name", "first-look")
    page.click("button:has-text('Deploy')")
    page.wait_for_selector("h1:has-text('first-look')")
    page.wait_for_selector(".steps")  # progress is shown while it deploys
    page.wait_for_selector("text=Open JupyterLab", timeout=60_000)
    assert "Reachable" in page.inner_text(".steps")

    with page.context.expect_page() as opened:
        page.click("text=Open JupyterLab")
    lab = opened.value
    lab.wait_for_load_state()
    lab.wait_for_function("document.title.includes('JupyterLab')", timeout=60_000)
    # At its origin on the portal (the browser never sees the server's own port).
    assert re.match(r"http://n\d+-[a-z0-9]{10}\.localhost:\d+/lab", lab.url), lab.url
    # It opens without the "receive official Jupyter news?" pop-up: that plugin is off.
    config = lab.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent)")
    assert "@jupyterlab/apputils-extension:announcements" in config["disabledExtensions"]
    assert config["news"] == {"disabled": True}
