"""The browser shell in a real browser: Debian's Chromium (Playwright) on the portal served
by uvicorn with Channels, kubectl through the portal's proxy to the Kubernetes API emulator."""

import shutil

import pytest

from .conftest import PASSWORD
from .test_remote_access import emu, namespace_of, profile  # noqa: F401  (fixtures)
from .test_shell import alice_kube, portal, shell_processes  # noqa: F401  (fixtures)

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


def test_a_user_opens_the_shell_runs_kubectl_and_is_refused_another_server(
    portal, alice, bob, alice_kube, namespace, page  # noqa: F811
):
    page.add_init_script(WATCH_CSP)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, portal, "alice")
    page.goto(f"{portal}/instances/{alice_kube.pk}/")
    page.click("a:has-text('Open shell')")
    page.wait_for_selector("#shell-state:has-text('Connected')")
    wait_for_screen(page, "Kubernetes shell for train")

    page.click("#terminal")
    type_line(page, f"kubectl get ns {namespace}")
    wait_for_screen(page, "AGE")
    wait_for_screen(page, f"{namespace} ")

    type_line(page, "kubectl get pods --server=https://example.com")
    wait_for_screen(page, "--server is refused: this shell reaches the instance only "
                          "through the portal.")

    # Tab completes through kubectl's own completion.
    page.keyboard.type("kubectl versi")
    page.keyboard.press("Tab")
    wait_for_screen(page, "kubectl version ")
    page.keyboard.type("--cli")
    page.keyboard.press("Tab")
    wait_for_screen(page, "kubectl version --client ")
    page.keyboard.press("Enter")
    wait_for_screen(page, "Client Version:")

    # Paste from the clipboard (the button, as Ctrl+Shift+V does).
    page.evaluate("navigator.clipboard.writeText('kubectl api-versions')")
    page.click("#shell-paste")
    # The button reads the clipboard asynchronously: Enter goes once the text is in the line
    # (pressed at once, it could arrive first and leave the pasted command unsent).
    wait_for_screen(page, "$ kubectl api-versions")
    page.keyboard.press("Enter")
    wait_for_screen(page, "apps/v1")
    assert page.evaluate("window.__csp") == []

    # exit ends the session; Reconnect opens a new one.
    type_line(page, "exit")
    page.wait_for_selector("#shell-state:has-text('Closed: The shell ended.')")
    page.click("#shell-reconnect")
    page.wait_for_selector("#shell-state:has-text('Connected')")
    wait_for_screen(page, "Kubernetes shell for train")

    # Someone else's shell page is a 404.
    page.context.clear_cookies()
    sign_in(page, portal, "bob")
    assert page.goto(f"{portal}/access/instances/{alice_kube.pk}/shell/").status == 404


def terminal_size() -> tuple[int, int]:
    """(rows, columns) of the open shell's pseudo-terminal, read on the server's side."""
    import fcntl
    import struct
    import termios

    [pid] = shell_processes()
    with open(f"/proc/{pid}/fd/0", "rb") as tty:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(tty, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def test_the_terminal_follows_the_window_size(portal, alice, alice_kube, page):  # noqa: F811
    page.set_viewport_size({"width": 1400, "height": 900})
    sign_in(page, portal, "alice")
    page.goto(f"{portal}/access/instances/{alice_kube.pk}/shell/")
    wait_for_screen(page, "Kubernetes shell")
    rows, cols = terminal_size()
    assert cols > 100 and rows > 20

    page.set_viewport_size({"width": 600, "height": 700})
    page.wait_for_timeout(500)
    narrower = terminal_size()
    assert narrower[1] < cols - 40 and narrower[0] < rows, (rows, cols, narrower)
