"""Single sign-on against a real OpenID Connect provider process (tests/kit/oidc.py) on
loopback, through the portal running as a live server: real HTTP all the way."""

import html
import os
import re
import subprocess
import sys

import pytest
import requests
from allauth.socialaccount.models import SocialAccount, SocialApp
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from instances.models import ComputeProfile, Instance
from workspaces.models import GroupPolicy, IdpGroupMapping, Role, Workspace

from .conftest import PASSWORD, ROOT, make_user, workspace_of
from .kit import oidc

pytestmark = pytest.mark.django_db(transaction=True)
PROVIDER_ID = "testidp"


@pytest.fixture(scope="session")
def idp():
    provider = oidc.spawn(users=[])
    yield provider
    provider.terminate()


@pytest.fixture
def portal(portal_server):
    return portal_server


@pytest.fixture
def sso(idp, portal, db):
    """The portal configured for the IdP (as an administrator would in the admin), with the
    IdP's `gpu-users` and `gpu-admins` groups mapped to the portal's roles."""
    idp.reset()
    callback = f"{portal.url}/accounts/oidc/{PROVIDER_ID}/login/callback/"
    idp.set_client("portal", client_secret="portal-secret", redirect_uris=[callback])
    SocialApp.objects.create(
        provider="openid_connect", provider_id=PROVIDER_ID, name="Test IdP",
        client_id="portal", secret="portal-secret", settings={"server_url": idp.issuer})
    users, admins = (Group.objects.create(name=name) for name in ("Researchers", "Operators"))
    GroupPolicy.objects.create(group=users, role=Role.END_USER, default_max_gpus=4)
    GroupPolicy.objects.create(group=admins, role=Role.ADMIN)
    IdpGroupMapping.objects.create(claim_value="gpu-users", group=users)
    IdpGroupMapping.objects.create(claim_value="gpu-admins", group=admins)
    return idp


def sign_in(url: str, username: str, password: str = "pw") -> tuple[requests.Session,
                                                                   requests.Response]:
    """Visit `url` signed out, follow the portal to the IdP, sign in there, come back."""
    session = requests.Session()
    form = session.get(url, timeout=10)
    assert "Test identity provider" in form.text, form.text[:500]
    action = html.unescape(re.search(r'action="([^"]+)"', form.text).group(1))
    idp_base = form.url.split("/authorize")[0]
    page = session.post(idp_base + action, data={"username": username, "password": password},
                        timeout=10)
    return session, page


def test_first_login_creates_the_user_the_workspace_and_the_groups(sso, portal):
    sso.set_user("dana", password="pw", email="dana@example.com", groups=["gpu-users"],
                 name="Dana Scully")

    session, page = sign_in(f"{portal.url}/instances/", "dana")

    assert page.url == f"{portal.url}/instances/"  # back to the page asked for
    assert "No instances yet" in page.text
    user = get_user_model().objects.get(email="dana@example.com")
    assert list(user.groups.values_list("name", flat=True)) == ["Researchers"]
    assert SocialAccount.objects.get(user=user).uid == "dana"
    assert Workspace.objects.filter(owner=user).exists()
    landing = session.get(portal.url + "/", timeout=10).text
    assert "Your workspace is ready" in landing and "4 GPUs" in landing  # the group's quota
    authorize = sso.requests("authorize")[-1]
    assert authorize["code_challenge_method"] == "S256" and authorize["nonce"]


