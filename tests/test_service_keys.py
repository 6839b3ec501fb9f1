"""API services (an OpenAI-compatible endpoint such as vLLM) take per-user keys the portal
issues, keeps hashed and checks on every request at the service's origin, with the user's
access to the instance. Driven with the real `openai` client, as the service page's example
has users do, against the kit's OpenAI-compatible stand-in behind the emulator's service
proxy: a key works; a key of another service, a revoked key, and the key of a collaborator
who was removed are refused within a second; another user can neither make nor revoke one."""

import re
import time
from urllib.parse import urlsplit

import openai
import pytest
from kubernetes import client as k8s

from instances import collaborators
from notebooks import services
from notebooks.models import Service, ServiceKey, ServiceProfile

from .conftest import make_user
from .kit.openai_server import FakeOpenAI
from .kube_fixtures import admin_api, launch, namespace_of, provision
from .test_api_live import gpupaas  # noqa: F401 (the console-script fixture)
from .test_collaborators import share_with
from .test_services_kube import advance
from .test_services_local import signed_in

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture
def origin_server(transactional_db):
    from gpupaas.asgi import application

    from .kit.asgi import serve

    with serve(application) as url:
        yield url


@pytest.fixture
def llm(emu, upstream, flux, alice, profiles):
    """alice's running API service on a namespace instance, its Service proxied to the fake."""
    profile = ServiceProfile.objects.create(
        name="llm", display_name="LLM", exposure=ServiceProfile.Exposure.API,
        chart_repository="oci://registry.example.com/charts", chart="llm",
        chart_version="1.0.0", values_template="model: ${model}\n",
        model_names=f"{MODEL}\nbig-model", storage_gib=0)
    instance = provision(launch(alice, profiles["namespace"]))
    ns = namespace_of(emu, instance)["metadata"]["name"]
    made = []
    with FakeOpenAI(MODEL) as fake:
        for name in ("chat", "other"):
            service = services.deploy_service(instance=instance, name=name, profile=profile,
                                              by=alice, model=MODEL)
            service = advance(service, flux, until=Service.Status.RUNNING)
            with admin_api(emu) as api:
                k8s.CoreV1Api(api).create_namespaced_service(ns, {
                    "metadata": {"name": service.key},
                    "spec": {"ports": [{"port": 80, "targetPort": 8000}]}})
            emu.service_backends[(ns, service.key)] = fake.url
            made.append(service)
        yield made[0], made[1], fake


def client_for(server: str, service: Service, key: str) -> openai.OpenAI:
    """The page's Python example, on this test server: the service's origin is its Host."""
    port = urlsplit(server).port
    return openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0, timeout=20,
                         default_headers={"Host": f"{service.host_label}.localhost:{port}"})


