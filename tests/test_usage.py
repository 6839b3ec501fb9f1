"""GPU-hours: exact allocation records from status transitions, the monthly sums showback
reads, and where users and administrators see them (landing page, API, overview, CSV)."""

import csv
import datetime
import io
import itertools
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from instances import services
from instances.models import Instance
from workspaces import usage
from workspaces.models import GpuPrice, UsageMonth, UsageRecord, Workspace

from .conftest import make_user, running_instance, workspace_of

pytestmark = pytest.mark.django_db

UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_usage_runs_from_the_instant_it_runs_to_the_instant_it_is_deleted(alice, catalogue):
    instance = running_instance(alice, catalogue[2], "train")
    record = UsageRecord.objects.get(kind="instance", object_id=instance.pk)
    assert record.started_at == instance.status_changed_at  # the same instant as Running
    assert (record.ended_at, record.gpus, record.username, record.group) == (
        None, 2, "alice", "Users")
    UsageRecord.objects.filter(pk=record.pk).update(  # as if it had run for a while
        started_at=record.started_at - datetime.timedelta(seconds=90))

    services.delete_instance(instance=instance, by=alice)
    instance.refresh_from_db()
    record.refresh_from_db()
    assert instance.status == "deleting" and record.ended_at == instance.status_changed_at
    seconds = int((record.ended_at - record.started_at).total_seconds())
    assert 90 <= seconds < 120
    services.teardown_instance(instance_id=instance.pk)  # deleted: nothing more to count
    assert UsageRecord.objects.filter(object_id=instance.pk).count() == 1

    month = UsageMonth.objects.get(workspace=workspace_of(alice), kind="instance")
    assert (month.gpu_seconds, month.memory_gib_seconds) == (
        2 * seconds, instance.memory_gib * seconds)


def test_a_failure_stops_the_count_and_a_retry_starts_a_new_record(alice, catalogue):
    instance = running_instance(alice, catalogue[1], "flaky")
    services._transition(instance.pk, from_=["running"], to="failed", message="Node lost.")
    assert UsageRecord.objects.get(object_id=instance.pk).ended_at is not None

    services.retry_instance(instance=Instance.objects.get(pk=instance.pk), by=alice)
    assert UsageRecord.objects.filter(object_id=instance.pk, ended_at__isnull=True).count() == 0
    services.provision_instance(instance_id=instance.pk)  # pending holds no GPU-seconds
    records = UsageRecord.objects.filter(object_id=instance.pk).order_by("started_at")
    assert [r.ended_at is None for r in records] == [False, True]
    assert records[1].started_at == Instance.objects.get(pk=instance.pk).status_changed_at


def test_an_instance_that_never_ran_records_nothing(alice, catalogue):
    instance = services.launch_instance(workspace=workspace_of(alice), name="never",
                                        profile=catalogue[2], by=alice)
    services._transition(instance.pk, from_=["pending"], to="failed", message="No nodes.")
    assert not UsageRecord.objects.filter(object_id=instance.pk).exists()


OBJECT_IDS = itertools.count(100_000)


def record(user, *, gpus: int, start: str, end: str | None, model: str = "H100",
           name: str = "x", kind: str = "instance") -> None:
    """An allocation opened and (unless `end` is None) closed, as transitions do."""
    object_id = next(OBJECT_IDS)
    usage.open_allocation(usage.Allocation(
        kind=kind, object_id=object_id, name=name, workspace_id=workspace_of(user).pk,
        user=user, instance_id=object_id, instance_name=name, gpu_model=model, gpus=gpus,
        cpu=Decimal("4.0"), memory_gib=16,
    ), at=at(start))
    if end is not None:
        usage.close_allocation(kind=kind, object_id=object_id, at=at(end))


def test_an_allocation_over_a_month_boundary_is_split_at_midnight_utc(alice):
    record(alice, gpus=2, start="2026-10-31T23:00:00", end="2026-11-01T01:30:00")
    october = usage.summary(first=datetime.date(2026, 10, 1), last=datetime.date(2026, 10, 1),
                            workspace=workspace_of(alice))
    november = usage.summary(first=datetime.date(2026, 11, 1), last=datetime.date(2026, 11, 1),
                             workspace=workspace_of(alice))
    assert october.total.gpu_seconds == 2 * 3600
    assert november.total.gpu_seconds == 2 * 5400
    assert november.total.cpu_seconds == 4 * 5400