def test_a_groups_claim_of_one_name_is_that_group_and_any_other_shape_is_refused(sso, portal):
    """As the README says: a list of names, or one name as a string (ADFS and some Keycloak
    mappers send one group that way); a number or an object is refused in words."""
    sso.set_user("erin", password="pw", email="erin@example.com", groups=[])
    sso.misbehave(claims={"groups": "gpu-users"})
    _, page = sign_in(portal.url + "/", "erin")
    assert page.status_code == 200 and "Welcome" in page.text
    user = get_user_model().objects.get(email="erin@example.com")
    assert list(user.groups.values_list("name", flat=True)) == ["Researchers"]

    sso.set_user("fred", password="pw", email="fred@example.com", groups=[])
    sso.misbehave(claims={"groups": {"name": "gpu-users"}})
    _, page = sign_in(portal.url + "/", "fred")
    assert page.status_code == 403
    assert "claim as dict, not as a list of group names" in html.unescape(page.text)
    assert not get_user_model().objects.filter(email="fred@example.com").exists()


def test_changed_group_claims_change_membership_at_the_next_login(sso, portal):
    sso.set_user("erin", password="pw", groups=["gpu-users", "gpu-admins"])
    sign_in(portal.url + "/", "erin")
    erin = get_user_model().objects.get(username="erin")
    assert erin.is_staff and erin.is_superuser
    manual = Group.objects.create(name="Book club")  # managed by hand: the IdP leaves it alone
    erin.groups.add(manual)

    sso.set_user("erin", groups=["gpu-users"])
    sign_in(portal.url + "/", "erin")
    erin.refresh_from_db()
    assert set(erin.groups.values_list("name", flat=True)) == {"Researchers", "Book club"}
    assert not erin.is_staff and not erin.is_superuser

    sso.set_user("erin", groups=[])
    _, page = sign_in(portal.url + "/", "erin")
    assert page.status_code == 403 and "No access yet" in page.text


def test_a_user_without_a_role_gets_the_no_access_page_and_no_workspace(sso, portal):
    sso.set_user("frank", password="pw", groups=["interns"])
    session, page = sign_in(portal.url + "/", "frank")
    assert page.status_code == 403
    assert "ask your administrator" in page.text.lower()
    frank = get_user_model().objects.get(username="frank")
    assert not Workspace.objects.filter(owner=frank).exists()
    assert session.get(f"{portal.url}/instances/new/", timeout=10).status_code == 403

    # Given a role by the administrator, the very next request works.
    frank.groups.add(Group.objects.get(name="Researchers"))
    assert session.get(f"{portal.url}/instances/", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        ({"nonce": "someone-elses"}, "nonce mismatch"),
        ({"audience": "another-app"}, "could not be trusted"),
        ({"expired": True}, "could not be trusted"),
        ({"issuer": "https://evil.example"}, "could not be trusted"),
    ],
)
def test_a_spoiled_id_token_is_refused_and_nothing_is_created(sso, portal, spoil, expected):
    sso.set_user("gwen", password="pw", groups=["gpu-users"])
    sso.misbehave(**spoil)
    _, page = sign_in(portal.url + "/", "gwen")
    assert expected in page.text
    assert "Nothing was created or changed" in page.text
    assert not get_user_model().objects.filter(username="gwen").exists()
    assert not SocialAccount.objects.exists()


def test_a_tampered_state_is_refused(sso, portal):
    sso.set_user("hank", password="pw", groups=["gpu-users"])
    session = requests.Session()
    form = session.get(portal.url + "/", timeout=10)
    action = html.unescape(re.search(r'action="([^"]+)"', form.text).group(1))
    idp_base = form.url.split("/authorize")[0]
    answer = session.post(idp_base + action, data={"username": "hank", "password": "pw"},
                          allow_redirects=False, timeout=10)
    callback = answer.headers["Location"]
    tampered = re.sub(r"state=[^&]+", "state=forged", callback)
    page = session.get(tampered, timeout=10)
    assert "Sign-in failed" in page.text
    assert not get_user_model().objects.filter(username="hank").exists()


def test_an_unverified_email_is_refused_when_verification_is_required(sso, portal):
    sso.set_user("ivy", password="pw", email="ivy@example.com", email_verified=False,
                 groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "ivy")
    assert page.status_code == 403
    assert "does not confirm that your email address is verified" in page.text
    assert not get_user_model().objects.filter(email="ivy@example.com").exists()


