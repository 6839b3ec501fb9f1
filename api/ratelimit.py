"""A request budget per personal access token (per user for browser sessions), counted in
the shared cache with the helper the sign-in limits use (allauth's rate limiter), so every
web process sees the same count. Over the budget: 429 with Retry-After."""

import threading
import time

from allauth.core.internal import ratelimit
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from ninja.throttling import BaseThrottle

ACTION = "requests"


def _config() -> dict[str, str]:
    # "600/m" as the administrator writes it (like ACCOUNT_RATE_LIMITS), counted per key.
    rate = settings.API_RATE_LIMIT
    return {ACTION: rate if rate.count("/") == 2 else f"{rate}/key"}


def _key(request: HttpRequest) -> str:
    token = getattr(request, "api_token", None)
    return f"token:{token.pk}" if token is not None else f"user:{request.user.pk}"


class TokenRateLimit(BaseThrottle):
    def __init__(self) -> None:
        self._waits = threading.local()

    def allow_request(self, request: HttpRequest) -> bool:
        if not settings.API_RATE_LIMIT:
            return True
        key, config = _key(request), _config()
        if ratelimit.consume(request, app="api", action=ACTION, config=config, key=key,
                             limit_get=True):
            return True
        self._waits.seconds = self._retry_after(request, key, config)
        return False

    def _retry_after(self, request: HttpRequest, key: str, config: dict[str, str]) -> float:
        """Seconds until the oldest counted request leaves the window."""
        wait = 1.0
        for rate in ratelimit.get_rates(app="api", action=ACTION, config=config):
            history = cache.get(ratelimit.get_cache_key(
                request, app="api", action=ACTION, rate=rate, key=key)) or []
            if len(history) >= rate.amount:
                wait = max(wait, history[-1] + rate.duration - time.time())
        return wait

    def wait(self) -> float | None:
        return getattr(self._waits, "seconds", 1.0)
