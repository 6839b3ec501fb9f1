"""What a user sees in a real browser: pages that stay live across tabs, a phone layout
with no sideways scroll, and a quota refusal a person can read.

Debian's Chromium driven by Playwright against a live server (see `page` in conftest).
"""

import pytest
from django.utils import timezone

from .conftest import PASSWORD, running_instance, workspace_of

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, base: str, username: str) -> None:
    page.goto(base + "/accounts/login/")
    page.fill("#id_login", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


@pytest.fixture
def run_a(alice, catalogue):
    """A running instance of alice's (set up before the browser, see `page`)."""
    return running_instance(alice, catalogue[1], "run-a")


def test_a_delete_in_another_tab_shows_on_the_instance_page_without_reloading(
    portal_server, run_a, page
):
    base = portal_server.url
    sign_in(page, base, "alice")
    delete_url = f"{base}/instances/{run_a.pk}/delete/"
    stale = page.context.new_page()
    stale.goto(delete_url)  # a confirmation left open from earlier
    page.goto(f"{base}/instances/{run_a.pk}/")
    page.wait_for_selector("#instance-status .status-running")
    page.evaluate("window.__still_here = true")

    other = page.context.new_page()
    other.goto(delete_url)
    other.click("button:has-text('Delete run-a')")
    other.wait_for_selector("text=You asked to delete run-a.")

    # Running pages poll every 10 s: the first tab follows within that, without a reload.
    page.wait_for_selector("#instance-status .status-deleting", timeout=15_000)
    assert page.evaluate("window.__still_here") is True
    assert page.locator("#instance-status a:has-text('Delete')").count() == 0

    stale.click("button:has-text('Delete run-a')")
    stale.wait_for_selector("text=run-a is already being deleted.")


@pytest.fixture
def busy_alice(alice, admin_user, catalogue, run_a):
    """alice with a running instance, a pending one with a long name, and a notebook."""
    from instances import services
    from notebooks import services as notebooks
    from notebooks.models import NotebookProfile

    services.launch_instance(workspace=workspace_of(alice), by=alice, profile=catalogue[2],
                             name="fine-tune-llama-on-q3-support-tickets")
    notebook = notebooks.deploy_notebook(
        instance=run_a, name="explore-the-support-ticket-data", by=alice,
        profile=NotebookProfile.objects.get(name="minimal"))
    # An API service with a key: its page carries the curl and Python examples.
    from notebooks.models import Service, ServiceKey, ServiceProfile

    llm = Service.objects.create(
        instance=run_a, name="support-ticket-triage-model", created_by=alice, cpu=8,
        memory_gib=32, profile=ServiceProfile.objects.get(name="vllm"),
        model="meta-llama/Llama-3.1-8B-Instruct", status="running")
    ServiceKey.objects.create(service=llm, user=alice, token_hash="0" * 64, name="eval",
                              prefix="gps_abcdef", expires_at=llm.created_at
                              + timezone.timedelta(days=90))
    return {"instance": run_a.pk, "notebook": notebook.pk, "service": llm.pk}


def test_every_page_fits_a_390_px_phone_without_sideways_scroll(
    portal_server, busy_alice, page
):
    base = portal_server.url
    page.set_viewport_size({"width": 390, "height": 844})

    def fits(path: str) -> None:
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide"

    fits("/accounts/login/")
    sign_in(page, base, "alice")
    # The navigation folds behind Menu, and opens to a readable list.
    assert not page.is_visible("text=Log out")
    page.click("button.menu-toggle")
    assert page.is_visible("nav >> text=Notebooks") and page.is_visible("text=Log out")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    instance, notebook = busy_alice["instance"], busy_alice["notebook"]
    for path in ("/", "/instances/", "/instances/new/", f"/instances/{instance}/",
                 f"/instances/{instance}/delete/", "/notebooks/", "/notebooks/new/",
                 f"/notebooks/{notebook}/", f"/notebooks/{notebook}/delete/", "/services/",
                 "/services/new/", f"/services/{busy_alice['service']}/"):
        fits(path)
    # Tables become cards: every cell, the status included, is on screen.
    page.goto(base + "/instances/")
    for cell in page.query_selector_all("table.list td"):
        box = cell.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, cell.inner_text()

    page.click("button.menu-toggle")
    page.click("text=Log out")
    sign_in(page, base, "admin")
    fits("/admin/overview/")


def test_the_admin_lists_fit_a_1366_px_screen(portal_server, busy_alice, page):
    base = portal_server.url
    page.set_viewport_size({"width": 1366, "height": 800})
    sign_in(page, base, "admin")
    for path in ("/admin/instances/computeprofile/", "/admin/workspaces/workspace/",
                 "/admin/overview/"):
        page.goto(base + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1366, f"{path} is {width} px wide"


@pytest.fixture
def train_a(alice, catalogue):
    from instances import services

    workspace = workspace_of(alice)
    workspace.max_gpus = 8
    workspace.save()
    return services.launch_instance(workspace=workspace, name="train-a", profile=catalogue[4],
                                    by=alice)


def test_a_launch_that_lost_the_quota_race_says_why_in_plain_words(
    portal_server, train_a, page
):
    base = portal_server.url
    sign_in(page, base, "alice")
    page.goto(base + "/instances/new/")
    page.fill("#id_name", "train-c")
    page.click("text=Large · 4 GPUs")  # fits now: 4 of 8 GPUs in use
    summary = page.inner_text("#launch-summary")
    assert "Takes 4 GPUs and 1 instance from your quota" in summary
    assert "Left after launch: 0 of 8 GPUs" in summary

    # Meanwhile, another tab takes 2 more GPUs.
    other = page.context.new_page()
    other.goto(base + "/instances/new/")
    other.fill("#id_name", "train-b")
    other.click("text=Medium · 2 GPUs")
    other.click("button:has-text('Launch')")
    other.wait_for_selector("h1:has-text('train-b')")

    page.click("button:has-text('Launch')")
    # The wizard sends the form with htmx: the refusal comes back alone, above the form,
    # and takes the focus so a screen reader says it.
    error = page.wait_for_selector("#launch-feedback .form-error[role=alert]")
    assert error.inner_text() == (
        "Size: Your quota is 8 GPUs and 6 are in use by train-a and train-b; this size "
        "needs 4.")
    assert page.evaluate("document.activeElement.closest('#launch-feedback') !== null")
    assert page.get_attribute("#launch-feedback a", "href") == "#step-2"
    assert page.input_value("#id_name") == "train-c"  # what she typed is kept
    assert page.url.endswith("/instances/new/")
