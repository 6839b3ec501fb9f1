"""A newcomer deploys TensorBoard from the instance's page in Chromium and opens it on its
own origin, signed in there by the portal; its page loads whole at 1366 and 390 px."""

import pytest

from .conftest import PASSWORD, running_instance
from .kit.asgi import serve

pytestmark = pytest.mark.browser


@pytest.fixture
def portal(transactional_db, celery_worker_process):
    from gpupaas.asgi import application

    with serve(application) as url:
        yield url


@pytest.fixture
def instance(alice, catalogue):
    """A running instance of alice's (set up before the browser, see `page`)."""
    return running_instance(alice, catalogue[1], "board-host")


def test_a_user_deploys_tensorboard_and_opens_it_on_its_own_origin(portal, instance, page):
    page.goto(portal + "/accounts/login/")
    page.fill("#id_login", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{portal}/instances/{instance.pk}/")
    page.click("a:has-text('Deploy a service')")
    page.fill("#id_name", "curves")
    page.select_option("#id_profile", label="TensorBoard (1 CPU, 2 GiB by default)")
    page.click("button:has-text('Deploy')")
    page.wait_for_selector("h1:has-text('curves')")
    page.wait_for_selector(".steps")
    page.wait_for_selector("text=Open TensorBoard", timeout=90_000)

    problems: list[str] = []
    with page.context.expect_page() as opened:
        page.click("text=Open TensorBoard")
    board = opened.value
    # (A reload aborts what the page still had in flight: that is no failure of the proxy.)
    board.on("requestfailed", lambda r: r.failure != "net::ERR_ABORTED"
             and problems.append(f"failed {r.url}: {r.failure}"))
    board.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
    board.wait_for_load_state("networkidle")
    board.wait_for_function("document.title.includes('TensorBoard')", timeout=60_000)
    assert board.url.startswith("http://s") and ".localhost:" in board.url
    assert problems == []
    # The portal's session cookie never reaches the service's origin.
    assert all(c["name"] != "sessionid" for c in board.context.cookies(board.url))
    for width in (1366, 390):
        board.set_viewport_size({"width": width, "height": 800})
        board.reload(wait_until="networkidle")
        board.wait_for_function("document.title.includes('TensorBoard')")
        assert problems == [], (width, problems)
