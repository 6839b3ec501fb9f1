"""The JSON API and the `gpupaas` command against the portal as production serves it
(uvicorn, the ASGI worker gunicorn runs), on the real database:

- Schemathesis sends every operation requests generated from the API's own OpenAPI document,
  authenticated with a token and aimed at alice's real objects: no answer may be a server
  error or break the schema (status codes, content types, bodies, headers).
- The `gpupaas` command, run as a user runs it, launches an instance that a real Celery
  worker provisions (`--wait` shows progress until Running), lists, shows and deletes it,
  and says why a launch failed, with the documented exit codes.
"""

import csv
import io
import json
import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
import yaml
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import services as api_services
from api.models import ApiToken
from clusters.crypto import encrypt
from instances import services as instance_services
from instances.models import Collaborator, Instance
from notebooks.models import Notebook, NotebookProfile, Service, ServiceProfile
from workspaces.models import UsageRecord, Workspace

from .conftest import ROOT, running_instance, workspace_of
from .kit.asgi import serve

EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "10"))


@pytest.fixture
def live_api(transactional_db, settings, alice, catalogue):
    """The portal served by uvicorn, with alice's token and real objects to aim at."""
    from gpupaas.asgi import application

    settings.API_RATE_LIMIT = "100000/m"  # the fuzzer is not what the limit is for
    instance = running_instance(alice, catalogue[2], "fuzzed")
    profile = NotebookProfile.objects.create(name="nb", display_name="NB", image="nb:1")
    notebook = Notebook.objects.create(
        instance=instance, name="explore", profile=profile, created_by=alice, image="nb:1",
        cpu=1, memory_gib=2, status="running", url="http://127.0.0.1:9/explore/",
        token_encrypted=encrypt("secret"))
    collaborator = Collaborator.objects.create(
        instance=instance, email="carol@example.com", invited_by=alice, token_hash="-",
        expires_at=timezone.now() + timezone.timedelta(days=7))
    service = Service.objects.create(
        instance=instance, name="curves", created_by=alice, cpu=1, memory_gib=1,
        status="failed", profile=ServiceProfile.objects.get(name="tensorboard"))
    token = api_services.create_api_token(user=alice, name="fuzz", days=1, scope="write")[1]
    with serve(application) as url:
        yield {"url": url, "token": token, "ids": {
            "instance_id": instance.pk, "notebook_id": notebook.pk,
            "collaborator_id": collaborator.pk, "service_id": service.pk}}


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


# A valid request for each operation that takes a body, sent before the generated ones, so
# the successful answers (201s) are checked against the schema too.
VALID_BODIES = {
    "POST /api/v1/instances": {"name": "fuzz-valid", "profile": "gpu-1"},
    "POST /api/v1/instances/{instance_id}/notebooks": {"name": "nb-valid", "profile": "nb",
                                                        "cpu": 1, "memory_gib": 1},
    "POST /api/v1/instances/{instance_id}/collaborators": {"emails": ["dan@example.com"]},
    "POST /api/v1/instances/{instance_id}/kubeconfig": {},
    "POST /api/v1/instances/{instance_id}/services": {"name": "svc-valid",
                                                       "profile": "tensorboard",
                                                       "cpu": 1, "memory_gib": 1},
}


