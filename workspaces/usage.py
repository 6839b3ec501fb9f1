"""GPU, CPU and memory usage: exact allocation records and the monthly sums showback reads.

An allocation opens when an instance, a notebook or a service reaches Running and closes
when it leaves Running (`instances.lifecycle.transition` calls `open_allocation` and
`close_allocation` in the transaction that moves the row, under the workspace lock). Closing
adds its seconds to `UsageMonth`, split at month boundaries, so a summary reads a few
hundred rows at most, however many records there are. Allocations still open are added
live, up to the moment of the query.

Totals count instances: an instance's GPUs are what the workspace holds, and its notebooks
and services use some of them (their records say who used which)."""

import csv
import datetime
import io
import logging
import smtplib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from .models import GpuPrice, GroupPolicy, UsageKind, UsageMonth, UsageRecord, Workspace

UTC = datetime.UTC
log = logging.getLogger(__name__)
DIMENSIONS = ("workspace", "user", "group", "gpu_model")


@dataclass(frozen=True)
class Allocation:
    """What a deployment holds while it runs, as its usage record copies it."""

    kind: str
    object_id: int
    name: str
    workspace_id: int
    user: AbstractBaseUser | None
    instance_id: int
    instance_name: str
    gpu_model: str
    gpus: int
    cpu: Decimal
    memory_gib: int


def _group_and_budget(user: AbstractBaseUser | None) -> tuple[str, int | None]:
    """The group a user's usage is attributed to (the one whose quota applies: the most
    GPUs, then by name; '' for none) and its monthly GPU-hour budget: one query."""
    if user is None:
        return "", None
    row = (user.groups.order_by(F("policy__default_max_gpus").desc(nulls_last=True), "name")
           .values_list("name", "policy__monthly_gpu_hours").first())
    return row if row else ("", None)


def group_of(user: AbstractBaseUser | None) -> str:
    return _group_and_budget(user)[0]


def open_allocation(allocation: Allocation, *, at: datetime.datetime) -> None:
    """Start counting (a no-op if this object's allocation is already open)."""
    user = allocation.user
    if UsageRecord.objects.filter(kind=allocation.kind, object_id=allocation.object_id,
                                  ended_at__isnull=True).exists():
        return
    UsageRecord.objects.create(
        workspace_id=allocation.workspace_id, user=user,
        username=user.get_username() if user else "", group=group_of(user),
        kind=allocation.kind, object_id=allocation.object_id, name=allocation.name[:100],
        instance_id=allocation.instance_id, instance_name=allocation.instance_name[:100],
        gpu_model=allocation.gpu_model, gpus=allocation.gpus, cpu=allocation.cpu,
        memory_gib=allocation.memory_gib, started_at=at,
    )


def close_allocation(*, kind: str, object_id: int, at: datetime.datetime) -> UsageRecord | None:
    """Stop counting: close the open record (if any) at `at` and add it to the months."""
    with transaction.atomic():
        record = (UsageRecord.objects.select_for_update()
                  .filter(kind=kind, object_id=object_id, ended_at__isnull=True).first())
        if record is None:
            return None
        record.ended_at = max(at, record.started_at)
        record.save(update_fields=["ended_at"])
        for month, seconds in split_by_month(record.started_at, record.ended_at):
            key = {"month": month, "workspace_id": record.workspace_id,
                   "username": record.username, "group": record.group,
                   "gpu_model": record.gpu_model, "kind": record.kind}
            row, _ = UsageMonth.objects.select_for_update().get_or_create(
                **key, defaults={"user_id": record.user_id})
            UsageMonth.objects.filter(pk=row.pk).update(
                gpu_seconds=F("gpu_seconds") + record.gpus * seconds,
                cpu_seconds=F("cpu_seconds") + record.cpu * seconds,
                memory_gib_seconds=F("memory_gib_seconds") + record.memory_gib * seconds)
    return record


def month_start(moment: datetime.datetime | datetime.date) -> datetime.date:
    if isinstance(moment, datetime.datetime):
        moment = moment.astimezone(UTC)
    return datetime.date(moment.year, moment.month, 1)