def test_an_existing_account_is_not_taken_over_by_email(sso, portal):
    make_user("jo")  # jo@example.com, a local account
    sso.set_user("jo-at-idp", password="pw", email="jo@example.com", groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "jo-at-idp")
    assert "already exists in the portal and is not linked" in page.text
    assert not SocialAccount.objects.exists()


def test_the_idp_being_down_gives_a_clear_page_not_a_500(portal, db):
    SocialApp.objects.create(
        provider="openid_connect", provider_id=PROVIDER_ID, name="Company SSO",
        client_id="portal", secret="x", settings={"server_url": "http://127.0.0.1:9"})
    page = requests.get(portal.url + "/", timeout=10)
    assert page.status_code == 503
    assert "The sign-in service (Company SSO) cannot be reached right now" in page.text


def test_logout_ends_the_idp_session_too(sso, portal):
    sso.set_user("kim", password="pw", groups=["gpu-users"])
    session, _ = sign_in(portal.url + "/", "kim")
    page = session.post(f"{portal.url}/accounts/logout/",
                        data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
                        headers={"Referer": portal.url}, timeout=10)
    assert page.url == f"{portal.url}/signed-out/"
    assert "You are signed out" in page.text
    assert sso.requests("logout")[-1]["post_logout_redirect_uri"] == page.url
    # Signing in again asks for the password at the IdP: its session is gone too.
    again = session.get(portal.url + "/", timeout=10)
    assert "Test identity provider" in again.text


def test_an_anonymous_logout_with_sso_is_no_error(sso, portal):
    """Someone signed out (or never signed in) following a logout link: the sign-out page
    answers, never a 500 (the IdP logout hook looked up accounts of an anonymous user)."""
    session = requests.Session()
    page = session.get(f"{portal.url}/accounts/logout/", timeout=10)
    assert page.status_code < 500, page.text[:500]
    session.get(portal.url + "/", timeout=10)  # a CSRF cookie, as a browser has
    page = session.post(f"{portal.url}/accounts/logout/",
                        data={"csrfmiddlewaretoken": session.cookies.get("csrftoken", "")},
                        headers={"Referer": portal.url}, timeout=10)
    assert page.status_code < 500, page.text[:500]


def test_with_sso_passwords_are_for_administrators_only(sso, portal, client, admin_user,
                                                       settings):
    make_user("lee")
    response = client.post("/accounts/login/", {"login": "lee", "password": PASSWORD})
    assert "Password sign-in is for administrators. Please use single sign-on." in (
        response.content.decode())
    response = client.post("/accounts/login/", {"login": "admin", "password": PASSWORD})
    assert response.status_code == 302

    client.logout()
    settings.PASSWORD_LOGIN_ENABLED = False
    response = client.get("/accounts/login/?local")
    assert response.status_code == 403 and "Password sign-in is turned off" in (
        response.content.decode())


def test_profiles_are_shown_and_launched_by_group(client, catalogue, db):
    researchers = Group.objects.create(name="Researchers")
    GroupPolicy.objects.create(group=researchers, role=Role.END_USER)
    big = catalogue[8]
    big.groups.add(researchers)
    alice = make_user("alice2")
    client.force_login(alice)
    assert "Full node · 8 GPUs" not in client.get("/instances/new/").content.decode()
    forged = client.post("/instances/new/", {"name": "sneaky", "profile": big.pk})
    assert "This size is not available to you." in forged.content.decode()
    assert not Instance.objects.exists()

    alice.groups.add(researchers)  # the next request sees it
    workspace = workspace_of(alice)
    workspace.max_gpus = 8
    workspace.save()
    assert "Full node · 8 GPUs" in client.get("/instances/new/").content.decode()
    assert client.post("/instances/new/", {"name": "big", "profile": big.pk}).status_code == 302
    assert ComputeProfile.objects.get(pk=big.pk).groups.count() == 1