def test_every_operation_answers_within_its_schema_and_never_with_a_server_error(live_api):
    """Every operation of /api/openapi.json: one valid request, then EXAMPLES generated ones
    (a bounded run, so the suite stays fast), aimed at alice's real objects rather than
    random ids."""
    schema = schemathesis.openapi.from_url(f"{live_api['url']}/api/openapi.json")
    # Then stop and start (notebooks' and services' before the instance's), then the
    # deletions, so the other operations meet a running instance and live objects.
    last = ("/stop", "/start", "/instances/{instance_id}/stop",
            "/instances/{instance_id}/start")

    def order(op) -> tuple:
        rank = max((i + 1 for i, end in enumerate(last) if op.path.endswith(end)), default=0)
        # The token ends itself last of all: what came before needed it.
        return (op.path.endswith("/me/token"), op.method.upper() == "DELETE", rank,
                op.path.count("{") == 1)

    operations = sorted((result.ok() for result in schema.get_all_operations()), key=order)
    assert len(operations) >= 18
    headers = {"Authorization": f"Bearer {live_api['token']}"}
    answered: dict[str, set[int]] = {}

    def call(operation, case) -> None:
        for name, value in live_api["ids"].items():
            if name in (case.path_parameters or {}):
                case.path_parameters[name] = value
        response = case.call_and_validate(base_url=live_api["url"], headers=headers,
                                          checks=CHECKS)
        answered.setdefault(operation.label, set()).add(response.status_code)

    for operation in operations:
        if operation.path.endswith("/instances/{instance_id}/start"):  # the worker's part
            instance_services.halt_instance(instance_id=live_api["ids"]["instance_id"])
        if operation.label in VALID_BODIES:
            call(operation, operation.Case(body=VALID_BODIES[operation.label],
                                           path_parameters=dict(live_api["ids"]),
                                           media_type="application/json"))

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                             database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            call(operation, case)  # noqa: B023 (run at once, in this iteration)

        fuzz()
    # Not only refusals: the happy path of nearly every operation was checked too.
    refused_only = sorted(label for label, codes in answered.items()
                          if not any(c < 300 for c in codes))
    # (a kubeconfig needs a Kubernetes instance, test_api covers it; retry a failed one;
    # keys are for API services, and this one is a browser app: test_service_keys)
    assert refused_only == ["DELETE /api/v1/services/{service_id}/keys/{key_id}",
                            "POST /api/v1/instances/{instance_id}/kubeconfig",
                            "POST /api/v1/instances/{instance_id}/retry",
                            "POST /api/v1/notebooks/{notebook_id}/retry",
                            "POST /api/v1/services/{service_id}/keys"], answered