def test_the_sums_by_workspace_user_group_and_model_add_up_to_the_same_total(alice, catalogue):
    bob = make_user("bob", group="Administrators")
    record(alice, gpus=2, start="2026-11-02T08:00:00", end="2026-11-02T10:00:00")
    record(alice, gpus=1, start="2026-11-03T08:00:00", end="2026-11-03T08:00:07", model="A100")
    record(bob, gpus=4, start="2026-11-30T20:00:00", end="2026-12-01T02:00:00")
    record(bob, gpus=8, start="2026-12-01T00:00:00", end=None)  # still running
    record(alice, gpus=3, start="2026-11-05T00:00:00", end="2026-11-05T01:00:00",
           kind="notebook")  # part of an instance's GPUs: not counted again
    now = at("2026-12-01T00:30:00")
    nov, dec = datetime.date(2026, 11, 1), datetime.date(2026, 12, 1)

    expected = 2 * 7200 + 7 + 4 * 6 * 3600 + 8 * 1800
    totals = {by: usage.summary(first=nov, last=dec, by=by, now=now) for by in usage.DIMENSIONS}
    assert {by: s.total.gpu_seconds for by, s in totals.items()} == dict.fromkeys(
        usage.DIMENSIONS, expected)
    assert dict(totals["user"].rows)["bob"].gpu_seconds == 4 * 6 * 3600 + 8 * 1800
    assert {k: f.gpu_seconds for k, f in totals["gpu_model"].rows} == {
        "H100": expected - 7, "A100": 7}
    assert {k for k, _ in totals["group"].rows} == {"Users", "Administrators"}
    # Each month alone, and the open allocation only up to now.
    only_nov = usage.summary(first=nov, last=nov, now=now).total.gpu_seconds
    only_dec = usage.summary(first=dec, last=dec, now=now).total.gpu_seconds
    assert only_nov + only_dec == expected and only_dec == 4 * 2 * 3600 + 8 * 1800


def test_showback_reads_a_constant_number_of_queries_as_records_grow(alice):
    workspace = workspace_of(alice)
    now = at("2026-11-20T00:00:00")

    def reads() -> int:
        with CaptureQueriesContext(connection) as queries:
            usage.showback(workspace=workspace, now=now)
            usage.summary(first=datetime.date(2025, 12, 1), last=datetime.date(2026, 11, 1),
                          workspace=workspace, now=now)
        return len(queries)

    record(alice, gpus=1, start="2026-11-01T00:00:00", end="2026-11-01T01:00:00")
    few = reads()
    for day in range(2, 20):
        record(alice, gpus=2, start=f"2026-11-{day:02}T00:00:00", end=None if day == 19
               else f"2026-11-{day:02}T03:00:00", name=f"run-{day}")
    assert reads() == few == 5


def test_the_landing_page_shows_this_months_gpu_hours_by_instance(alice_client, alice, catalogue):
    assert "GPU-hours" not in alice_client.get("/").content.decode()  # nothing used yet
    instance = running_instance(alice, catalogue[2], "train-a")
    UsageRecord.objects.filter(object_id=instance.pk).update(
        started_at=timezone.now() - datetime.timedelta(hours=3))
    page = alice_client.get("/").content.decode()
    assert "GPU-hours this month" in page
    assert "<td>train-a</td><td>6.0</td>" in page
    assert 'aria-labelledby="gpu-hours-chart-title"' in page and "<rect" in page


def test_the_api_gives_a_month_of_your_own_usage_and_refuses_a_bad_month(
        alice_client, alice, catalogue, client):
    record(alice, gpus=2, start="2026-11-02T08:00:00", end="2026-11-02T09:30:00", name="big")
    november = alice_client.get("/api/v1/usage?month=2026-11").json()
    assert (november["gpu_hours"], november["instances"]) == (
        3.0, [{"name": "big", "gpu_hours": 3.0}])
    assert len(november["last_12_months"]) == 12
    bad = alice_client.get("/api/v1/usage?month=november")
    assert bad.status_code == 422
    assert "write it as YYYY-MM" in bad.json()["detail"]
    assert alice_client.get("/api/v1/usage?month=2999-01").status_code == 422

    bob = make_user("bob")
    client.force_login(bob)
    assert client.get("/api/v1/usage?month=2026-11").json()["gpu_hours"] == 0


