"""Refusals Django or Ninja answer before any endpoint runs (a method the path does not
serve, a body over the size limit) become problem documents too, as every other refusal
under /api/ is."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from .problems import PROBLEM_JSON, problem


class ApiProblemsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (response.status_code < 400 or not request.path.startswith("/api/")
                or response.get("Content-Type", "").startswith(
                    (PROBLEM_JSON, "application/json"))):
            return response
        if response.status_code == 405:
            # Ninja lists the methods from a set: in a stable order here.
            allowed = ", ".join(sorted(m.strip() for m in response.get("Allow", "").split(",")
                                       if m.strip()))
            refusal = problem(request, 405, f"{request.method} is not served here; this "
                              f"endpoint takes {allowed or 'other methods'}.")
            refusal["Allow"] = allowed
            return refusal
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        length = request.META.get("CONTENT_LENGTH") or "0"
        if (response.status_code == 400 and limit and length.isascii() and length.isdecimal()
                and int(length) > limit):
            return problem(request, 413, f"The request body is {int(length):,} bytes; the API "
                           f"takes at most {limit:,}.")
        return problem(request, response.status_code, response.reason_phrase + ".")
