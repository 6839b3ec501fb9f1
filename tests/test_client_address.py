"""The audit trail's client address cannot be forged, and an audit row is never what breaks a
request: one function reads the address for pages, the API, the Kubernetes proxy and the
shell; exactly TRUSTED_PROXY_COUNT hops of X-Forwarded-For are trusted, and what is not an
address falls back to the connection's peer."""

import logging

import pytest
import requests
from django.db import connection, transaction

from api import services as api_services
from api.models import ApiToken
from gpupaas.metrics import AUDIT_WRITE_FAILURES
from workspaces.models import AuditEvent
from workspaces.services import client_address, record_audit

from .conftest import make_user
from .test_ops import start_portal, stop

GARBAGE = ["not-an-ip", "", " , ,", "1.2.3.4:80", "x" * 10_000, "999.1.1.1",
           "6.6.6.6, not-an-ip"]


@pytest.mark.parametrize("forwarded", GARBAGE + ["6.6.6.6", "6.6.6.6, 7.7.7.7"])
def test_without_trusted_proxies_the_peer_is_the_client(settings, forwarded):
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_address("192.0.2.10", forwarded) == "192.0.2.10"


def test_behind_proxies_exactly_their_hops_are_trusted(settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # The client prepends what it likes; the proxy appends the address it saw.
    assert client_address("10.0.0.2", "6.6.6.6, 203.0.113.7") == "203.0.113.7"
    assert client_address("10.0.0.2", "2001:db8::1") == "2001:db8::1"
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_address("10.0.0.2", "6.6.6.6, 203.0.113.7, 10.0.0.9") == "203.0.113.7"
    # Fewer hops than proxies, or not an address where the proxy writes one: the peer.
    assert client_address("10.0.0.2", "203.0.113.7") == "10.0.0.2"
    settings.TRUSTED_PROXY_COUNT = 1
    for forwarded in GARBAGE:
        assert client_address("10.0.0.2", forwarded) == "10.0.0.2", forwarded
    # A long chain: still the one entry the proxy wrote.
    assert client_address("10.0.0.2", ", ".join(["6.6.6.6"] * 2000 + ["203.0.113.7"])) \
        == "203.0.113.7"
    assert client_address("not-a-peer", "") is None


@pytest.mark.django_db(transaction=True)
def test_an_audit_row_that_cannot_be_written_never_breaks_the_action(caplog):
    """Inside the caller's transaction: the action goes on, the row is logged at error level
    and counted, and an address that is not one is recorded as none, not as an error."""
    alice = make_user("alice")
    before = AUDIT_WRITE_FAILURES.labels("audit")._value.get()
    with caplog.at_level(logging.ERROR), transaction.atomic():
        kept = record_audit(action="test.garbage", obj=alice, actor=alice,
                            ip_address="not-an-ip")
        lost = record_audit(action="test.unwritable", obj=alice, actor=alice,
                            data_unwritable=object())
        with connection.cursor() as cursor:  # the transaction is not aborted
            cursor.execute("SELECT 1")
    assert kept is not None and AuditEvent.objects.get(pk=kept.pk).ip_address is None
    assert lost is None
    assert AUDIT_WRITE_FAILURES.labels("audit")._value.get() == before + 1
    assert "audit row not written (audit)" in caplog.text and "test.unwritable" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_live_portal_trusts_no_forwarder_not_even_loopback(tmp_path, monkeypatch):
    """A tenant's kernel on the portal's machine sends X-Forwarded-For from 127.0.0.1: the
    servers the portal starts (gunicorn with uvicorn workers) do not take it, so the API
    token's last-use address is the real peer, and garbage is no 500."""
    monkeypatch.delenv("TRUSTED_PROXY_COUNT", raising=False)
    monkeypatch.delenv("BEHIND_TLS_PROXY", raising=False)
    alice = make_user("alice")
    _, plain = api_services.create_api_token(user=alice, name="cli", days=1, scope="read")
    proc, base, log = start_portal(tmp_path)
    try:
        for forwarded in ("6.6.6.6", "not-an-ip", "x" * 4000, "6.6.6.6, 7.7.7.7"):
            answer = requests.get(f"{base}/api/v1/instances", timeout=30, headers={
                "Authorization": f"Bearer {plain}", "X-Forwarded-For": forwarded})
            assert answer.status_code == 200, (forwarded, answer.text[:300])
            assert ApiToken.objects.get(user=alice).last_used_ip == "127.0.0.1"
    finally:
        stop(proc)


@pytest.mark.django_db
@pytest.mark.parametrize(("count", "forwarded", "recorded"), [
    (0, "6.6.6.6", "192.0.2.5"),
    (0, "not-an-ip", "192.0.2.5"),
    (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),
    (1, "x" * 5000, "192.0.2.5"),
    (1, "203.0.113.9, not-an-ip", "192.0.2.5"),
])
def test_an_audited_page_records_the_trusted_address_whatever_the_header(
        client, settings, count, forwarded, recorded):
    """A page that writes an audit row (creating an API token): forged, long or garbage
    X-Forwarded-For is neither recorded nor an error."""
    settings.TRUSTED_PROXY_COUNT = count
    alice = make_user("alice")
    client.force_login(alice)
    page = client.post("/api-tokens/", {"name": "cli", "days": 30, "scope": "read"},
                       REMOTE_ADDR="192.0.2.5", HTTP_X_FORWARDED_FOR=forwarded)
    assert page.status_code == 200
    row = AuditEvent.objects.filter(actor=alice).latest("pk")
    assert row.ip_address == recorded


def test_several_forwarded_lines_count_as_one_list_on_the_asgi_side(settings):
    """The proxy and the shell read the same address a page would (Django joins repeated
    header lines): a second X-Forwarded-For line cannot push the trusted hop aside."""
    from access.proxy import scope_client_ip

    settings.TRUSTED_PROXY_COUNT = 1
    scope = {"client": ("10.0.0.2", 5555), "headers": [
        (b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"203.0.113.9")]}
    assert scope_client_ip(scope) == "203.0.113.9"
    settings.TRUSTED_PROXY_COUNT = 2
    assert scope_client_ip(scope) == "6.6.6.6"
