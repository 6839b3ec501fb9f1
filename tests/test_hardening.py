"""Hardening found by a penetration test: strict ids, exact decimal bounds, no email changes
in the portal, rate limits in a shared cache, security headers, and no deadlock when a
delete follows a launch."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse

from instances import services as instance_services
from notebooks.models import Notebook, NotebookProfile

from .conftest import PASSWORD, ROOT, workspace_of


def running(user, profile, name="train"):
    instance = instance_services.launch_instance(
        workspace=workspace_of(user), name=name, profile=profile, by=user)
    return instance_services.provision_instance(instance_id=instance.pk)


@pytest.mark.parametrize("wanted", ["²", "١", "12a", "", "-1", "+1", " 1"])
def test_a_notebook_filter_with_an_odd_instance_id_is_a_404_not_a_500(alice_client, wanted):
    assert alice_client.get("/notebooks/", {"instance": wanted}).status_code == 404


def test_a_notebook_with_the_smallest_cpu_allowed_is_accepted(alice_client, alice, catalogue):
    minimal = NotebookProfile.objects.get(name="minimal")
    instance = running(alice, catalogue[1])
    response = alice_client.post(reverse("notebooks:new"), {
        "name": "tiny", "profile": minimal.pk, "instance": instance.pk, "cpu": "0.1"})
    assert response.status_code == 302, response.content.decode()
    assert str(Notebook.objects.get(name="tiny").cpu) == "0.1"
    below = alice_client.post(reverse("notebooks:new"), {
        "name": "tinier", "profile": minimal.pk, "instance": instance.pk, "cpu": "0.0"})
    assert "greater than or equal to 0.1" in below.content.decode()


@pytest.mark.parametrize("who", ["alice", "admin_user"])
def test_nobody_adds_or_makes_primary_an_email_address_in_the_portal(client, request, who):
    from allauth.account.models import EmailAddress

    user = request.getfixturevalue(who)
    client.force_login(user)
    page = client.get("/accounts/email/")
    assert page.status_code == 200 and user.email in page.content.decode()

    added = client.post("/accounts/email/", {"action_add": "", "email": "carol@example.com"})
    primary = client.post("/accounts/email/", {"action_primary": "",
                                                "email": "carol@example.com"})

    assert added.status_code == primary.status_code == 403
    assert "cannot be added or changed here" in added.content.decode()
    assert not EmailAddress.objects.filter(email="carol@example.com").exists()
    user.refresh_from_db()
    assert user.email == f"{user.username}@example.com"


def test_the_social_sign_up_form_is_never_offered(client, db):
    page = client.get("/accounts/social/signup/")
    assert page.status_code == 403 and 'name="email"' not in page.content.decode()
    assert "Sign-up forms are not used" in page.content.decode()


# --- Login rate limits, in the shared cache --------------------------------------------------

TOO_MANY = "Too many failed login attempts"


def sign_in(client, login: str, password: str, ip: str = ""):
    extra = {"HTTP_X_FORWARDED_FOR": ip} if ip else {}
    return client.post("/accounts/login/", {"login": login, "password": password}, **extra)


def test_behind_a_proxy_one_addresss_failures_do_not_lock_out_the_others(client, admin_user,
                                                                        settings):
    settings.TRUSTED_PROXY_COUNT = 1  # BEHIND_TLS_PROXY's default
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "4/m/ip,5/300s/key"}  # (fewer hashes)
    for i in range(4):  # credential stuffing from one address
        sign_in(client, f"user{i}", "wrong", ip="198.51.100.7")
    assert TOO_MANY in sign_in(client, "admin", PASSWORD, ip="198.51.100.7").content.decode()
    # A forged X-Forwarded-For entry left of the proxy's does not buy new attempts.
    forged = sign_in(client, "admin", PASSWORD, ip="10.9.9.9, 198.51.100.7").content.decode()
    assert TOO_MANY in forged
    # A colleague behind the same proxy, at another address, signs in.
    assert sign_in(client, "admin", PASSWORD, ip="203.0.113.9").status_code == 302


@pytest.mark.django_db(transaction=True)
def test_failures_counted_by_another_process_lock_the_account_here(client, admin_user,
                                                        own_cache_namespace):
    """Two web processes (gunicorn workers, replicas) share the counters through Redis."""
    db = settings.DATABASES["default"]
    env = {**os.environ, "CACHE_KEY_PREFIX": own_cache_namespace,
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
                           f"{db['PORT'] or 5432}/{db['NAME']}"}
    script = ("import django; django.setup()\n"
              "from django.test import Client\n"
              "from django.test.utils import setup_test_environment\n"
              "setup_test_environment()\n"
              "for _ in range(5):\n"
              "    Client().post('/accounts/login/', {'login': 'admin', 'password': 'no'})\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    assert TOO_MANY in sign_in(client, "admin", PASSWORD).content.decode()
    # Per account: another administrator at the same address is not locked out.
    get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)
    assert sign_in(client, "root", PASSWORD).status_code == 302


# --- Headers -------------------------------------------------------------------------------


def test_pages_showing_a_notebook_token_are_never_cached(alice_client, alice, catalogue):
    from notebooks import services as notebook_services

    notebook = notebook_services.deploy_notebook(
        instance=running(alice, catalogue[1]), name="secret",
        profile=NotebookProfile.objects.get(name="minimal"), by=alice)
    for url in (f"/notebooks/{notebook.pk}/", f"/notebooks/{notebook.pk}/status/"):
        response = alice_client.get(url)
        assert response.status_code == 200  # (the token shows once the notebook runs)
        assert "no-store" in response["Cache-Control"], url
        assert "script-src 'self'" in response["Content-Security-Policy"]


@pytest.mark.parametrize("https", [{"SECURE_SSL_REDIRECT": "true"},
                                   {"BEHIND_TLS_PROXY": "true"},
                                   {"SECURE_HSTS_SECONDS": "3600"}])
def test_cookies_are_secure_whenever_https_is_on(https):
    script = ("import django; django.setup(); from django.conf import settings as s; "
              "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)")
    env = {k: v for k, v in os.environ.items() if k not in (
        "SECURE_COOKIES", "SECURE_SSL_REDIRECT", "BEHIND_TLS_PROXY", "SECURE_HSTS_SECONDS")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, text=True, timeout=60,
                            env={**env, "DJANGO_SETTINGS_MODULE": "gpupaas.settings", **https},
                            capture_output=True)
    assert result.stdout.split() == ["True", "True"], result.stderr