def test_administrators_export_a_period_by_group_as_csv_with_its_cost(client, alice, admin_user):
    GpuPrice.objects.create(gpu_model="H100", per_hour=Decimal("2.50"))
    record(alice, gpus=2, start="2026-10-02T08:00:00", end="2026-10-02T10:00:00")
    record(alice, gpus=1, start="2026-11-02T08:00:00", end="2026-11-02T09:00:00")
    client.force_login(admin_user)
    page = client.get("/admin/overview/?from=2026-10&to=2026-11&by=group")
    assert page.status_code == 200 and "Download CSV" in page.content.decode()
    exported = client.get("/admin/overview/?from=2026-10&to=2026-11&by=group&format=csv")
    assert exported["Content-Type"].startswith("text/csv")
    assert "gpu-hours-by-group-2026-10-to-2026-11.csv" in exported["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    assert rows[0] == ["group", "gpu_hours", "cpu_hours", "memory_gib_hours", "cost_eur"]
    assert rows[1][:2] == ["Users", "5.0000"] and rows[1][4] == "12.50"
    assert rows[-1][0] == "total" and rows[-1][4] == "12.50"

    wrong = client.get("/admin/overview/?from=2026-11&to=2026-10")
    assert wrong.status_code == 400
    assert "The first month comes after the last." in wrong.content.decode()


def test_only_administrators_see_the_overviews_figures(alice_client, alice):
    record(alice, gpus=1, start="2026-11-02T08:00:00", end="2026-11-02T09:00:00")
    refused = alice_client.get("/admin/overview/?format=csv")
    assert refused.status_code == 302 and "/admin/login/" in refused["Location"]


def used_this_month(user, hours: float, group: str = "Users") -> None:
    """Closed usage of this month, as the monthly sums hold it."""
    UsageMonth.objects.create(
        month=usage.month_start(timezone.now()), workspace=workspace_of(user),
        username=user.get_username(), group=group, gpu_model="", kind="instance",
        gpu_seconds=int(hours * 3600))


def test_a_spent_workspace_budget_refuses_launches_and_starts_with_the_figures(
        alice_client, alice, catalogue):
    from django.core.exceptions import ValidationError

    Workspace.objects.filter(owner=alice).update(monthly_gpu_hours=10)
    used_this_month(alice, 10.5)
    month = usage.month_start(timezone.now())
    expected = (f"Your workspace has used 10.5 of its 10 GPU-hours for {month:%B %Y} (105 %). "
                f"Nothing more can launch or start until {usage.next_month(month):%B 1}, unless "
                "an administrator raises the budget.")
    with pytest.raises(ValidationError) as refused:
        services.launch_instance(workspace=workspace_of(alice), name="more",
                                 profile=catalogue[1], by=alice)
    assert refused.value.message_dict["profile"] == [expected]
    page = alice_client.post("/instances/new/", {"name": "more", "profile": catalogue[1].pk})
    assert expected in page.content.decode()
    assert expected in alice_client.get("/").content.decode()  # the banner says it first
    assert not Instance.objects.filter(name="more").exists()


def test_at_80_percent_of_a_group_budget_members_see_a_banner_and_get_one_mail(
        alice_client, alice, catalogue):
    from django.core import mail

    from workspaces.models import GroupPolicy

    GroupPolicy.objects.filter(group__name="Users").update(monthly_gpu_hours=100)
    bob = make_user("bob")
    used_this_month(alice, 50)
    used_this_month(bob, 35)
    landing = alice_client.get("/").content.decode()
    assert "The group Users has used 85.0 of its 100 GPU-hours" in landing
    assert usage.warn_budgets() == 1
    assert sorted(mail.outbox[0].to) == ["alice@example.com", "bob@example.com"]
    assert mail.outbox[0].subject.startswith("85 % of the GPU-hour budget for ")
    assert usage.warn_budgets() == 0  # once a month
    services.launch_instance(workspace=workspace_of(alice), name="still-fits",
                             profile=catalogue[1], by=alice)  # 85 % is not spent