def test_a_token_shared_by_parallel_jobs_gets_exactly_its_budget(live_api, settings):
    """One atomic count per request in the shared cache (Redis): 20 clients at once on one
    token get exactly the budget, never a refusal below it, and then 429 with Retry-After."""
    import threading

    import httpx

    settings.API_RATE_LIMIT = "30/h"
    statuses: list[int] = []
    retry_after: list[int] = []
    barrier = threading.Barrier(20)

    def job() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {live_api['token']}"}) as http:
            barrier.wait()
            for _ in range(2):
                response = http.get(f"{live_api['url']}/api/v1/quota")
                statuses.append(response.status_code)
                if response.status_code == 429:
                    retry_after.append(int(response.headers["Retry-After"]))

    threads = [threading.Thread(target=job) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 30 + [429] * 10
    assert all(0 < seconds <= 3600 for seconds in retry_after)


# --- the gpupaas command ---------------------------------------------------------------------


@pytest.fixture
def portal(transactional_db, celery_worker_process):
    from gpupaas.asgi import application

    with serve(application) as url:
        yield url


@pytest.fixture
def gpupaas(tmp_path):
    """Run the `gpupaas` console script as a user would, with a home of its own."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "GPUPAAS_URL", "GPUPAAS_TOKEN")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), COLUMNS="200",
               NO_COLOR="1", TERM="dumb")
    script = Path(sys.executable).parent / "gpupaas"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gpupaas_cli"]

    def run(*args: str, stdin: str = "", extra_env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args], input=stdin, capture_output=True, text=True,
                              env={**env, **(extra_env or {})}, cwd=ROOT, timeout=timeout)

    run.home = home
    return run


def test_launch_wait_ls_show_and_rm_from_the_command_line(alice, catalogue, portal, gpupaas):
    token = api_services.create_api_token(user=alice, name="laptop", days=7, scope="write")[1]
    logged_in = gpupaas("login", "--url", portal, "--token", token)
    assert logged_in.returncode == 0, logged_in.stderr
    assert "as alice (read-write token laptop, expires" in logged_in.stdout
    config = gpupaas.home / ".config" / "gpupaas" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": portal, "token": token}

    sizes = json.loads(gpupaas("sizes", "-o", "json").stdout)
    assert [(s["name"], s["fits"]) for s in sizes][:2] == [("gpu-1", True), ("gpu-2", True)]

    launched = gpupaas("launch", "train", "--size", "gpu-2", "--wait", "--poll", "0.3")
    assert launched.returncode == 0, launched.stderr
    assert "train is running." in launched.stdout
    assert "provisioning" in launched.stderr  # the progress it showed on the way
    assert Instance.objects.get(name="train").status == "running"

    listed = gpupaas("ls", "-o", "json")
    assert [(i["name"], i["status"], i["gpus"]) for i in json.loads(listed.stdout)] == [
        ("train", "running", 2)]
    table = gpupaas("ls").stdout
    assert "train" in table and "running" in table and "gpu-2" in table
    shown = gpupaas("show", "train")
    assert "Running" in shown.stdout and "instance.running" in shown.stdout

    declined = gpupaas("rm", "train", stdin="n\n")
    assert declined.returncode == 1 and "nothing was deleted" in declined.stderr
    assert Instance.objects.get(name="train").status == "running"
    removed = gpupaas("rm", "train", "--yes", "--wait", "--poll", "0.3", "-o", "json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["status"] == "deleted"
    assert gpupaas("ls", "-o", "json").stdout.strip() == "[]"


def test_login_from_stdin_whoami_and_logout_which_revokes_the_token(alice, portal, gpupaas):
    token = api_services.create_api_token(user=alice, name="ci", days=7, scope="read")[1]

    logged_in = gpupaas("login", "--url", portal, "--with-token", stdin=token + "\n")
    assert logged_in.returncode == 0, logged_in.stderr
    assert token not in logged_in.stdout
    who = gpupaas("whoami")
    assert who.returncode == 0, who.stderr
    assert f"alice on {portal}: end-user; read-only token ci, expires" in who.stdout

    out = gpupaas("logout")  # a read-only token may end itself

    assert out.returncode == 0, out.stderr
    assert f"Logged out of {portal}: token revoked" in out.stdout
    assert not (gpupaas.home / ".config" / "gpupaas" / "config.json").exists()
    row = ApiToken.objects.get(user=alice, name="ci")
    assert row.revoked_at is not None and row.revoked_reason == "logged out"
    again = gpupaas("whoami")
    assert again.returncode == 3 and "Not logged in" in again.stderr
    assert gpupaas("logout").returncode == 3
    refused = gpupaas("whoami", extra_env={"GPUPAAS_URL": portal, "GPUPAAS_TOKEN": token})
    assert refused.returncode == 3 and "revoked (logged out)" in refused.stderr


def test_the_command_says_why_and_exits_with_the_documented_code(alice, catalogue, portal,
                                                                gpupaas):
    # Refused before anything is written: 6, the field and the launch page's message.
    writer = api_services.create_api_token(user=alice, name="w", days=7, scope="write")[1]
    assert gpupaas("login", "--url", portal, "--token", writer).returncode == 0
    refused = gpupaas("launch", "x", "--size", "no-such-size")
    assert refused.returncode == 6
    assert "profile: This size is not available to you. Pick one of the sizes shown." in (
        refused.stderr)
    missing = gpupaas("show", "nope")
    assert (missing.returncode, missing.stderr.strip()) == (5, "Error: No instance named nope.")

    # Provisioning fails on the machine (8 GPU slots, 10 asked): 7 and the reason.
    Workspace.objects.filter(owner=alice).update(max_gpus=16)
    running_instance(alice, catalogue[8], "holds-all")
    failed = gpupaas("launch", "more", "--size", "gpu-2", "--wait", "--poll", "0.3")
    assert failed.returncode == 7, failed.stderr
    assert "more failed: No free GPU on Local machine: this size needs 2, 0 of 8 are free" in (
        failed.stderr)

    # A read-only token writing: 4. A revoked one: 3.
    reader = api_services.create_api_token(user=alice, name="r", days=7, scope="read")[1]
    as_reader = {"GPUPAAS_URL": portal, "GPUPAAS_TOKEN": reader}
    assert gpupaas("ls", extra_env=as_reader).returncode == 0
    assert gpupaas("rm", "holds-all", "--yes", extra_env=as_reader).returncode == 4
    api_services.revoke_api_token(token=alice.api_tokens.get(name="r"), by=alice)
    revoked = gpupaas("ls", extra_env=as_reader)
    assert revoked.returncode == 3 and "revoked" in revoked.stderr
    unreachable = gpupaas("ls", extra_env={"GPUPAAS_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 8


def test_a_failed_instance_is_retried_and_the_quota_shown_from_the_command_line(
        alice, catalogue, portal, gpupaas):
    writer = api_services.create_api_token(user=alice, name="w", days=7, scope="write")[1]
    assert gpupaas("login", "--url", portal, "--token", writer).returncode == 0
    assert gpupaas("--version").stdout.strip().startswith("gpupaas ")
    assert "Usage: gpupaas" in gpupaas("-h").stdout
    Workspace.objects.filter(owner=alice).update(max_gpus=16)
    holder = running_instance(alice, catalogue[8], "holds-all")
    assert gpupaas("launch", "more", "--size", "gpu-2", "--wait", "--poll", "0.3"
                   ).returncode == 7
    quota = gpupaas("quota")
    assert "GPUs:       8 of 16 in use, 8 left" in quota.stdout, quota.stdout
    assert json.loads(gpupaas("quota", "-o", "json").stdout)["instances_used"] == 1

    not_failed = gpupaas("retry", "holds-all")
    assert not_failed.returncode == 6 and "holds-all is running, not failed." in (
        not_failed.stderr)
    stopped = gpupaas("stop", "holds-all", "--wait", "--poll", "0.3")
    assert stopped.returncode == 0, stopped.stderr
    assert "holds-all is stopped; its GPUs are free." in stopped.stdout
    assert "GPUs:       0 of 16 in use, 16 left" in gpupaas("quota").stdout
    started = gpupaas("start", "holds-all", "--wait", "--poll", "0.3")
    assert started.returncode == 0 and "holds-all is running." in started.stdout, started.stderr
    UsageRecord.objects.filter(object_id=holder.pk, ended_at__isnull=True).update(
        started_at=timezone.now() - timedelta(minutes=90))  # as if it had run 90 minutes
    instance_services.delete_instance(instance=holder, by=alice)
    instance_services.teardown_instance(instance_id=holder.pk)
    used = gpupaas("usage")
    assert "holds-all" in used.stdout and "12.0 GPU-hours in" in used.stdout, used.stdout
    exported = list(csv.reader(io.StringIO(gpupaas("usage", "-o", "csv").stdout)))
    assert [row[0] for row in exported] == ["instance", "holds-all", "total"]
    assert 12 <= float(exported[1][1]) == float(exported[2][1]) < 12.1  # and a few seconds
    bad_month = gpupaas("usage", "--month", "2026-13")
    assert bad_month.returncode == 6 and "write it as YYYY-MM" in bad_month.stderr
    retried = gpupaas("retry", "more", "--wait", "--poll", "0.3")
    assert retried.returncode == 0, retried.stderr
    assert "more is running." in retried.stdout
    assert Instance.objects.get(name="more").status == "running"


def test_a_service_is_deployed_listed_and_removed_from_the_command_line(
        alice, catalogue, portal, gpupaas):
    writer = api_services.create_api_token(user=alice, name="w", days=7, scope="write")[1]
    assert gpupaas("login", "--url", portal, "--token", writer).returncode == 0
    running_instance(alice, catalogue[2], "train")
    offered = gpupaas("service", "catalogue")
    assert "tensorboard" in offered.stdout and "MLflow tracking server" in offered.stdout
    deployed = gpupaas("service", "deploy", "train", "--service", "tensorboard", "--wait",
                       "--poll", "0.3", timeout=240)
    assert deployed.returncode == 0, deployed.stderr
    assert "tensorboard is running; open it with `gpupaas service open train tensorboard`" in (
        deployed.stdout)
    assert "Starting tensorboard." in deployed.stderr  # the progress it showed on the way
    listed = json.loads(gpupaas("service", "ls", "-o", "json").stdout)
    assert [(s["name"], s["status"]) for s in listed] == [("tensorboard", "running")]
    missing = gpupaas("service", "rm", "train", "nope", "--yes")
    assert missing.returncode == 5 and "train has no service named nope." in missing.stderr
    removed = gpupaas("service", "rm", "train", "tensorboard", "--yes")
    assert removed.returncode == 0 and "tensorboard is deleting." in removed.stdout


def test_kubeconfig_merges_into_the_file_kubeconfig_names(alice, profiles, live_server_url,
                                                          gpupaas, tmp_path):
    from access.models import AccessToken
    from access.services import lost_access
    from workspaces.tokens import hash_token

    from .kube_fixtures import launch, provision

    instance = provision(launch(alice, profiles["namespace"], name="kube"))
    token = api_services.create_api_token(user=alice, name="k", days=7, scope="write")[1]
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "other", "cluster": {"server": "https://other.example"}}],
        "users": [{"name": "me", "user": {"token": "other-token"}}],
        "contexts": [{"name": "other", "context": {"cluster": "other", "user": "me"}}]}))
    env = {"GPUPAAS_URL": live_server_url, "GPUPAAS_TOKEN": token,
           "KUBECONFIG": f"{first}{os.pathsep}{second}"}
    done = gpupaas("kubeconfig", "kube", "--hours", "2", extra_env=env)
    assert done.returncode == 0, done.stderr
    merged = yaml.safe_load(first.read_text())
    assert not second.exists()
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    context = merged["current-context"]
    assert context.endswith("-kube")
    assert {c["name"] for c in merged["contexts"]} == {"other", context}
    [cluster] = [c for c in merged["clusters"] if c["name"] != "other"]
    assert cluster["cluster"]["server"].endswith(f"/k8s/{instance.pk}/")
    [user] = [u for u in merged["users"] if u["name"] != "me"]
    stored = AccessToken.objects.get(instance=instance)
    assert stored.token_hash == hash_token(user["user"]["token"]) and stored.is_live
    assert lost_access(user=alice, instance_id=instance.pk) == (instance, "")
    # Again: the entries are replaced, not repeated.
    assert gpupaas("kubeconfig", "kube", extra_env=env).returncode == 0
    assert len(yaml.safe_load(first.read_text())["contexts"]) == 2


def test_notebook_deploy_open_waits_for_jupyterlab_and_opens_it_signed_in(
        alice, catalogue, minimal, portal, gpupaas, tmp_path):
    """The real thing: a worker starts JupyterLab from the Minimal environment; --open asks
    for the token (audited) and hands the signed-in URL to the user's browser ($BROWSER)."""
    from workspaces.models import AuditEvent

    running_instance(alice, catalogue[1], "lab")
    token = api_services.create_api_token(user=alice, name="k", days=7, scope="write")[1]
    opened = tmp_path / "opened-url"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    done = gpupaas("notebook", "deploy", "lab", "--profile", "minimal", "--open",
                   "--poll", "0.5", extra_env={"GPUPAAS_URL": portal, "GPUPAAS_TOKEN": token,
                                               "BROWSER": str(browser)}, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "reachable" in done.stderr.lower() or "running" in done.stderr.lower()
    url = opened.read_text().strip()
    notebook = Notebook.objects.get(name="minimal")
    # Its address on the portal (stable across restarts), with its token.
    port = urlsplit(portal).port
    assert url == (f"http://{notebook.host_label}.localhost:{port}/lab"
                   f"?token={notebook.token}")
    # What the browser does with it: JupyterLab opens, and the pages it asks for next,
    # without the token, get in with the cookie the portal set.
    browser = httpx.Client(base_url=portal, timeout=30, headers={
        "Host": f"{notebook.host_label}.localhost:{port}"})
    lab = browser.get(f"/lab?token={notebook.token}", headers={"Accept": "text/html"})
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert browser.get("/api/status").status_code == 200
    revealed = AuditEvent.objects.get(action="notebook.token_revealed")
    assert revealed.actor == alice and revealed.object_id == str(notebook.pk)


@pytest.fixture
def live_server_url(transactional_db):
    from gpupaas.asgi import application

    with serve(application) as url:
        yield url


def test_a_local_sandbox_has_no_kubeconfig_to_write(alice, catalogue, live_server_url,
                                                    gpupaas):
    running_instance(alice, catalogue[1], "sandbox")
    token = api_services.create_api_token(user=alice, name="k", days=7, scope="write")[1]
    done = gpupaas("kubeconfig", "sandbox", extra_env={
        "GPUPAAS_URL": live_server_url, "GPUPAAS_TOKEN": token})
    assert done.returncode == 6
    assert "This instance has no Kubernetes API." in done.stderr
    assert not (gpupaas.home / ".kube").exists()


def test_notebook_deploy_refuses_what_does_not_fit_in_the_instances_words(
        alice, catalogue, live_server_url, gpupaas):
    instance = running_instance(alice, catalogue[1], "small")
    token = api_services.create_api_token(user=alice, name="k", days=7, scope="write")[1]
    env = {"GPUPAAS_URL": live_server_url, "GPUPAAS_TOKEN": token}
    done = gpupaas("notebook", "deploy", "small", "--profile", "datascience",
                   "--memory-gib", "4096", extra_env=env)
    assert done.returncode == 6, done.stderr
    assert f"Does not fit: the instance has {instance.cpu.normalize()} CPU" in done.stderr
    assert not Notebook.objects.exists()
    assert workspace_of(alice).instances.count() == 1