def next_month(month: datetime.date) -> datetime.date:
    return datetime.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def month_bounds(month: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    start = datetime.datetime(month.year, month.month, 1, tzinfo=UTC)
    end_month = next_month(month)
    return start, datetime.datetime(end_month.year, end_month.month, 1, tzinfo=UTC)


def split_by_month(start: datetime.datetime,
                   end: datetime.datetime) -> Iterator[tuple[datetime.date, int]]:
    """Whole seconds of [start, end) in each UTC month it touches."""
    month = month_start(start)
    while True:
        lo, hi = month_bounds(month)
        seconds = int((min(end, hi) - max(start, lo)).total_seconds())
        if seconds > 0:
            yield month, seconds
        if end <= hi:
            return
        month = next_month(month)


def parse_month(text: str) -> datetime.date:
    """'2026-11' to its first day; ValueError with words a user can act on."""
    try:
        parsed = datetime.datetime.strptime(text.strip(), "%Y-%m")
    except ValueError:
        raise ValueError(f"{text!r} is not a month: write it as YYYY-MM, for example "
                         f"{timezone.now():%Y-%m}.") from None
    return datetime.date(parsed.year, parsed.month, 1)


# ---------------------------------------------------------------------------- reading


@dataclass
class Figures:
    gpu_seconds: float = 0
    cpu_seconds: float = 0
    memory_gib_seconds: float = 0
    cost: Decimal = Decimal(0)

    def add(self, gpu: float, cpu: float, memory: float, cost: Decimal = Decimal(0)) -> None:
        self.gpu_seconds += gpu
        self.cpu_seconds += cpu
        self.memory_gib_seconds += memory
        self.cost += cost

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600

    @property
    def cpu_hours(self) -> float:
        return self.cpu_seconds / 3600

    @property
    def memory_gib_hours(self) -> float:
        return self.memory_gib_seconds / 3600


@dataclass
class Summary:
    """Usage over [start, end), by a dimension; `rows` is (key, Figures), biggest first."""

    start: datetime.datetime
    end: datetime.datetime
    by: str
    rows: list[tuple[str, Figures]] = field(default_factory=list)
    currency: str = ""  # set when prices were given: each row's cost is in it

    @property
    def by_label(self) -> str:
        return self.by.replace("_", " ")

    @property
    def total(self) -> Figures:
        total = Figures()
        for _, f in self.rows:
            total.add(f.gpu_seconds, f.cpu_seconds, f.memory_gib_seconds, f.cost)
        return total

    def csv(self) -> str:
        """One row per key, then the total; a cost column where prices were given."""
        out = io.StringIO()
        writer = csv.writer(out)
        cost = [f"cost_{self.currency.lower()}"] if self.currency else []
        writer.writerow([self.by, "gpu_hours", "cpu_hours", "memory_gib_hours", *cost])
        for key, f in [*self.rows, ("total", self.total)]:
            writer.writerow([key or "(none)", f"{f.gpu_hours:.4f}", f"{f.cpu_hours:.4f}",
                             f"{f.memory_gib_hours:.4f}",
                             *([f"{f.cost:.2f}"] if cost else [])])
        return out.getvalue()


def prices() -> tuple[dict[str, Decimal], str]:
    """Price per GPU-hour by model ('' for any model without its own) and the currency."""
    rows = list(GpuPrice.objects.values_list("gpu_model", "per_hour", "currency"))
    return {model: price for model, price, _ in rows}, (rows[0][2] if rows else "")


def _price(table: dict[str, Decimal], gpu_model: str, gpu_seconds: float) -> Decimal:
    price = table.get(gpu_model, table.get(""))
    return Decimal(0) if price is None else Decimal(gpu_seconds) / 3600 * price


# Where each dimension's key is read, in the monthly sums and in a record.
FIELDS = {"workspace": "workspace__owner__username", "user": "username", "group": "group",
          "gpu_model": "gpu_model"}


def summary(*, first: datetime.date, last: datetime.date, by: str = "workspace",
            workspace: Workspace | None = None, group: str | None = None,
            kind: str = UsageKind.INSTANCE, now: datetime.datetime | None = None,
            priced: bool = False) -> Summary:
    """Usage of whole months `first`..`last` (inclusive), by `by` (one of DIMENSIONS), of
    one workspace, one group or the whole portal; with its cost where `priced`. Two queries whatever
    the number of records (three when priced): the monthly sums, and the allocations still
    open (their seconds up to `now`)."""
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
    now = now or timezone.now()
    start, _ = month_bounds(first)
    _, end = month_bounds(last)
    table, currency = prices() if priced else ({}, "")
    figures: dict[str, Figures] = defaultdict(Figures)
    months = UsageMonth.objects.filter(month__gte=first, month__lte=last, kind=kind)
    opened = UsageRecord.objects.filter(ended_at__isnull=True, kind=kind, started_at__lt=end)
    if workspace is not None:
        months, opened = months.filter(workspace=workspace), opened.filter(workspace=workspace)
    if group is not None:
        months, opened = months.filter(group=group), opened.filter(group=group)
    # Summed in the database by the dimension (and the GPU model, which sets the price).
    for row in (months.values(FIELDS[by], "gpu_model")
                .annotate(gpu=Sum("gpu_seconds"), cpu=Sum("cpu_seconds"),
                          memory=Sum("memory_gib_seconds")).order_by()):
        figures[row[FIELDS[by]]].add(row["gpu"], float(row["cpu"]), row["memory"],
                                     _price(table, row["gpu_model"], row["gpu"]))
    for key, gpu_model, gpus, cpu, memory, started in opened.values_list(
            FIELDS[by], "gpu_model", "gpus", "cpu", "memory_gib", "started_at"):
        seconds = _overlap(started, None, start, min(end, now))
        figures[key].add(gpus * seconds, float(cpu) * seconds, memory * seconds,
                         _price(table, gpu_model, gpus * seconds))
    rows = sorted(figures.items(), key=lambda kv: (-kv[1].gpu_seconds, kv[0]))
    return Summary(start=start, end=end, by=by, rows=rows, currency=currency if table else "")


def _overlap(started: datetime.datetime, ended: datetime.datetime | None,
             start: datetime.datetime, end: datetime.datetime) -> int:
    """Whole seconds of an allocation (still open when `ended` is None) within [start, end)."""
    return max(0, int((min(ended or end, end) - max(started, start)).total_seconds()))


def by_instance(*, workspace: Workspace, month: datetime.date,
                now: datetime.datetime | None = None) -> list[tuple[str, float]]:
    """GPU-hours of each of the workspace's instances in `month`, biggest first (one query:
    the records that overlap the month, a workspace's few)."""
    now = now or timezone.now()
    start, end = month_bounds(month)
    hours: dict[str, float] = defaultdict(float)
    records = UsageRecord.objects.filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=start), workspace=workspace,
        kind=UsageKind.INSTANCE, started_at__lt=end)
    for record in records.only("instance_name", "gpus", "started_at", "ended_at"):
        hours[record.instance_name] += record.gpus * _overlap(
            record.started_at, record.ended_at, start, min(end, now)) / 3600
    return sorted(hours.items(), key=lambda kv: (-kv[1], kv[0]))