def new_key(user, service: Service) -> str:
    page = signed_in(user).post(f"/services/{service.pk}/keys/", {"name": "eval"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "it is not shown again" in text
    return re.search(r"<code>(gps_[A-Za-z0-9_-]{43})</code>", text)[1]


def test_a_key_reaches_the_api_and_others_are_refused_within_a_second(
        origin_server, llm, alice, settings):
    chat, other, fake = llm
    key = new_key(alice, chat)
    # Only its digest is kept.
    row = ServiceKey.objects.get(service=chat, user=alice)
    assert row.token_hash != key and key.startswith(row.prefix)

    api = client_for(origin_server, chat, key)
    reply = api.chat.completions.create(model=MODEL,
                                        messages=[{"role": "user", "content": "Hello"}])
    assert reply.choices[0].message.content == "echo: Hello"
    assert [m.id for m in api.models.list()] == [MODEL]
    # The pod never sees the key (nor any credential).
    for _, _, headers in fake.requests:
        assert "Authorization" not in headers
        assert key not in " ".join(headers.values())
    assert ServiceKey.objects.get(pk=row.pk).last_used_at is not None

    # The page shows the examples with this service's address and model.
    page = signed_in(alice).get(f"/services/{chat.pk}/").content.decode()
    assert "/v1/chat/completions" in page and f'"model": "{MODEL}"' in page
    assert "OpenAI(base_url=" in page and key not in page  # shown once only

    # The same key at another service's origin: refused, in the API's error shape.
    with pytest.raises(openai.AuthenticationError) as refused:
        client_for(origin_server, other, key).models.list()
    assert refused.value.status_code == 401
    assert "The key is not valid for this service" in refused.value.message
    # No key, or a made-up one: refused.
    with pytest.raises(openai.AuthenticationError):
        client_for(origin_server, chat, "gps_" + "x" * 43).models.list()

    # Revoked on the page: refused within a second.
    assert signed_in(alice).post(f"/services/{chat.pk}/keys/{row.pk}/revoke/").status_code == 302
    time.sleep(settings.APPS_DECISION_CACHE_S + 0.1)
    with pytest.raises(openai.AuthenticationError):
        api.models.list()


def test_a_removed_collaborators_key_is_refused_and_strangers_touch_no_key(
        origin_server, llm, alice, settings):
    chat, _, _ = llm
    carol = make_user("carol-keys")
    membership = share_with(chat.instance, alice, carol)
    carols = client_for(origin_server, chat, new_key(carol, chat))
    assert carols.models.list().data[0].id == MODEL
    collaborators.remove_collaborator(collaborator=membership, by=alice)
    time.sleep(settings.APPS_DECISION_CACHE_S + 0.1)
    with pytest.raises(openai.NotFoundError):
        carols.models.list()

    # bob may neither make a key to alice's service nor revoke hers: 404, nothing changed.
    alices = new_key(alice, chat)
    bob = signed_in(make_user("bob-keys"))
    assert bob.post(f"/services/{chat.pk}/keys/").status_code == 404
    row = ServiceKey.objects.get(service=chat, user=alice)
    assert bob.post(f"/services/{chat.pk}/keys/{row.pk}/revoke/").status_code == 404
    assert ServiceKey.objects.get(pk=row.pk).revoked_at is None
    assert client_for(origin_server, chat, alices).models.list().data[0].id == MODEL


def test_a_browser_service_takes_no_keys(db, alice, catalogue):
    from .conftest import running_instance

    instance = running_instance(alice, catalogue[2], "train")
    service = Service.objects.create(
        instance=instance, name="curves", profile=ServiceProfile.objects.get(
            name="tensorboard"), created_by=alice, cpu=1, memory_gib=1)
    page = signed_in(alice).post(f"/services/{service.pk}/keys/", follow=True)
    assert "curves is opened in a browser; it takes no keys." in page.content.decode()
    assert not ServiceKey.objects.exists()


def test_the_command_line_makes_lists_and_revokes_a_key(origin_server, llm, alice, gpupaas,  # noqa: F811
                                                         settings):
    from api import services as api_services

    chat, _, _ = llm
    token = api_services.create_api_token(user=alice, name="laptop", days=7, scope="write")[1]
    env = {"GPUPAAS_URL": origin_server, "GPUPAAS_TOKEN": token}
    made = gpupaas("service", "key", "train", "chat", "--name", "ci", extra_env=env)
    assert made.returncode == 0, made.stderr
    assert "not shown again" in made.stderr
    base, key = (line.split("=", 1)[1] for line in made.stdout.split())
    assert base.endswith("/v1") and f"{chat.host_label}.localhost" in base
    assert client_for(origin_server, chat, key).models.list().data[0].id == MODEL
    shown = gpupaas("service", "show", "train", "chat", extra_env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"Model      {MODEL}" in shown.stdout and "Running" in shown.stdout
    assert f"{base} (with a key: gpupaas service key train chat)" in shown.stdout
    listed = gpupaas("service", "keys", "train", "chat", extra_env=env)
    row = ServiceKey.objects.get(service=chat, name="ci")
    assert f"{row.prefix}…" in listed.stdout and "active" in listed.stdout
    revoked = gpupaas("service", "key-rm", "train", "chat", str(row.pk), extra_env=env)
    assert revoked.returncode == 0 and "is revoked" in revoked.stdout, revoked.stderr
    time.sleep(settings.APPS_DECISION_CACHE_S + 0.1)
    with pytest.raises(openai.AuthenticationError):
        client_for(origin_server, chat, key).models.list()
