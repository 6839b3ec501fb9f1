"""The one bearer-token kernel (workspaces.tokens): API tokens and kubeconfig tokens are
made, stored and checked the same way, in the same order, each refused in its own words."""

from datetime import timedelta

import pytest
from django.utils import timezone

from access.models import AccessToken
from access.services import issue_access_token
from api.models import ApiToken
from api.services import create_api_token
from workspaces.tokens import check_token, hash_token

from .conftest import running_instance

pytestmark = pytest.mark.django_db


@pytest.fixture
def tokens(alice, catalogue, settings):
    settings.ACCESS_TOKEN_MAX_TTL_HOURS = 24
    api_row, api_plain = create_api_token(user=alice, name="ci", days=1, scope="read")
    instance = running_instance(alice, catalogue[1], "tok")
    access_row, access_plain = issue_access_token(user=alice, instance=instance, hours=1)
    return {ApiToken: (api_row, api_plain), AccessToken: (access_row, access_plain)}


@pytest.mark.parametrize("model", [ApiToken, AccessToken])
def test_one_check_in_one_order_for_every_kind_of_token(tokens, model):
    row, plain = tokens[model]
    assert row.token_hash == hash_token(plain) and plain not in str(
        model.objects.filter(pk=row.pk).values().get())  # only the digest is stored
    assert check_token(model, plain) == (row, "")
    assert check_token(model, plain + "x") == (None, "The token is not valid.")
    assert check_token(model, "") == (None, "The token is not valid.")

    model.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert check_token(model, plain)[1] == model.EXPIRED
    # Revoked comes before expired: the user is told the reason that matters.
    model.objects.filter(pk=row.pk).update(revoked_at=timezone.now(), revoked_reason="by bob")
    assert check_token(model, plain)[1] == "The token was revoked (by bob)."


def test_each_kind_says_how_to_get_a_new_one(tokens):
    assert "API tokens page" in ApiToken.EXPIRED
    assert "download a new kubeconfig" in AccessToken.EXPIRED


@pytest.mark.parametrize(("model", "url"), [
    (ApiToken, "/admin/api/apitoken/"), (AccessToken, "/admin/access/accesstoken/")])
def test_an_administrator_revokes_either_kind_and_it_is_refused_and_audited(
        tokens, admin_client, admin_user, model, url):
    from workspaces.models import AuditEvent

    row, plain = tokens[model]
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(f"{url}add/").status_code == 403  # never typed in
    response = admin_client.post(url, {"action": "revoke", "_selected_action": [str(row.pk)]},
                                 follow=True)
    assert "1 token(s) revoked." in response.content.decode()
    assert check_token(model, plain)[1].startswith("The token was revoked (revoked by ")
    assert AuditEvent.objects.filter(actor=admin_user, action__endswith="_token.revoked").exists()
