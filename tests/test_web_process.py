"""What a web process shares between requests: Django's threads and the Redis client."""

import asyncio
import threading
import time

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.cache import caches

from gpupaas.asgi import DjangoThreads


def test_a_burst_runs_on_the_few_reused_threads_and_each_request_on_one():
    """Django's ASGI handler opens a ThreadSensitiveContext per request, and its middleware
    and view run through sync_to_async; under DjangoThreads they all land on one of its
    threads, at most `threads` at once, the same ones from burst to burst."""
    running, most = 0, 0
    seen: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def work() -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return threading.get_ident()

    async def django_like(scope, receive, send) -> None:
        async with ThreadSensitiveContext():  # as django.core.handlers.asgi does
            middleware = await sync_to_async(work)()
            view = await sync_to_async(work)()
        seen.append((middleware, view))

    app = DjangoThreads(django_like, threads=3)

    async def burst() -> set[int]:
        seen.clear()
        await asyncio.gather(*(app({"type": "http"}, None, None) for _ in range(30)))
        assert len(seen) == 30 and all(middleware == view for middleware, view in seen)
        return {ident for pair in seen for ident in pair}

    async def two_bursts() -> tuple[set[int], set[int]]:
        return await burst(), await burst()

    first, second = asyncio.run(two_bursts())
    assert most <= 3 and len(first) <= 3
    assert second <= first  # the same threads again, no new ones

def test_cache_objects_of_every_thread_share_one_redis_client(settings):
    """Django makes a cache object per thread and per request context; they share one client
    (and so its connection pool), not a Redis connection per request."""
    assert settings.CACHES["default"]["BACKEND"] == "gpupaas.cache.RedisCache"
    clients = []

    def use_cache() -> None:
        cache = caches["default"]
        cache.set("shared-client", "yes", 30)
        assert cache.get("shared-client") == "yes"
        clients.append(cache._cache)

    threads = [threading.Thread(target=use_cache) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    use_cache()
    assert len(clients) == 6 and len({id(client) for client in clients}) == 1


@pytest.mark.django_db
def test_a_page_runs_its_middleware_and_view_on_one_reused_thread():
    """Pages go through PagesHandler on DjangoThreads: the middleware chain (sync, as under
    WSGI) and the view run on one of the process's page threads, the same one again for the
    next page when one thread is all there is."""
    from asgiref.testing import ApplicationCommunicator
    from django.test import override_settings

    from gpupaas.asgi import PagesHandler

    seen.clear()
    with override_settings(MIDDLEWARE=[f"{__name__}.record_thread", *settings.MIDDLEWARE]):
        app = DjangoThreads(PagesHandler(), threads=1)

    async def get(path: str) -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"testserver")],
                 "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
        talk = ApplicationCommunicator(app, scope)
        await talk.send_input({"type": "http.request", "body": b""})
        start = await talk.receive_output(10)
        await talk.receive_output(10)
        return start["status"]

    async def three() -> list[int]:
        return [await get("/accounts/login/") for _ in range(3)]

    assert asyncio.run(three()) == [200, 200, 200]
    assert len(seen) == 3 and len(set(seen)) == 1
    assert seen[0][1].startswith("django")  # one of DjangoThreads' threads


seen: list[tuple[int, str]] = []


def record_thread(get_response):
    """A middleware that notes the thread each page ran on (a plain sync one)."""

    def middleware(request):
        response = get_response(request)
        seen.append((threading.get_ident(), threading.current_thread().name))
        return response

    return middleware


def test_a_request_kept_waiting_for_a_thread_gets_a_spare_one():
    """One request holding the only thread (a slow view, or a client that does not read its
    answer) delays the next by `spare_after`, not by as long as it holds it."""
    finished: dict[str, float] = {}

    def slow() -> None:
        time.sleep(2)

    def quick() -> str:
        return threading.current_thread().name

    names: list[str] = []

    async def django_like(scope, receive, send) -> None:
        async with ThreadSensitiveContext():
            if scope["path"] == "/slow":
                await sync_to_async(slow)()
            else:
                names.append(await sync_to_async(quick)())
        finished[scope["path"]] = time.monotonic()

    app = DjangoThreads(django_like, threads=1, spare_after=0.2)

    async def both() -> float:
        started = time.monotonic()
        slow_one = asyncio.ensure_future(app({"type": "http", "path": "/slow"}, None, None))
        await asyncio.sleep(0.05)
        await app({"type": "http", "path": "/quick"}, None, None)
        await slow_one
        return started

    started = asyncio.run(both())
    assert finished["/quick"] - started < 1.0 < finished["/slow"] - started
    assert names == ["django-spare_0"]