def test_a_user_in_several_groups_gets_the_most_generous_quota(db, catalogue):
    from workspaces.selectors import effective_quota

    user = make_user("multi")
    for name, gpus, instances in (("Small", 2, 10), ("Big", 16, 3)):
        group = Group.objects.create(name=name)
        GroupPolicy.objects.create(group=group, role=Role.END_USER, default_max_gpus=gpus,
                                   default_max_instances=instances)
        user.groups.add(group)
    quota = effective_quota(workspace=workspace_of(user))
    assert (quota.max_gpus, quota.max_instances) == (16, 10)
    workspace = workspace_of(user)
    workspace.max_gpus = 1  # an administrator's setting on the workspace wins
    workspace.save()
    assert effective_quota(workspace=workspace).max_gpus == 1


def test_production_settings_pass_the_deploy_check():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DEBUG="false", SECRET_KEY="x" * 20 + "-production-only-9f8e7d6c5b4a3210-abcdefghij",
        ALLOWED_HOSTS="gpu.example.com", SECURE_COOKIES="true", SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000", BEHIND_TLS_PROXY="true",
        DATABASE_URL="postgres://portal@db.example.com:5432/portal",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.browser
def test_a_browser_follows_the_redirect_to_the_idp_and_lands_on_the_portal(sso, portal, page):
    sso.set_user("mona", password="pw", groups=["gpu-users"], name="Mona")
    page.goto(portal.url + "/")
    page.wait_for_selector("text=Test identity provider")  # the IdP's own sign-in form
    page.fill("input[name=username]", "mona")
    page.fill("input[name=password]", "pw")
    page.click("text=Sign in")
    page.wait_for_selector("text=Your workspace is ready")
    assert page.url == portal.url + "/"


