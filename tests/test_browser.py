"""A user in a real browser: logs in, launches, watches it run without reloading, deletes it.

Debian's Chromium driven by Playwright (never a browser download) against a live server, with
a real Celery worker process doing the provisioning.
"""

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
    from instances import services as instance_services
    from instances.models import Instance

    from .conftest import wait_for, workspace_of

    instance = instance_services.launch_instance(
        workspace=workspace_of(alice), name="lab-host", profile=catalogue[1], by=alice)
    # The live worker may take the provisioning task first: either way, wait for running.
    instance_services.provision_instance(instance_id=instance.pk)
    return wait_for(lambda: Instance.objects.filter(pk=instance.pk, status="running").first())


def test_a_user_deploys_a_notebook_and_opens_jupyterlab(
    portal_server, celery_worker_process, lab_host, page
):
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
    assert lab.url.startswith("http://127.0.0.1:") and "/lab" in lab.url
