"""GPU-hours: the landing page's showback, answered as JSON."""


from django.http import HttpRequest
from django.utils import timezone
from ninja import Router

from workspaces import usage

from .common import own_workspace, problems
from .problems import ApiError
from .schemas import UsageOut

router = Router(tags=["usage"])


@router.get("/usage", response={200: UsageOut, **problems(422)})
def get_usage(request: HttpRequest, month: str = "") -> dict:
    """Your workspace's usage in one month (`month=2026-11`; this month by default): GPU-,
    CPU- and memory-hours of your instances, GPU-hours by instance, and GPU-hours in each
    of the last 12 months. Counted from Running until deleted, to the second; what still
    runs counts up to now."""
    workspace = own_workspace(request)
    now = timezone.now()
    try:
        wanted = usage.parse_month(month) if month else usage.month_start(now)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    if wanted > usage.month_start(now):
        raise ApiError(422, f"{wanted:%Y-%m} has not begun yet.")
    total = usage.summary(first=wanted, last=wanted, workspace=workspace, now=now).total
    start, end = usage.month_bounds(wanted)
    return {
        "month": f"{wanted:%Y-%m}", "start": start, "end": min(end, now),
        "gpu_hours": round(total.gpu_hours, 4),
        "cpu_hours": round(total.cpu_hours, 4),
        "memory_gib_hours": round(total.memory_gib_hours, 4),
        "instances": [{"name": name, "gpu_hours": round(hours, 4)}
                      for name, hours in usage.by_instance(workspace=workspace, month=wanted,
                                                           now=now)],
        "last_12_months": [{"month": f"{m:%Y-%m}", "gpu_hours": round(hours, 4)}
                           for m, hours in usage.monthly_gpu_hours(workspace=workspace, now=now)],
        "budgets": [{"whose": b.whose, "gpu_hours": b.limit, "used": round(b.used, 4),
                     "percent": b.percent, "spent": b.spent}
                    for b in usage.budgets(workspace=workspace, user=request.user, now=now)],
    }



