"""The JSON API (/api/v1/) as a script sees it: personal access tokens, the same services and
audit rows as the pages, the pages' messages in RFC 9457 problem documents, and the hostile
tenant's side: bob's token gets 404 for every one of alice's objects."""

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from access.models import AccessToken
from access.services import lost_access
from api import services as api_services
from api.models import ApiToken
from clusters.crypto import encrypt
from instances import collaborators
from instances.models import Collaborator, Instance
from notebooks.models import Notebook, NotebookProfile, Service, ServiceKey, ServiceProfile
from workspaces.models import AuditEvent
from workspaces.tokens import hash_token

from .conftest import make_user, running_instance, workspace_of
from .kube_fixtures import launch, provision

PROBLEM = "application/problem+json"


def token_for(user, scope: str = "write", days: int = 30, name: str = "script") -> str:
    return api_services.create_api_token(user=user, name=name, days=days, scope=scope)[1]


class Api:
    """alice's (or bob's) script: the Django test client with a bearer token."""

    def __init__(self, token: str) -> None:
        self.client, self.auth = Client(), {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    def __call__(self, method: str, path: str, body: dict | None = None, **extra):
        call = getattr(self.client, method.lower())
        kwargs = {**self.auth, **extra}
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        return call(f"/api/v1{path}", **kwargs)


@pytest.fixture
def alice_api(alice) -> Api:
    return Api(token_for(alice))


@pytest.fixture
def bob_api(bob) -> Api:
    return Api(token_for(bob))


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["detail"] and body["title"]
    return body


# --- reading ---------------------------------------------------------------------------------


def test_sizes_say_whether_each_fits_the_quota_now(alice, alice_api, catalogue):
    running_instance(alice, catalogue[6], "big")  # 6 of the default 8 GPUs
    sizes = {p["name"]: p for p in alice_api("GET", "/profiles").json()}
    assert list(sizes) == ["gpu-1", "gpu-2", "gpu-4", "gpu-6", "gpu-8"]
    assert sizes["gpu-2"]["fits"] and sizes["gpu-2"]["refusal"] == ""
    assert not sizes["gpu-4"]["fits"]
    assert sizes["gpu-4"]["refusal"] == "Needs 4 GPUs; only 2 GPUs of 8 left."
    quota = alice_api("GET", "/quota").json()
    assert quota == {"max_gpus": 8, "max_instances": 5, "gpus_used": 6, "instances_used": 1,
                     "gpus_left": 2, "instances_left": 4}


def test_the_list_shows_own_and_shared_instances_filtered_and_a_page_at_a_time(
        alice, bob, alice_api, catalogue):
    for n in range(3):
        running_instance(alice, catalogue[1], f"job-{n}")
    shared = running_instance(bob, catalogue[1], "bobs-model")
    Collaborator.objects.create(instance=shared, email=alice.email, user=alice,
                                status="accepted", expires_at=timezone.now())
    running_instance(bob, catalogue[1], "bobs-private")

    first = alice_api("GET", "/instances?page_size=2").json()
    assert first["count"] == 4 and first["pages"] == 2
    assert [i["name"] for i in first["items"]] == ["bobs-model", "job-2"]
    second = alice_api("GET", "/instances?page_size=2&page=2").json()
    assert [i["name"] for i in second["items"]] == ["job-1", "job-0"]
    shared_only = alice_api("GET", "/instances?scope=shared").json()["items"]
    assert [(i["name"], i["owner"], i["shared"]) for i in shared_only] == [
        ("bobs-model", "bob", True)]
    assert alice_api("GET", "/instances?name=job-1").json()["items"][0]["name"] == "job-1"
    assert alice_api("GET", "/instances?status=failed").json()["count"] == 0


def test_deleted_instances_are_history_listed_only_when_asked(alice, alice_api, catalogue):
    instance = running_instance(alice, catalogue[1], "old")
    Instance.objects.filter(pk=instance.pk).update(status="deleted")
    assert alice_api("GET", "/instances").json()["count"] == 0
    assert alice_api("GET", "/instances?status=deleted").json()["items"][0]["name"] == "old"


def test_the_timeline_lists_launch_and_status_changes_in_order(alice, alice_api, catalogue):
    instance = running_instance(alice, catalogue[1], "train")
    events = alice_api("GET", f"/instances/{instance.pk}/events").json()
    assert [e["action"] for e in events] == [
        "instance.launched", "instance.provisioning", "instance.running"]
    assert events[0]["actor"] == "alice" and events[1]["actor"] is None
    assert events[2]["message"].startswith("Running")


# --- writing: the pages' services, their audit rows, their messages ------------------------


def test_a_launch_through_the_api_leaves_the_audit_row_a_page_click_leaves(
        alice, alice_api, client, catalogue):
    response = alice_api("POST", "/instances", {"name": "from-api", "profile": "gpu-1"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending" and body["gpus"] == 1 and body["owner"] == "alice"
    assert body["page"].endswith(f"/instances/{body['id']}/")

    client.force_login(alice)
    page = client.post("/instances/new/", {"name": "from-page",
                                           "profile": catalogue[1].pk})
    assert page.status_code == 302

    rows = {e.object_repr: e for e in AuditEvent.objects.filter(action="instance.launched")}
    api_row, page_row = rows["from-api"], rows["from-page"]
    assert (api_row.actor, api_row.workspace, api_row.data) == (
        page_row.actor, page_row.workspace, page_row.data)
    assert api_row.ip_address == page_row.ip_address == "127.0.0.1"


@pytest.mark.parametrize("body,field", [
    ({"name": "Bad_Name", "profile": "gpu-1"}, "name"),
    ({"name": "", "profile": "gpu-1"}, "name"),
    ({"name": "ok-name", "profile": ""}, "profile"),
    ({"name": "ok-name", "profile": "no-such-size"}, "profile"),
    ({"name": "x" * 41, "profile": "gpu-1"}, "name"),
])
def test_bad_input_is_refused_in_the_launch_pages_words_naming_the_field(
        alice, alice_api, client, catalogue, body, field):
    refused = problem(alice_api("POST", "/instances", body), 422)
    [error] = refused["errors"]
    assert error["field"] == field and error["pointer"] == f"#/{field}"
    # The launch page, sent the same, shows the same message.
    client.force_login(alice)
    form = {**body, "profile": {"gpu-1": catalogue[1].pk}.get(body["profile"],
                                                             body["profile"])}
    page = client.post("/instances/new/", form)
    assert page.status_code == 400
    assert error["detail"].replace("'", "&#x27;") in page.content.decode()
    assert not Instance.objects.exists()


def test_the_quota_refusal_names_what_holds_it_and_writes_nothing(alice, alice_api, catalogue):
    running_instance(alice, catalogue[6], "big-run")
    refused = problem(alice_api("POST", "/instances", {"name": "more", "profile": "gpu-4"}), 422)
    assert refused["errors"] == [{
        "field": "profile", "pointer": "#/profile",
        "detail": "Your quota is 8 GPUs and 6 are in use by big-run; this size needs 4."}]
    assert refused["detail"] == refused["errors"][0]["detail"]
    assert Instance.objects.count() == 1


def test_wrong_types_and_broken_json_are_problems_too(alice_api):
    wrong = problem(alice_api("POST", "/instances", {"name": 5, "profile": ["gpu-1"]}), 422)
    assert {e["field"] for e in wrong["errors"]} == {"name", "profile"}
    broken = alice_api("POST", "/instances", content_type="application/json", data="{nope")
    assert problem(broken, 400)["detail"] == "The request body is not valid JSON."
    paging = problem(alice_api("GET", "/instances?page=0"), 422)
    assert paging["errors"][0]["field"] == "page"


def test_a_field_the_api_does_not_know_is_refused_never_ignored(alice, alice_api, catalogue):
    """A typo ("hour" for "hours") once issued a token with the default lifetime."""
    typo = problem(alice_api("POST", "/instances",
                             {"name": "train", "profile": "gpu-1", "gpus": 2}), 422)
    assert [e["field"] for e in typo["errors"]] == ["gpus"]
    assert not Instance.objects.exists()
    instance = running_instance(alice, catalogue[1], "train")
    hour = problem(alice_api("POST", f"/instances/{instance.pk}/kubeconfig", {"hour": 1}), 422)
    assert [e["field"] for e in hour["errors"]] == ["hour"]
    assert not AccessToken.objects.exists()
    schema = Client().get("/api/openapi.json").json()["components"]["schemas"]
    assert schema["KubeconfigIn"]["additionalProperties"] is False
    assert schema["InviteIn"]["properties"]["emails"]["minItems"] == 1


def test_deleting_twice_says_it_is_already_being_deleted(alice, alice_api, catalogue):
    instance = running_instance(alice, catalogue[1], "train")
    deleted = alice_api("DELETE", f"/instances/{instance.pk}")
    assert deleted.status_code == 202 and deleted.json()["status"] == "deleting"
    again = problem(alice_api("DELETE", f"/instances/{instance.pk}"), 409)
    assert again["detail"] == "train is already being deleted."
    assert AuditEvent.objects.filter(action="instance.deleting", actor=alice).count() == 1


def test_someone_with_only_shared_instances_cannot_launch_or_see_a_quota(alice, catalogue):
    carol = make_user("carol", group=None)
    shared = running_instance(alice, catalogue[1], "shared")
    Collaborator.objects.create(instance=shared, email=carol.email, user=carol,
                                status="accepted", expires_at=timezone.now())
    carol_api = Api(token_for(carol))
    assert carol_api("GET", "/instances").json()["items"][0]["name"] == "shared"
    assert "no role" in problem(carol_api("POST", "/instances", {
        "name": "mine", "profile": "gpu-1"}), 403)["detail"]
    problem(carol_api("GET", "/quota"), 403)
    assert carol_api("GET", "/me").json()["role"] == ""
    # With no role and nothing shared, a token is revoked at its next use: 401 (exit 3).
    dan = make_user("dan", group=None)
    assert problem(Api(token_for(dan))("GET", "/instances"), 401)["detail"] == (
        "The token was revoked (role removed).")


# --- notebooks ---------------------------------------------------------------------------


@pytest.fixture
def notebook(alice, catalogue) -> Notebook:
    instance = running_instance(alice, catalogue[1], "train")
    profile = NotebookProfile.objects.create(name="nb", display_name="NB", image="nb:1")
    return Notebook.objects.create(
        instance=instance, name="explore", profile=profile, created_by=alice, image="nb:1",
        cpu=1, memory_gib=2, status="running", url="http://127.0.0.1:9/explore/",
        token_encrypted=encrypt("the-notebook-secret"))


def test_a_notebooks_token_comes_only_on_an_explicit_audited_request(alice, alice_api,
                                                                     notebook):
    listed = alice_api("GET", "/notebooks")
    one = alice_api("GET", f"/notebooks/{notebook.pk}")
    # A local notebook's address is its origin on the portal, not its server's port.
    origin = f"http://{notebook.host_label}.localhost"
    assert listed.json()["items"][0]["url"] == f"{origin}/lab"
    for response in (listed, one):
        assert "the-notebook-secret" not in response.content.decode()
    assert not AuditEvent.objects.filter(action="notebook.token_revealed").exists()

    revealed = alice_api("POST", f"/notebooks/{notebook.pk}/token")
    assert revealed.json() == {
        "token": "the-notebook-secret",
        "open_url": f"{origin}/lab?token=the-notebook-secret"}
    row = AuditEvent.objects.get(action="notebook.token_revealed")
    assert (row.actor, row.object_id, row.ip_address) == (alice, str(notebook.pk), "127.0.0.1")


def test_a_failed_notebook_is_retried_once_and_deleted_once(alice, alice_api, bob_api,
                                                             notebook):
    """Notebooks share the instances' one delete and retry path: 409 in the same words."""
    not_failed = problem(alice_api("POST", f"/notebooks/{notebook.pk}/retry"), 409)
    assert not_failed["detail"] == "explore is running, not failed."
    Notebook.objects.filter(pk=notebook.pk).update(status="failed")
    problem(bob_api("POST", f"/notebooks/{notebook.pk}/retry"), 404)
    retried = alice_api("POST", f"/notebooks/{notebook.pk}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "deploying"
    assert alice_api("DELETE", f"/notebooks/{notebook.pk}").json()["status"] == "deleting"
    again = problem(alice_api("DELETE", f"/notebooks/{notebook.pk}"), 409)
    assert again["detail"] == "explore is already being deleted."
    assert AuditEvent.objects.filter(action="notebook.deleting", actor=alice).count() == 1


def test_a_notebook_that_does_not_fit_is_refused_in_the_deploy_pages_words(
        alice, alice_api, client, notebook):
    body = {"name": "huge", "profile": "nb", "cpu": 1, "memory_gib": 4096}
    refused = problem(alice_api("POST", f"/instances/{notebook.instance_id}/notebooks", body),
                      422)
    assert refused["detail"].startswith("Does not fit: the instance has 8 CPU, 64 GiB memory")
    client.force_login(alice)
    page = client.post("/notebooks/new/", {**body, "profile": notebook.profile_id,
                                           "instance": notebook.instance_id})
    assert refused["detail"] in page.content.decode()
    assert Notebook.objects.count() == 1


# --- kubeconfig and collaborators through the same services ---------------------------------


def test_a_kubeconfig_from_the_api_reaches_the_instance_through_the_proxy(
        alice, alice_api, emu, profiles):
    instance = provision(launch(alice, profiles["namespace"]))
    answer = alice_api("POST", f"/instances/{instance.pk}/kubeconfig", {"hours": 2})
    assert answer.status_code == 201, answer.content
    body = answer.json()
    import yaml

    config = yaml.safe_load(body["kubeconfig"])
    assert config["clusters"][0]["cluster"]["server"].endswith(f"/k8s/{instance.pk}/")
    assert config["current-context"] == body["context"]
    token = config["users"][0]["user"]["token"]
    # The proxy's own question for this token (its hash, bound to this instance, live, the
    # user still allowed): the same row the instance page's download makes.
    stored = AccessToken.objects.get(instance=instance)
    assert (stored.token_hash, stored.user, stored.is_live) == (hash_token(token), alice, True)
    assert stored.prefix == body["token_prefix"]
    assert lost_access(user=alice, instance_id=instance.pk) == (instance, "")
    too_long = problem(alice_api("POST", f"/instances/{instance.pk}/kubeconfig",
                                 {"hours": 1000}), 422)
    assert too_long["errors"][0]["field"] == "hours"


def test_a_local_sandbox_has_no_kubeconfig(alice, alice_api, catalogue):
    instance = running_instance(alice, catalogue[1], "train")
    refused = problem(alice_api("POST", f"/instances/{instance.pk}/kubeconfig", {}), 409)
    assert refused["detail"] == "This instance has no Kubernetes API."


def test_collaborators_are_invited_listed_and_removed_with_the_pages_rules(
        alice, alice_api, catalogue):
    instance = running_instance(alice, catalogue[1], "shared")
    sent = alice_api("POST", f"/instances/{instance.pk}/collaborators",
                     {"emails": ["Carol@Example.com"]})
    assert sent.status_code == 201, sent.content
    assert [c["email"] for c in sent.json()["sent"]] == ["carol@example.com"]
    assert re.search(r"/invitations/[^/]+/", mail.outbox[0].body)

    again = problem(alice_api("POST", f"/instances/{instance.pk}/collaborators",
                              {"emails": ["carol@example.com", "not-an-address"]}), 422)
    assert again["errors"] == [{"field": "emails", "pointer": "#/emails", "detail": (
        "Not a valid email address: not-an-address. Nothing was sent.")}]

    too_long = "a" * 60 + "@" + ".".join(["b" * 63] * 3) + ".com"  # valid, 256 characters
    refused = problem(alice_api("POST", f"/instances/{instance.pk}/collaborators",
                                {"emails": [too_long]}), 422)
    assert refused["errors"][0]["detail"].startswith("Not a valid email address: aaaa")

    [listed] = alice_api("GET", f"/instances/{instance.pk}/collaborators").json()
    assert listed["status"] == "pending"
    gone = alice_api("DELETE", f"/instances/{instance.pk}/collaborators/{listed['id']}")
    assert gone.status_code == 204
    assert Collaborator.objects.get().status == "revoked"
    assert list(AuditEvent.objects.filter(object_type="instances.collaborator")
                .values_list("action", flat=True).order_by("id")) == [
        "collaborator.invited", "collaborator.revoked"]


# --- the hostile tenant ----------------------------------------------------------------------


def schema_operations(client) -> list[tuple[str, str]]:
    schema = client.get("/api/openapi.json").json()
    return [(method.upper(), path) for path, ops in schema["paths"].items()
            for method in ops]


def test_every_object_endpoint_is_404_for_another_users_token(
        alice, bob_api, notebook, client):
    collaborator = collaborators.invite_collaborator(instance=notebook.instance, emails=["c@x.io"],
                                                by=alice, base_url="http://t/").sent[0]
    service = Service.objects.create(
        instance=notebook.instance, name="curves", created_by=alice, cpu=1, memory_gib=1,
        profile=ServiceProfile.objects.get(name="tensorboard"))
    key = ServiceKey.objects.create(service=service, user=alice, token_hash="0" * 64,
                                    prefix="gps_000000", expires_at=timezone.now()
                                    + timezone.timedelta(days=1))
    ids = {"instance_id": notebook.instance_id, "notebook_id": notebook.pk,
           "collaborator_id": collaborator.pk, "service_id": service.pk, "key_id": key.pk}
    object_operations = [(m, p) for m, p in schema_operations(client) if "{" in p]
    assert len(object_operations) >= 12
    bodies = {"/notebooks": {"name": "x", "profile": "nb"}, "/kubeconfig": {},
              "/services": {"name": "x", "profile": "tensorboard"},
              "/collaborators": {"emails": ["d@x.io"]}, "/keys": {"name": "mine"}}
    for method, path in object_operations:
        url = re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), path).removeprefix("/api/v1")
        body = next((b for end, b in bodies.items() if url.endswith(end)), None)
        response = bob_api(method, url, body if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.content)
        assert response["Content-Type"] == PROBLEM
    assert Instance.objects.get(pk=notebook.instance_id).status == "running"
    assert Collaborator.objects.get().status == "pending"
    assert Service.objects.get().status == "deploying"
    assert ServiceKey.objects.get().revoked_at is None
    assert not AuditEvent.objects.filter(actor__username="bob").exclude(
        action="api_token.created").exists()


def test_revoked_expired_and_unknown_tokens_get_401(alice, catalogue):
    revoked, expired = token_for(alice, name="a"), token_for(alice, name="b")
    api_services.revoke_api_token(token=ApiToken.objects.get(name="a"), by=alice)
    ApiToken.objects.filter(name="b").update(expires_at=timezone.now() - timedelta(seconds=1))
    for token, says in [(revoked, "revoked by alice"), (expired, "expired"),
                        ("gpa_made-up", "not valid")]:
        refused = problem(Api(token)("GET", "/instances"), 401)
        assert says in refused["detail"]
        assert Api(token)("GET", "/instances")["WWW-Authenticate"].startswith("Bearer")
    problem(Client().get("/api/v1/instances"), 401)


def test_a_read_only_token_reads_but_every_write_is_403(alice, notebook, client):
    reader = Api(token_for(alice, scope="read"))
    assert reader("GET", "/instances").status_code == 200
    # Every write but ending itself (`gpupaas logout`, test_api_live).
    writes = [(m, p) for m, p in schema_operations(client)
              if m != "GET" and (m, p) != ("DELETE", "/api/v1/me/token")]
    assert len(writes) >= 9
    for method, path in writes:
        url = re.sub(r"\{\w+\}", str(notebook.instance_id), path).removeprefix("/api/v1")
        refused = problem(reader(method, url, {} if method == "POST" else None), 403)
        assert "read-only" in refused["detail"]
    assert Instance.objects.get(pk=notebook.instance_id).status == "running"
    assert not AuditEvent.objects.filter(action="notebook.token_revealed").exists()


@pytest.mark.parametrize("lose", ["deactivated", "role"])
def test_losing_access_revokes_the_token_at_the_next_request_and_in_the_sweep(
        alice, catalogue, lose):
    first, second = token_for(alice, name="first"), token_for(alice, name="second")
    if lose == "deactivated":
        type(alice).objects.filter(pk=alice.pk).update(is_active=False)
    else:
        alice.groups.clear()
    reason = "user deactivated" if lose == "deactivated" else "role removed"
    assert reason in problem(Api(first)("GET", "/instances"), 401)["detail"]
    assert ApiToken.objects.get(name="first").revoked_reason == reason
    assert api_services.revoke_lost_api_tokens() == 1  # the second, unused since
    assert ApiToken.objects.get(name="second").revoked_reason == reason
    problem(Api(second)("GET", "/instances"), 401)


def test_the_browser_session_works_and_writes_need_the_csrf_token(alice, catalogue):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get("/api/v1/instances").status_code == 200
    body = {"name": "from-docs", "profile": "gpu-1"}
    forged = browser.post("/api/v1/instances", body, content_type="application/json")
    assert "CSRF" in problem(forged, 403)["detail"]
    assert not Instance.objects.exists()
    browser.get("/api-tokens/")  # any page sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value
    made = browser.post("/api/v1/instances", body, content_type="application/json",
                        HTTP_X_CSRFTOKEN=csrf)
    assert made.status_code == 201, made.content


def test_a_token_over_its_budget_gets_429_with_retry_after(alice, bob, settings, catalogue):
    settings.API_RATE_LIMIT = "3/h"  # (an hour: no window ends within the test)
    alice_api, bob_api = Api(token_for(alice)), Api(token_for(bob))
    for _ in range(3):
        assert alice_api("GET", "/instances").status_code == 200
    limited = alice_api("GET", "/instances")
    problem(limited, 429)
    assert 1 <= int(limited["Retry-After"]) <= 3600  # until the hour's window ends
    assert bob_api("GET", "/instances").status_code == 200  # a budget per token


def test_the_schema_and_docs_are_served_without_signing_in(client):
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200
    responses = schema.json()["paths"]["/api/v1/instances/{instance_id}"]["get"]["responses"]
    assert list(responses["404"]["content"]) == [PROBLEM]
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
    assert problem(client.get("/api/v2/nothing"), 404)["detail"].startswith("No such API")


def test_the_budget_is_counted_per_window_and_renews_with_the_next(db):
    from api.ratelimit import Rate, consume, parse_rate

    assert parse_rate("100/5m") == Rate(100, 300.0) and parse_rate(" 3 / h ") == Rate(3, 3600.0)
    with pytest.raises(ValueError):
        parse_rate("600 per minute")

    rate, start = parse_rate("2/m"), 1_800_000_000.0  # a minute boundary
    assert [consume("token:1", rate, now=start + s) for s in (1, 2)] == [0.0, 0.0]
    assert consume("token:1", rate, now=start + 45) == 15.0  # refused: 15 s to the next window
    assert consume("token:2", rate, now=start + 45) == 0.0  # another token's own budget
    assert consume("token:1", rate, now=start + 61) == 0.0


def test_an_idle_session_gets_a_401_problem_not_the_sign_in_page(alice, settings):
    settings.SESSION_IDLE_TIMEOUT_S = 60
    browser = Client()
    browser.force_login(alice)
    session = browser.session
    session["last_seen"] = 1  # long ago
    session.save()
    problem(browser.get("/api/v1/instances"), 401)


def test_refusals_made_before_any_endpoint_are_problem_documents_too(alice_api, settings):
    """A method the path does not serve, and a body over the limit (413, not 400)."""
    wrong = alice_api("PATCH", "/instances")
    assert wrong.status_code == 405 and wrong["Content-Type"] == "application/problem+json"
    assert wrong.json()["detail"] == "PATCH is not served here; this endpoint takes GET, POST."
    assert wrong["Allow"] == "GET, POST"
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = alice_api("POST", "/instances", {"name": "x" * 2000, "profile": "gpu-1"})
    assert big.status_code == 413 and big["Content-Type"] == "application/problem+json"
    assert big.json()["detail"].endswith("the API takes at most 1,000.")


# --- catalogue services ------------------------------------------------------------------


def test_services_are_deployed_listed_retried_and_deleted_with_the_pages_rules(
        alice, alice_api, bob_api, catalogue):
    instance = running_instance(alice, catalogue[2], "train")
    offered = alice_api("GET", "/service-profiles").json()
    assert {"tensorboard", "mlflow"} <= {p["name"] for p in offered}
    bad = problem(alice_api("POST", f"/instances/{instance.pk}/services",
                            {"name": "x", "profile": "no-such"}), 422)
    assert bad["errors"][0]["detail"] == "This service is not available. Pick one shown."
    created = alice_api("POST", f"/instances/{instance.pk}/services",
                        {"name": "curves", "profile": "tensorboard"})
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["service"], body["status"], body["gpus"]) == ("tensorboard", "deploying", 0)
    assert body["open"].endswith(f"/services/{body['id']}/open/")
    assert [s["name"] for s in alice_api("GET", "/services").json()["items"]] == ["curves"]
    problem(bob_api("GET", f"/services/{body['id']}"), 404)
    problem(bob_api("DELETE", f"/services/{body['id']}"), 404)
    assert bob_api("GET", "/services").json()["items"] == []
    assert problem(alice_api("POST", f"/services/{body['id']}/retry"), 409)["detail"] == (
        "curves is deploying, not failed.")
    assert alice_api("DELETE", f"/services/{body['id']}").json()["status"] == "deleting"
    assert problem(alice_api("DELETE", f"/services/{body['id']}"), 409)["detail"] == (
        "curves is already being deleted.")


def test_refused_tokens_are_throttled_per_address_and_a_users_tokens_together(
        alice, bob, settings, catalogue):
    settings.API_INVALID_TOKEN_LIMIT = "3/h"
    settings.API_USER_RATE_LIMIT = "4/h"
    here, there = "10.0.0.1", "10.0.0.2"  # (each test counts under its own cache prefix)
    guess = Api("gpa_" + "x" * 40)
    assert [guess("GET", "/instances", REMOTE_ADDR=here).status_code
            for _ in range(3)] == [401, 401, 401]
    limited = guess("GET", "/instances", REMOTE_ADDR=here)
    assert problem(limited, 429)["detail"].startswith(
        "Too many refused tokens from your address; try again in")
    assert 1 <= int(limited["Retry-After"]) <= 3600
    # Past the budget, not even a good token is looked at from that address...
    alice_api = Api(token_for(alice))
    assert alice_api("GET", "/instances", REMOTE_ADDR=here).status_code == 429
    # ...while another address goes on.
    assert alice_api("GET", "/instances", REMOTE_ADDR=there).status_code == 200

    # Three tokens of one user share the user's total of 4; another user's are their own.
    tokens = [Api(token_for(bob, name=f"script-{n}")) for n in range(3)]
    answers = [api("GET", "/instances", REMOTE_ADDR=there).status_code
               for api in tokens for _ in range(2)]
    assert answers == [200, 200, 200, 200, 429, 429]
    assert problem(tokens[2]("GET", "/instances", REMOTE_ADDR=there), 429)["detail"].startswith(
        "Too many requests with this token (or from your account's tokens together)")
    assert alice_api("GET", "/instances", REMOTE_ADDR=there).status_code == 200


def test_the_schema_links_a_launched_instance_to_the_calls_that_take_its_id(
        client, alice, catalogue):
    """A tool follows the OpenAPI links from launch's answer: GetInstance, then StopInstance
    (no path written by hand)."""
    schema = client.get("/api/openapi.json").json()
    by_id = {op["operationId"]: (method, path) for path, ops in schema["paths"].items()
             for method, op in ops.items()}
    launched = schema["paths"]["/api/v1/instances"]["post"]["responses"]["201"]["links"]
    assert {"GetInstance", "DeleteInstance", "StopInstance", "DeployNotebook"} <= set(launched)
    alice_api = Api(token_for(alice))
    body = alice_api("POST", "/instances", {"name": "chain", "profile": "gpu-1"}).json()

    def follow(link: dict) -> tuple[str, str]:
        method, path = by_id[link["operationId"]]
        for name, expression in link["parameters"].items():
            assert expression == "$response.body#/id"
            path = path.replace("{" + name + "}", str(body["id"]))
        return method, path.removeprefix("/api/v1")

    method, path = follow(launched["GetInstance"])
    assert alice_api(method.upper(), path).json()["name"] == "chain"
    noted = schema["paths"]["/api/v1/instances/{instance_id}/notebooks"]["post"]["responses"]
    assert set(noted["201"]["links"]) >= {"GetNotebook", "RevealNotebookToken"}


def test_a_collaborator_who_can_use_it_is_refused_delete_and_sharing_by_the_api(
        alice, catalogue):
    carol = make_user("carol")
    shared = running_instance(alice, catalogue[1], "shared")
    alice_api, carol_api = Api(token_for(alice)), Api(token_for(carol))
    made = alice_api("POST", f"/instances/{shared.pk}/collaborators",
                     {"emails": [carol.email], "access": "use"})
    assert made.status_code == 201 and made.json()["sent"][0]["access"] == "use"
    Collaborator.objects.filter(email=carol.email).update(status="accepted", user=carol)

    assert carol_api("GET", f"/instances/{shared.pk}").status_code == 200
    refused = problem(carol_api("DELETE", f"/instances/{shared.pk}"), 403)
    assert refused["detail"].startswith("You can use shared but not delete it")
    problem(carol_api("POST", f"/instances/{shared.pk}/collaborators",
                      {"emails": ["eve@example.com"]}), 403)
    assert Instance.objects.get(pk=shared.pk).status == "running"
    listed = alice_api("GET", f"/instances/{shared.pk}/collaborators").json()
    assert [(c["email"], c["access"]) for c in listed] == [(carol.email, "use")]


def test_the_instance_list_asks_the_database_as_often_for_many_rows_as_for_one(
        alice, catalogue, settings):
    """What each row gets (allotment: its cluster) is read with the rows, not per row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from instances import services

    settings.API_RATE_LIMIT = ""
    api = Api(token_for(alice))
    workspace = workspace_of(alice)
    workspace.max_instances, workspace.max_gpus = 50, 50
    workspace.save()
    services.launch_instance(workspace=workspace, name="one", profile=catalogue[1], by=alice)
    api("GET", "/instances")  # the token's first use writes its last-use time
    with CaptureQueriesContext(connection) as one:
        assert len(api("GET", "/instances").json()["items"]) == 1
    for n in range(12):
        services.launch_instance(workspace=workspace, name=f"more-{n}", profile=catalogue[1],
                                 by=alice)
    with CaptureQueriesContext(connection) as many:
        assert len(api("GET", "/instances").json()["items"]) == 13
    assert len(many) == len(one), [q["sql"][:80] for q in many.captured_queries]


def test_a_service_that_serves_models_takes_one_of_them(alice_api, alice, catalogue):
    instance = running_instance(alice, catalogue[2], "train")
    offered = {p["name"]: p for p in alice_api("GET", "/service-profiles").json()}
    assert offered["vllm"]["exposure"] == "api"
    assert offered["vllm"]["models"][0] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert offered["tensorboard"]["models"] == []
    refused = problem(alice_api("POST", f"/instances/{instance.pk}/services",
                                {"name": "chat", "profile": "vllm", "model": "gpt-5"}), 422)
    assert refused["errors"] == [{
        "field": "model", "pointer": "#/model",
        "detail": "vLLM inference endpoint serves one of: Qwen/Qwen2.5-0.5B-Instruct, "
                  "Qwen/Qwen2.5-7B-Instruct, meta-llama/Llama-3.1-8B-Instruct."}]
    assert not Service.objects.exists()