def monthly_gpu_hours(*, workspace: Workspace, months: int = 12,
                      now: datetime.datetime | None = None) -> list[tuple[datetime.date, float]]:
    """GPU-hours of each of the last `months` months, oldest first (two queries)."""
    now = now or timezone.now()
    last = month_start(now)
    first = last
    for _ in range(months - 1):
        first = datetime.date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)
    hours = {m: 0.0 for m in _months(first, last)}
    for row in (UsageMonth.objects.filter(workspace=workspace, kind=UsageKind.INSTANCE,
                                          month__gte=first, month__lte=last)
                .values("month").annotate(gpu=Sum("gpu_seconds"))):
        hours[row["month"]] += row["gpu"] / 3600
    for record in UsageRecord.objects.filter(workspace=workspace, kind=UsageKind.INSTANCE,
                                             ended_at__isnull=True):
        for month, seconds in split_by_month(record.started_at, max(now, record.started_at)):
            if month in hours:
                hours[month] += record.gpus * seconds / 3600
    return list(hours.items())


def _months(first: datetime.date, last: datetime.date) -> Iterable[datetime.date]:
    month = first
    while month <= last:
        yield month
        month = next_month(month)


@dataclass(frozen=True)
class Bar:
    month: datetime.date
    hours: float
    x: int
    y: float
    height: float


@dataclass(frozen=True)
class Showback:
    """A workspace's GPU-hours as its landing page shows them: this month, by instance, and
    the last 12 months as bars of a server-side SVG chart (the CSP allows no script)."""

    this_month: float
    by_instance: list[tuple[str, float]]
    bars: list[Bar]

    CHART_HEIGHT = 80  # of the bars' area, in the SVG's units; labels go below
    BAR_STEP = 24

    @property
    def any(self) -> bool:
        return any(bar.hours for bar in self.bars)


