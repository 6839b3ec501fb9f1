"""The pages work in a real browser under the Content Security Policy: no inline script or
style anywhere, htmx polls and swaps, and Chromium reports no violation."""

from pathlib import Path

import pytest

from instances import services as instance_services
from notebooks import services as notebook_services
from notebooks.models import NotebookProfile

from .conftest import PASSWORD, ROOT, workspace_of

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
WATCH = """window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}`));
"""


@pytest.fixture
def alices_notebook(alice, catalogue):
    instance = instance_services.launch_instance(
        workspace=workspace_of(alice), name="csp-host", profile=catalogue[1], by=alice)
    instance = instance_services.provision_instance(instance_id=instance.pk)
    # No worker: it stays `deploying`, so its page keeps polling.
    return notebook_services.deploy_notebook(
        instance=instance, name="csp-nb", profile=NotebookProfile.objects.get(name="minimal"),
        by=alice)


def test_every_page_works_under_the_policy_with_no_violation(portal_server, alices_notebook,
                                                             page):
    notebook, instance = alices_notebook, alices_notebook.instance
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/status/" in r.url else None)
    page.add_init_script(WATCH)

    login = page.goto(portal_server.url + "/accounts/login/")
    policy = login.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "camera=()" in login.headers["permissions-policy"]
    page.fill("#id_login", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=GPUs in use")
    # The GPU meter's width is set by portal.js, not an inline style attribute.
    assert page.eval_on_selector(".meter span", "e => e.getBoundingClientRect().width") > 0
    assert page.evaluate("window.__csp") == []

    for path in ("/instances/", f"/instances/{instance.pk}/", "/instances/new/",
                 "/notebooks/", "/notebooks/new/", f"/notebooks/{notebook.pk}/"):
        response = page.goto(portal_server.url + path)
        assert response.status == 200 and "content-security-policy" in response.headers
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__csp") == [], path
    page.wait_for_timeout(2500)  # the notebook page polls its status every 2 s
    assert any(f"/notebooks/{notebook.pk}/status/" in url for url in polls)
    page.wait_for_selector("#notebook-status")
    assert page.evaluate("window.__csp") == []
    assert not [m for m in console if "Content Security Policy" in m], console


def test_no_template_carries_inline_script_or_style():
    """What the browser test cannot visit: inline code would break under the policy."""
    import re

    inline = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\son[a-z]+=|\shx-on|"
                        r"\sstyle=|javascript:", re.I)
    offenders = [f"{path.relative_to(ROOT)}: {match.group(0)}"
                 for path in Path(ROOT, "templates").rglob("*.html")
                 for match in inline.finditer(path.read_text())]
    assert offenders == []


def test_the_admin_works_under_the_policy_with_no_violation(portal_server, admin_user,
                                                            alices_notebook, page):
    page.add_init_script(WATCH)
    page.goto(portal_server.url + "/accounts/login/")
    page.fill("#id_login", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    for path in ("/admin/", "/admin/instances/instance/",
                 f"/admin/instances/instance/{alices_notebook.instance_id}/change/",
                 f"/admin/auth/user/{admin_user.pk}/change/", "/admin/auth/group/add/"):
        response = page.goto(portal_server.url + path)
        assert response.status == 200, path
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__csp") == [], path
