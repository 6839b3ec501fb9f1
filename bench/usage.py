"""Showback as usage records grow: the GPU-hours a workspace's landing page and the
administrators' overview read, over 12 months, at a few records and at 1,000,000.

Seeds 1,000,000 closed allocations (500 workspaces, 4 groups, 3 GPU models, each within
one month, so that the monthly sums can be built by one GROUP BY) and 1,000 still open,
then reports the SQL query count of a workspace's showback (landing page and API: this
month by instance, the last 12 months) at 1 record and at 1,000,000, and the p50/p99 of the
whole portal's 12-month summary by group with cost, checked against a sum over the
records themselves.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/gpupaas_bench python bench/usage.py

The database named in DATABASE_URL is dropped and created again.
"""

import datetime
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gpupaas_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gpupaas.settings")

from bench.pages import recreate_database  # noqa: E402

ROWS = int(os.environ.get("BENCH_USAGE_ROWS", "1000000"))
OPEN = 1_000
WORKSPACES = 500
RUNS = 50


def main() -> None:
    recreate_database()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from workspaces import usage
    from workspaces.models import GpuPrice, UsageRecord, Workspace

    call_command("migrate", verbosity=0)
    User = get_user_model()
    groups = [Group.objects.create(name=f"team-{g}") for g in range(4)]
    users = User.objects.bulk_create(
        User(username=f"user-{i}", email=f"user-{i}@example.com") for i in range(WORKSPACES))
    for i, user in enumerate(users):
        user.groups.add(groups[i % 4])
    workspaces = Workspace.objects.bulk_create(Workspace(owner=u) for u in users)
    for model, price in (("H100", "2.50"), ("A100", "1.20"), ("", "0.80")):
        GpuPrice.objects.create(gpu_model=model, per_hour=price)
    measured = workspaces[0]
    now = timezone.now()

    def showback_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            usage.showback(workspace=measured, now=now)
            this_month = usage.month_start(now)
            usage.summary(first=this_month, last=this_month, workspace=measured, now=now)
        return len(queries)

    UsageRecord.objects.create(
        workspace=measured, user=users[0], username="user-0", group="team-0", kind="instance",
        object_id=0, name="first", instance_id=0, instance_name="first", gpu_model="H100",
        gpus=1, cpu=4, memory_gib=16, started_at=now - datetime.timedelta(hours=1))
    few = showback_queries()

    first_id = workspaces[0].pk
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # Closed allocations, each inside one of the 11 months before this one (day 1 to 27, under a
        # day long), then the allocations still open; then the monthly sums, as closing
        # would have kept them.
        cursor.execute("""
            INSERT INTO workspaces_usagerecord
              (workspace_id, user_id, username, "group", kind, object_id, name, instance_id,
               instance_name, gpu_model, gpus, cpu, memory_gib, started_at, ended_at)
            SELECT %(first)s + w, u.id, u.username, 'team-' || (w %% 4), 'instance', 1 + i,
                   'job-' || i, 1 + i, 'job-' || i, (ARRAY['H100', 'A100', 'L40S'])[1 + i %% 3],
                   1 + i %% 8, 4, 32, s, s + make_interval(secs => 60 + i %% 80000)
            FROM generate_series(1, %(rows)s) AS i,
                 LATERAL (SELECT i %% %(workspaces)s AS w) AS pick,
                 LATERAL (SELECT date_trunc('month', now()) - make_interval(months => 1 + i %% 11)
                          + make_interval(days => i %% 27, secs => i %% 3000) AS s) AS t,
                 LATERAL (SELECT id, username FROM auth_user
                          WHERE username = 'user-' || pick.w) AS u
        """, {"first": first_id, "rows": ROWS, "workspaces": WORKSPACES})
        cursor.execute("""
            INSERT INTO workspaces_usagerecord
              (workspace_id, user_id, username, "group", kind, object_id, name, instance_id,
               instance_name, gpu_model, gpus, cpu, memory_gib, started_at, ended_at)
            SELECT %(first)s + i %% %(workspaces)s, NULL, 'user-' || i %% %(workspaces)s,
                   'team-' || (i %% %(workspaces)s %% 4), 'instance', 2000000000 + i,
                   'open-' || i, 2000000000 + i, 'open-' || i, 'H100', 2, 4, 32,
                   now() - make_interval(hours => 1 + i %% 48), NULL
            FROM generate_series(1, %(open)s) AS i
        """, {"first": first_id, "workspaces": WORKSPACES, "open": OPEN})
        cursor.execute("""
            INSERT INTO workspaces_usagemonth
              (month, workspace_id, user_id, username, "group", gpu_model, kind, gpu_seconds,
               cpu_seconds, memory_gib_seconds)
            SELECT date_trunc('month', started_at AT TIME ZONE 'UTC')::date, workspace_id,
                   max(user_id), username, "group", gpu_model, kind,
                   sum(gpus * floor(extract(epoch FROM ended_at - started_at)))::bigint,
                   sum(cpu * floor(extract(epoch FROM ended_at - started_at))),
                   sum(memory_gib * floor(extract(epoch FROM ended_at - started_at)))::bigint
            FROM workspaces_usagerecord WHERE ended_at IS NOT NULL
            GROUP BY 1, workspace_id, username, "group", gpu_model, kind
        """)
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM workspaces_usagerecord")
        rows = cursor.fetchone()[0]
    print(f"seeded {rows} usage records in {time.perf_counter() - started:.1f} s")
    many = showback_queries()

    first = usage.month_start(now - datetime.timedelta(days=334))
    last = usage.month_start(now)
    timings = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        summary = usage.summary(first=first, last=last, by="group", now=now, priced=True)
        timings.append((time.perf_counter() - t0) * 1000)
    timings.sort()
    p50, p99 = statistics.median(timings), timings[int(len(timings) * 0.99) - 1]
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT sum(gpus * floor(extract(epoch FROM
                       least(coalesce(ended_at, %(now)s), %(now)s) - started_at)))
            FROM workspaces_usagerecord WHERE kind = 'instance' AND started_at >= %(start)s
        """, {"now": now, "start": usage.month_bounds(first)[0]})
        direct = float(cursor.fetchone()[0])
    total = summary.total.gpu_seconds
    print(f"portal, 12 months by group: {len(summary.rows)} groups, "
          f"{total / 3600:,.0f} GPU-hours, cost {summary.total.cost:,.2f} "
          f"{summary.currency}; a direct sum over the records gives {direct / 3600:,.0f} "
          f"(difference {abs(total - direct):.0f} GPU-seconds)")
    print(f"portal summary: p50={p50:.1f} ms p99={p99:.1f} ms over {RUNS} runs")
    print(f"usage: workspace_queries={few}/{many} portal_p99_ms={p99:.1f} rows={rows}")


if __name__ == "__main__":
    main()
