"""In a real browser: alice makes a token on the API tokens page, copies it once, a script
uses it, she revokes it; and the interactive API docs load under the Content Security Policy
and call the API with her session."""

import httpx
import pytest

from .conftest import PASSWORD
from .test_csp_browser import WATCH

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, url: str) -> None:
    page.goto(url + "/accounts/login/")
    page.fill("#id_login", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Your workspace is ready")


def test_a_token_made_on_the_page_works_once_copied_and_stops_when_revoked(
        portal_server, alice, catalogue, page):
    sign_in(page, portal_server.url)
    page.click("nav >> text=API tokens")
    page.fill("#id_name", "laptop")
    page.check("text=Read and write")
    page.click("button:has-text('Create token')")
    token = page.input_value("#new-token-value")
    assert token.startswith("gpa_")
    assert "it will not be shown again" in page.inner_text("#new-token")

    auth = {"Authorization": f"Bearer {token}"}
    me = httpx.get(f"{portal_server.url}/api/v1/me", headers=auth).json()
    assert (me["username"], me["token"]["scope"]) == ("alice", "write")

    page.goto(portal_server.url + "/api-tokens/")
    assert token not in page.content()
    row = page.locator("#api-tokens tr", has_text="laptop")
    assert "Read and write" in row.inner_text()
    row.locator("button:has-text('Revoke')").click()
    page.wait_for_selector("text=revoked (revoked by alice)")
    refused = httpx.get(f"{portal_server.url}/api/v1/me", headers=auth)
    assert refused.status_code == 401


def test_the_interactive_docs_load_under_the_policy_and_call_the_api(
        portal_server, alice, catalogue, page):
    sign_in(page, portal_server.url)
    page.add_init_script(WATCH)
    page.goto(portal_server.url + "/api/docs")
    page.wait_for_selector("text=GPU portal API")
    operation = page.locator(".opblock", has_text="/api/v1/quota")
    operation.locator(".opblock-summary").click()
    page.click("button:has-text('Try it out')")
    page.click("button:has-text('Execute')")
    page.wait_for_selector(".live-responses-table .response-col_status:has-text('200')")
    assert '"max_gpus": 8' in page.inner_text(".live-responses-table")
    assert page.evaluate("window.__csp") == []
