"""The API tokens page: a token is shown once and kept only as a hash, named, with an expiry
no longer than the administrator allows, read-only or read-write, with its last use; revoking
one refuses it from the next request. bob can neither see nor revoke alice's."""

import hashlib
import re
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from api.models import ApiToken
from workspaces.models import AuditEvent


def create(client, **form):
    return client.post("/api-tokens/", {"name": "ci-runner", "days": 30, "scope": "read",
                                        **form})


def shown_token(response) -> str:
    return re.search(r'id="new-token-value"[^>]*value="(gpa_[^"]+)"',
                     response.content.decode()).group(1)


def test_a_new_token_is_shown_once_and_stored_only_as_its_hash(alice_client, alice):
    response = create(alice_client, scope="write")
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    plain = shown_token(response)
    token = ApiToken.objects.get()
    assert token.token_hash == hashlib.sha256(plain.encode()).hexdigest()
    assert (token.name, token.scope, token.user) == ("ci-runner", "write", alice)
    assert plain[:10] == token.prefix and plain not in str(
        ApiToken.objects.values().get())
    assert timedelta(days=29, hours=23) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert AuditEvent.objects.filter(action="api_token.created", actor=alice).exists()
    # Ready to paste: a Copy button for the token, and the login line (without the token,
    # which `gpupaas login` asks for, out of the shell's history).
    page = response.content.decode()
    assert f'data-copy="{plain}">Copy token</button>' in page
    assert 'data-copy="gpupaas login --url http://testserver">Copy command</button>' in page

    again = alice_client.get("/api-tokens/").content.decode()
    assert plain not in again and f"{token.prefix}…" in again and ">never<" in again


def test_the_page_shows_the_last_use(alice_client, alice):
    plain = shown_token(create(alice_client))
    assert Client().get("/api/v1/instances", HTTP_AUTHORIZATION=f"Bearer {plain}",
                        REMOTE_ADDR="10.1.2.3").status_code == 200
    page = alice_client.get("/api-tokens/").content.decode()
    assert "from 10.1.2.3" in page and ">never<" not in page


def test_expiry_is_capped_at_the_administrators_maximum(alice_client, settings):
    settings.API_TOKEN_MAX_DAYS = 90
    page = alice_client.get("/api-tokens/").content.decode()
    assert 'max="90"' in page and "At most 90 days" in page
    refused = create(alice_client, days=91)
    assert refused.status_code == 400
    assert "Choose between 1 and 90 days." in refused.content.decode()
    assert not ApiToken.objects.exists()


def test_bad_input_writes_nothing_and_says_why(alice_client):
    for form, message in [({"name": ""}, "Give the token a name."),
                          ({"scope": "admin"}, "Select a valid choice."),
                          ({"days": "soon"}, "Enter a whole number of days.")]:
        response = create(alice_client, **form)
        assert response.status_code == 400 and message in response.content.decode()
    create(alice_client)
    twice = create(alice_client)
    assert "You already have an active token named ci-runner." in twice.content.decode()
    assert ApiToken.objects.count() == 1


def test_revoking_a_token_refuses_it_from_the_next_request(alice_client, alice):
    plain = shown_token(create(alice_client))
    token = ApiToken.objects.get()
    revoked = alice_client.post(f"/api-tokens/{token.pk}/revoke/", follow=True)
    assert "revoked" in revoked.content.decode()
    refused = Client().get("/api/v1/instances", HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "The token was revoked (revoked by alice)."
    assert AuditEvent.objects.filter(action="api_token.revoked", actor=alice).exists()


def test_bob_can_neither_see_nor_revoke_alices_tokens(alice_client, bob):
    create(alice_client)
    token = ApiToken.objects.get()
    bobs = Client()
    bobs.force_login(bob)
    assert token.prefix not in bobs.get("/api-tokens/").content.decode()
    assert bobs.post(f"/api-tokens/{token.pk}/revoke/").status_code == 404
    assert ApiToken.objects.get().state == "active"