def showback(*, workspace: Workspace, now: datetime.datetime | None = None) -> Showback:
    """Three queries, however many records the workspace has."""
    now = now or timezone.now()
    series = monthly_gpu_hours(workspace=workspace, now=now)
    top = max((hours for _, hours in series), default=0) or 1
    bars = []
    for i, (month, hours) in enumerate(series):
        height = round(hours / top * Showback.CHART_HEIGHT, 1)
        bars.append(Bar(month=month, hours=hours, x=i * Showback.BAR_STEP + 3,
                        y=Showback.CHART_HEIGHT - height, height=height))
    return Showback(this_month=series[-1][1], bars=bars,
                    by_instance=by_instance(workspace=workspace, month=month_start(now), now=now))


# ---------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """A monthly GPU-hour budget and what this month used of it."""

    whose: str  # "your workspace", "the group ml-team"
    limit: int
    used: float
    month: datetime.date

    @property
    def percent(self) -> int:
        return int(self.used * 100 // self.limit) if self.limit else 100

    @property
    def spent(self) -> bool:
        return self.used >= self.limit

    @property
    def words(self) -> str:
        return (f"{self.whose[0].upper()}{self.whose[1:]} has used {self.used:.1f} of its "
                f"{self.limit} GPU-hours for {self.month:%B %Y} ({self.percent} %).")

    @property
    def refusal(self) -> str:
        return (f"{self.words} Nothing more can launch or start until {next_month(self.month):%B 1}"
                ", unless an administrator raises the budget.")


def budgets(*, workspace: Workspace, user: AbstractBaseUser | None = None,
            now: datetime.datetime | None = None) -> list[Budget]:
    """The budgets that apply to a launch in `workspace` by `user` (the workspace's own, and
    the group the user's usage counts to), with this month's use; empty when none is set.
    One query, and two more per budget set."""
    now = now or timezone.now()
    month = month_start(now)
    out = []
    if workspace.monthly_gpu_hours is not None:
        used = summary(first=month, last=month, workspace=workspace, now=now).total.gpu_hours
        out.append(Budget("your workspace", workspace.monthly_gpu_hours, used, month))
    group, limit = _group_and_budget(user or workspace.owner)
    if limit is not None:
        used = summary(first=month, last=month, group=group, now=now).total.gpu_hours
        out.append(Budget(f"the group {group}", limit, used, month))
    return out


def warn_budgets(*, now: datetime.datetime | None = None) -> int:
    """Mail, once a month, the owners of workspaces and the members of groups that have used
    80 % of their monthly GPU-hour budget. Returns how many budgets were warned of."""
    now = now or timezone.now()
    month = month_start(now)
    warned = 0
    candidates: list[tuple[object, Budget, list[str]]] = []
    for workspace in (Workspace.objects.filter(monthly_gpu_hours__isnull=False)
                      .exclude(budget_warned_for=month).select_related("owner")):
        used = summary(first=month, last=month, workspace=workspace, now=now).total.gpu_hours
        candidates.append((workspace, Budget("your workspace", workspace.monthly_gpu_hours,
                                             used, month), [workspace.owner.email]))
    for policy in (GroupPolicy.objects.filter(monthly_gpu_hours__isnull=False)
                   .exclude(budget_warned_for=month).select_related("group")):
        name = policy.group.name
        used = summary(first=month, last=month, group=name, now=now).total.gpu_hours
        candidates.append((policy, Budget(f"the group {name}", policy.monthly_gpu_hours, used,
                                          month),
                           list(policy.group.user_set.values_list("email", flat=True))))
    for owner, budget, emails in candidates:
        if budget.percent < 80 or not type(owner).objects.filter(pk=owner.pk).exclude(
                budget_warned_for=month).update(budget_warned_for=month):
            continue
        warned += 1
        recipients = [e for e in emails if e]
        if not recipients:
            continue
        try:
            send_mail(f"{budget.percent} % of the GPU-hour budget for {month:%B} is used",
                      f"{budget.words} At 100 % nothing more can launch or start until "
                      f"{next_month(month):%B 1}.\n", settings.DEFAULT_FROM_EMAIL, recipients)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("could not send the budget warning to %s: %s", recipients, exc)
    return warned
