"""The browser shell in a real browser: Debian's Chromium (Playwright) on the portal served
by uvicorn with Channels over HTTPS, a shell in the instance's pod (the kit's kubelet
stand-in), its kubectl through the portal's proxy to the Kubernetes API emulator."""

import re
import shutil

import pytest

from .conftest import PASSWORD, workspace_of
from .test_remote_access import emu, namespace_of, profile, tls  # noqa: F401  (fixtures)
from .test_shell import alice_kube, kubelet, portal  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.browser, pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]
WATCH_CSP = """window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}`));
"""


def sign_in(page, url: str, username: str) -> None:
    page.goto(url + "/accounts/login/")
    page.fill("#id_login", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def screen(page) -> str:
    return page.evaluate("document.querySelector('.xterm-rows').textContent")


def wait_for_screen(page, text: str, timeout: float = 20_000) -> None:
    from playwright.sync_api import TimeoutError as Timeout

    try:
        page.wait_for_function(
            "(text) => document.querySelector('.xterm-rows').textContent.includes(text)",
            arg=text, timeout=timeout)
    except Timeout:
        raise AssertionError(f"{text!r} never showed; the terminal shows:\n"
                             f"{page.inner_text('.xterm-rows')}") from None


def type_line(page, line: str) -> None:
    page.keyboard.type(line)
    page.keyboard.press("Enter")


@pytest.fixture
def namespace(alice_kube):  # noqa: F811
    return namespace_of(alice_kube)


def test_the_shell_appears_when_the_instance_runs_and_kubectl_answers_through_the_portal(
    portal, alice, bob, profile, kubelet, page  # noqa: F811
):
    from instances import services

    page.add_init_script(WATCH_CSP)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    instance = services.launch_instance(workspace=workspace_of(alice), name="train",
                                        profile=profile, by=alice)
    sign_in(page, portal, "alice")
    page.goto(f"{portal}/instances/{instance.pk}/")
    page.wait_for_selector("#remote-access")
    assert page.locator("a:has-text('Open shell')").count() == 0
    services.provision_instance(instance_id=instance.pk)
    # No reload: the card asks again while the instance is on its way.
    page.click("a:has-text('Open shell')", timeout=10_000)
    page.wait_for_selector("#shell-state:has-text('Connected')")
    wait_for_screen(page, "Shell in pod gpupaas-shell-")

    page.click("#terminal")
    type_line(page, "kubectl get ns")
    wait_for_screen(page, "kube-system")
    type_line(page, "kubectl auth can-i create pods; echo CANI-$((1+1))")
    wait_for_screen(page, "CANI-2")
    # The emulator speaks no protobuf, which kubectl uses for this review: it answers with
    # its refusal (a real server says yes); either way the answer came through the portal.
    assert ("yes" in screen(page)) or ("UnsupportedMediaType" in screen(page))

    # Paste from the clipboard (the button, as Ctrl+Shift+V does).
    page.evaluate("navigator.clipboard.writeText('echo PASTED-$((2+2))')")
    page.click("#shell-paste")
    wait_for_screen(page, "echo PASTED-$((2+2))")
    page.keyboard.press("Enter")
    wait_for_screen(page, "PASTED-4")
    assert page.evaluate("window.__csp") == []

    # exit ends the session; Reconnect opens a new one in the same pod.
    type_line(page, "exit")
    page.wait_for_selector("#shell-state:has-text('Closed: The shell ended.')")
    page.click("#shell-reconnect")
    page.wait_for_selector("#shell-state:has-text('Connected')")
    wait_for_screen(page, "Shell in pod gpupaas-shell-")

    # Someone else's shell page is a 404.
    page.context.clear_cookies()
    sign_in(page, portal, "bob")
    assert page.goto(f"{portal}/access/instances/{instance.pk}/shell/").status == 404


def test_on_a_phone_the_terminal_fits_and_the_key_row_types(
    portal, alice, alice_kube, kubelet, page  # noqa: F811
):
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, portal, "alice")
    page.goto(f"{portal}/access/instances/{alice_kube.pk}/shell/")
    wait_for_screen(page, "Shell in pod")
    assert page.locator("#shell-keys").is_visible()
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
    page.click("#terminal")
    type_line(page, "echo ROW-$((40+2))")
    wait_for_screen(page, "ROW-42")
    page.click("#shell-keys [data-key='up']")  # recall the last line
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('.xterm-rows').textContent.split('ROW-42').length > 2")
    type_line(page, "sleep 30")
    page.click("#shell-keys [data-key='ctrl']")
    page.keyboard.type("c")  # Ctrl, then c: an interrupt
    type_line(page, "echo BACK-$((1+2))")
    wait_for_screen(page, "BACK-3", timeout=10_000)
    type_line(page, "stty size")
    page.wait_for_timeout(300)
    rows, cols = map(int, re.search(r"stty size\s*(\d+) (\d+)", screen(page)).groups())
    assert 20 <= cols <= 60 and rows >= 8, (rows, cols)
