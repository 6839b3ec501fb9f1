"""A request budget per personal access token (per user for a browser session), counted in
the shared cache, so every web process sees the same count. Over the budget: 429 with
Retry-After.

The budget is written as the sign-in limits are (`600/m`, `100/5m`: a count per period of
s, m, h or d). The counting is not allauth's: its limiter takes a lock per key and, after a second
of waiting, refuses; a token that parallel CI jobs share would get false 429s (the benchmark
saw 3 in 5 requests refused at 20 concurrent clients). Here each request is one atomic
increment of a per-window counter (Redis INCR), with no lock."""

import math
import re
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from ninja.throttling import BaseThrottle

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*")


@dataclass(frozen=True)
class Rate:
    amount: int
    duration: float  # seconds


def parse_rate(text: str) -> Rate:
    """`600/m` → 600 per 60 s; `100/5m` → 100 per 300 s. ValueError for anything else."""
    found = RATE.fullmatch(text)
    if not found:
        raise ValueError(f"{text!r} is not a rate like 600/m or 100/5m")
    amount, multiple, unit = found.groups()
    return Rate(int(amount), float(int(multiple or 1) * UNITS[unit]))


def budget(setting: str = "API_RATE_LIMIT") -> Rate | None:
    """A rate setting (API_RATE_LIMIT, e.g. 600/m); None when that limit is off."""
    text = getattr(settings, setting)
    return parse_rate(text) if text else None


def _who(request: HttpRequest) -> list[tuple[str, Rate | None]]:
    """The budgets a request counts against: its token's (or session's), and for a token
    its user's total, since users make tokens themselves."""
    token = getattr(request, "api_token", None)
    if token is None:
        return [(f"user:{request.user.pk}", budget())]
    return [(f"token:{token.pk}", budget()),
            (f"user-total:{request.user.pk}", budget("API_USER_RATE_LIMIT"))]


def _key(who: str, rate: Rate, now: float) -> tuple[str, int]:
    window = int(now // rate.duration)
    return f"api:rate:{who}:{rate.duration:g}:{window}", window


def spent(who: str, rate: Rate, now: float | None = None) -> float:
    """Like `consume`, without counting: the seconds until `who` may try again, or 0."""
    now = time.time() if now is None else now
    key, window = _key(who, rate, now)
    if (cache.get(key) or 0) < rate.amount:
        return 0.0
    return (window + 1) * rate.duration - now


def consume(who: str, rate: Rate, now: float | None = None) -> float:
    """Count one request of `who` in the current window of `rate`; 0 when it is within the
    budget, else the seconds until the window ends."""
    now = time.time() if now is None else now
    key, window = _key(who, rate, now)
    ttl = int(rate.duration) + 1
    cache.add(key, 0, timeout=ttl)
    try:
        count = cache.incr(key)
    except ValueError:  # the key expired between add and incr
        cache.add(key, 1, timeout=ttl)
        count = 1
    if count <= rate.amount:
        return 0.0
    return (window + 1) * rate.duration - now


def too_many(wait: float, what: str) -> str:
    seconds = max(1, math.ceil(wait))
    return f"Too many {what}; try again in {seconds} second{'s' if seconds != 1 else ''}."


class TokenRateLimit(BaseThrottle):
    def __init__(self) -> None:
        self._waits = threading.local()

    def allow_request(self, request: HttpRequest) -> bool:
        self._waits.seconds = max([consume(who, rate) for who, rate in _who(request) if rate],
                                  default=0.0)
        return not self._waits.seconds

    def wait(self) -> float | None:
        return getattr(self._waits, "seconds", 1.0)