def test_an_idle_session_ends_after_the_timeout(client, settings, db):
    import time

    settings.SESSION_IDLE_TIMEOUT_S = 600
    client.force_login(make_user("nina"))
    assert client.get("/").status_code == 200
    session = client.session
    session["last_seen"] = int(time.time()) - 601
    session.save()

    response = client.get("/instances/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/instances/"
    assert client.get("/").status_code == 302  # signed out for good


def test_signing_in_rotates_the_session_key(client, db):
    make_user("omar")
    client.get("/accounts/login/")
    before = client.cookies["sessionid"].value if "sessionid" in client.cookies else ""
    client.post("/accounts/login/", {"login": "omar", "password": PASSWORD})
    after = client.cookies["sessionid"].value
    assert after and after != before
    assert client.get("/").status_code == 200


def test_a_verified_email_links_to_the_existing_account_when_allowed(sso, portal, settings):
    settings.OIDC_LINK_BY_VERIFIED_EMAIL = True
    local = make_user("pat")  # pat@example.com
    sso.set_user("pat-at-idp", password="pw", email="pat@example.com", email_verified=True,
                 groups=["gpu-users"])

    _, page = sign_in(portal.url + "/", "pat-at-idp")

    assert page.status_code == 200 and "Welcome" in page.text
    assert SocialAccount.objects.get(uid="pat-at-idp").user == local
    assert get_user_model().objects.filter(email="pat@example.com").count() == 1


# --- A hostile identity provider (or whoever answers for it) ------------------------------


def refused(page, reason: str) -> None:
    assert page.status_code in (403, 503), page.status_code
    assert reason in html.unescape(page.text), page.text[-1500:]
    assert "Nothing was created or changed" in page.text
    assert not SocialAccount.objects.exists()


@pytest.mark.parametrize("forgery", [
    {"alg": "none"}, {"alg": "HS256"}, {"key": "foreign"}, {"kid": "not-published"},
    {"signature": "garbage"},
], ids=["alg-none", "hs256-client-secret", "foreign-key", "unknown-kid", "garbage-signature"])
def test_a_forged_id_token_signature_is_refused_even_with_an_admin_group(sso, portal, forgery):
    sso.set_user("mallory", password="pw", groups=["gpu-users", "gpu-admins"])
    sso.misbehave(**forgery)
    _, page = sign_in(portal.url + "/", "mallory")
    refused(page, "could not be trusted")
    assert not get_user_model().objects.filter(username="mallory").exists()
    if "alg" not in forgery:
        assert sso.requests("jwks")  # the keys were asked for (allauth never did)


def test_the_jwks_is_cached_and_fetched_again_for_a_rotated_key(sso, portal):
    sso.set_user("quinn", password="pw", groups=["gpu-users"])
    for _ in range(2):
        _, page = sign_in(portal.url + "/", "quinn")
        assert page.status_code == 200 and "Welcome" in page.text
    assert len(sso.requests("jwks")) == 1
    sso.rotate_key()
    _, page = sign_in(portal.url + "/", "quinn")
    assert page.status_code == 200 and "Welcome" in page.text
    assert len(sso.requests("jwks")) == 2


def test_a_key_rotated_under_the_same_kid_is_fetched_once_and_forgeries_do_not_refetch(
    sso, portal
):
    sso.set_user("quinn", password="pw", groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "quinn")
    assert "Welcome" in page.text and len(sso.requests("jwks")) == 1
    sso.rotate_key(same_kid=True)  # the cached key no longer verifies what it signs

    _, page = sign_in(portal.url + "/", "quinn")

    assert page.status_code == 200 and "Welcome" in page.text
    assert len(sso.requests("jwks")) == 2
    for _ in range(3):  # forged signatures under the published kid, one after another
        sso.misbehave(key="foreign")
        _, page = sign_in(portal.url + "/", "quinn")
        assert page.status_code == 403 and "could not be trusted" in html.unescape(page.text)
    # The rotation's refetch opened the window (OIDC_JWKS_REFETCH_S): forgeries fetch nothing.
    assert len(sso.requests("jwks")) == 2


def test_without_the_issuers_keys_nobody_signs_in(sso, portal):
    sso.set_user("rita", password="pw", groups=["gpu-users"])
    sso.configure(jwks_down=True)
    _, page = sign_in(portal.url + "/", "rita")
    refused(page, "cannot be reached right now")
    assert page.status_code == 503 and "tampered" not in page.text


@pytest.mark.parametrize("spoil", [
    {"claims": {"iat": 4102444800}}, {"claims": {"nbf": 4102444800}},
    {"claims": {"exp": None}}, {"claims": {"iat": None}},
    {"audience": ["portal", "someone-else"]},
    {"audience": ["portal", "someone-else"], "azp": "someone-else"},
    {"azp": "someone-else"},
], ids=["iat-future", "nbf-future", "no-exp", "no-iat", "multi-aud-no-azp",
        "multi-aud-other-azp", "other-azp"])
def test_id_token_claims_out_of_bounds_are_refused(sso, portal, spoil):
    sso.set_user("sam", password="pw", groups=["gpu-users"])
    sso.misbehave(**spoil)
    _, page = sign_in(portal.url + "/", "sam")
    refused(page, "could not be trusted")


def test_several_audiences_with_our_client_as_azp_are_accepted(sso, portal):
    sso.set_user("tara", password="pw", groups=["gpu-users"])
    sso.misbehave(audience=["portal", "someone-else"], azp="portal")
    _, page = sign_in(portal.url + "/", "tara")
    assert page.status_code == 200 and "Welcome" in page.text


def test_a_discovery_document_naming_another_issuer_is_not_trusted(sso, portal):
    sso.configure(discovery_issuer="https://evil.example")
    page = requests.get(portal.url + "/", timeout=10)
    assert page.status_code == 503
    assert "names itself 'https://evil.example'" in html.unescape(page.text)
    assert not sso.requests("authorize")


def test_a_userinfo_answer_about_another_subject_is_refused(sso, portal):
    sso.set_user("victor", password="pw", groups=["gpu-users", "gpu-admins"])
    sign_in(portal.url + "/", "victor")
    victor = get_user_model().objects.get(username="victor")
    SocialAccount.objects.all().delete()  # (so that `refused` can count new ones)
    SocialAccount.objects.create(user=victor, provider=PROVIDER_ID, uid="victor")
    sso.set_user("mallory", password="pw", groups=[])
    sso.misbehave(userinfo={"sub": "victor"})

    session, page = sign_in(portal.url + "/", "mallory")

    assert page.status_code == 403 and "about another person" in page.text
    assert not get_user_model().objects.filter(username="mallory").exists()
    assert session.get(portal.url + "/", allow_redirects=False, timeout=10).status_code == 302


@pytest.mark.parametrize(("claims", "reason"), [
    ({"email": None}, "did not send a valid email address"),
    ({"email": "not an address"}, "did not send a valid email address"),
    ({"email": ["a@example.com"]}, "did not send a valid email address"),
    ({"email_verified": "true"}, "does not confirm that your email address is verified"),
    ({"email_verified": None}, "does not confirm that your email address is verified"),
    ({"email": "u" * 300 + "@example.com"},
     "sent an email address of 312 characters; the portal stores at most 254"),
])
def test_no_usable_email_means_a_clear_refusal_never_a_sign_up_form(sso, portal, claims, reason):
    sso.set_user("uma", password="pw", groups=["gpu-users", "gpu-admins"])
    sso.misbehave(claims=claims)
    _, page = sign_in(portal.url + "/", "uma")
    refused(page, reason)
    assert "/social/signup/" not in page.url and 'name="email"' not in page.text
    assert not get_user_model().objects.filter(username="uma").exists()


def test_email_verified_as_a_string_never_links_to_a_local_account(sso, portal, settings):
    settings.OIDC_LINK_BY_VERIFIED_EMAIL = True
    settings.OIDC_REQUIRE_VERIFIED_EMAIL = False
    # As the portal configured allauth's own email linking before (from the same variable):
    # it must not take "true" for true either.
    settings.SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
    settings.SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
    local = make_user("wes")  # wes@example.com
    sso.set_user("wes-at-idp", password="pw", email="wes@example.com", groups=["gpu-users"])
    sso.misbehave(claims={"email_verified": "true"})
    _, page = sign_in(portal.url + "/", "wes-at-idp")
    refused(page, "already exists in the portal and is not linked")
    local.refresh_from_db()
    assert local.has_usable_password()


def test_linking_never_takes_over_an_administrator(sso, portal, settings, admin_user):
    settings.OIDC_LINK_BY_VERIFIED_EMAIL = True
    sso.set_user("boss", password="pw", email=admin_user.email, email_verified=True,
                 groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "boss")
    refused(page, "already exists in the portal and is not linked")
    admin_user.refresh_from_db()
    assert admin_user.is_staff and admin_user.is_superuser
    assert admin_user.check_password(PASSWORD)


def test_linking_a_user_keeps_their_local_password(sso, portal, settings):
    settings.OIDC_LINK_BY_VERIFIED_EMAIL = True
    local = make_user("xena")
    sso.set_user("xena-at-idp", password="pw", email="xena@example.com", groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "xena-at-idp")
    assert page.status_code == 200 and "Welcome" in page.text
    assert SocialAccount.objects.get().user == local
    local.refresh_from_db()
    assert local.check_password(PASSWORD)


@pytest.mark.parametrize(("claims", "reason"), [
    ({"sub": "s" * 192}, "a subject of 192 characters; the portal takes at most 191"),
    ({"sub": None}, "could not be trusted"),
    ({"groups": 7}, "'groups' claim as int, not as a list of group names"),
    ({"groups": {"gpu-admins": True}}, "'groups' claim as dict, not as a list of group names"),
    ({"name": {"first": "Yan"}}, "'name' claim the portal cannot use"),
])
def test_odd_claims_get_a_clear_refusal_not_a_500(sso, portal, claims, reason):
    sso.set_user("yan", password="pw", groups=["gpu-users"])
    sso.misbehave(claims=claims)
    _, page = sign_in(portal.url + "/", "yan")
    refused(page, reason)
    assert not get_user_model().objects.filter(username="yan").exists()
    assert not Group.objects.filter(name="gpu-admins").exists()


def test_a_subject_of_191_characters_signs_in(sso, portal):
    sso.set_user("zed", password="pw", sub="z" * 191, groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "zed")
    assert page.status_code == 200
    assert SocialAccount.objects.get().uid == "z" * 191


def test_discovery_failing_at_the_callback_is_a_clear_page(sso, portal):
    sso.set_user("abe", password="pw", groups=["gpu-users"])
    session = requests.Session()
    form = session.get(portal.url + "/", timeout=10)
    action = html.unescape(re.search(r'action="([^"]+)"', form.text).group(1))
    answer = session.post(sso.issuer + action, data={"username": "abe", "password": "pw"},
                          allow_redirects=False, timeout=10)
    SocialApp.objects.update(settings={"server_url": "http://127.0.0.1:9"})  # the IdP is gone
    page = session.get(answer.headers["Location"], timeout=10)
    refused(page, "cannot be reached right now")


def test_a_token_endpoint_outage_does_not_say_tampered(sso, portal):
    SocialApp.objects.update(settings={
        "server_url": sso.issuer,
        "openid_configuration_overrides": {"token_endpoint": "http://127.0.0.1:9/token"}})
    sso.set_user("bea", password="pw", groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "bea")
    refused(page, "cannot be reached right now")
    assert "tampered" not in page.text


def test_two_social_apps_with_one_provider_id_give_a_clear_page(sso, portal):
    app = SocialApp.objects.get()
    app.pk = None
    app.save()
    page = requests.get(portal.url + "/", timeout=10)
    assert page.status_code == 503 and "configured twice" in page.text


def test_production_refuses_a_plain_http_issuer():
    def deploy_check(issuer: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DEBUG": "false", "OIDC_ISSUER_URL": issuer,
               "SECRET_KEY": "x" * 20 + "-production-only-9f8e7d6c5b4a3210-abcdefghij",
               "ALLOWED_HOSTS": "gpu.example.com", "SECURE_COOKIES": "true",
               "SECURE_SSL_REDIRECT": "true", "SECURE_HSTS_SECONDS": "31536000",
               "BEHIND_TLS_PROXY": "true"}
        return subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)

    plain = deploy_check("http://idp.example.com/realms/gpu")
    assert plain.returncode != 0
    assert "OIDC_ISSUER_URL must be https" in plain.stdout + plain.stderr
    assert deploy_check("https://idp.example.com/realms/gpu").returncode == 0


def test_an_issuer_configured_with_a_trailing_slash_still_matches(sso, portal):
    SocialApp.objects.update(settings={"server_url": sso.issuer + "/"})
    sso.set_user("cy", password="pw", groups=["gpu-users"])
    _, page = sign_in(portal.url + "/", "cy")
    assert page.status_code == 200 and "Welcome" in page.text


def test_a_name_with_control_characters_is_stored_on_one_line(sso, portal):
    """A hostile IdP's name would break mail headers (invitations name the inviter) and forge
    log lines: it is kept, with its control characters as spaces."""
    sso.set_user("mal", password="pw", email="mal@example.com", groups=["gpu-users"],
                 name="Mal\r\nBcc: all@example.com\x1b[2J Lory")
    sign_in(f"{portal.url}/", "mal")
    mal = get_user_model().objects.get(email="mal@example.com")
    assert mal.get_full_name() == "Mal Bcc: all@example.com [2J Lory"
