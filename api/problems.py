"""Errors as RFC 9457 problem details (`application/problem+json`).

Every refusal the API gives has the same shape: `type`, `title`, `status`, `detail` (what
went wrong, in the words the pages use) and `instance` (the request's path); validation
errors add `errors`, one entry per field with the field's name, its message and a JSON
pointer into the request body.
"""

import json
import math
from http import HTTPStatus
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, Throttled
from ninja.errors import ValidationError as SchemaValidationError
from pydantic import Field

from .ratelimit import too_many

PROBLEM_JSON = "application/problem+json"
# One documented type per kind of refusal; plain HTTP refusals use about:blank (RFC 9457 4.2).
VALIDATION_TYPE = "/api/docs#validation-error"


class FieldError(Schema):
    field: str = Field(description="The request field, as named in the schema.")
    detail: str = Field(description="What is wrong with it, as the portal's pages say it.")
    pointer: str = Field(description="JSON pointer into the request, e.g. #/name.")


class Problem(Schema):
    type: str = Field("about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="The HTTP status in words.")
    status: int
    detail: str = Field(description="What went wrong and what to do, in plain words.")
    instance: str = Field(description="The path of the request that failed.")
    errors: list[FieldError] = Field(default_factory=list,
                                     description="Validation errors, one per field.")


class ApiError(Exception):
    """A refusal with a status and a message, raised by the API's own code."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class NotFound(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(404, detail)


def problem(
    request: HttpRequest, status: int, detail: str, *, errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    body: dict[str, Any] = {
        "type": VALIDATION_TYPE if errors else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    if errors:
        body["errors"] = [
            {"field": field, "detail": message, "pointer": f"#/{field}"}
            for field, messages in errors.items() for message in messages
        ]
    response = HttpResponse(json.dumps(body), status=status, content_type=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def validation_problem(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    """A refusal from a form or a service: field errors where they named a field, the rest
    in `detail`. The messages are the very ones the pages show."""
    if hasattr(exc, "error_dict"):
        by_field = {field: [m for e in errors for m in e.messages]
                    for field, errors in exc.error_dict.items()}
    else:
        by_field = {"__all__": exc.messages}
    general = by_field.pop("__all__", [])
    detail = " ".join(general + [m for messages in by_field.values() for m in messages])
    return problem(request, 422, detail or "The request is not valid.", errors=by_field)

# What pydantic says, in the words Django's forms (and so the pages) use.
SCHEMA_MESSAGES = {
    "missing": "This field is required.",
    "int_type": "Enter a whole number.",
    "int_parsing": "Enter a whole number.",
    "int_from_float": "Enter a whole number.",
    "float_type": "Enter a number.",
    "float_parsing": "Enter a number.",
    "finite_number": "Enter a number.",
    "string_type": "Enter text.",
    "bool_type": "Enter true or false.",
    "bool_parsing": "Enter true or false.",
    "list_type": "Enter a list.",
    "literal_error": "Select a valid choice.",
    "enum": "Select a valid choice.",
    "string_too_long": "Ensure this value has at most {max_length} characters.",
    "string_pattern_mismatch": "Enter a valid value.",
    "greater_than_equal": "Ensure this value is greater than or equal to {ge}.",
    "less_than_equal": "Ensure this value is less than or equal to {le}.",
    "model_attributes_type": "Send a JSON object.",
    "dict_type": "Send a JSON object.",
}


def schema_problem(request: HttpRequest, exc: SchemaValidationError) -> HttpResponse:
    fields: dict[str, list[str]] = {}
    for error in exc.errors:
        loc = [str(part) for part in error.get("loc", ())]
        # ("body", "payload", "name") → name; ("query", "page") → page; ("body", "payload")
        # (the body as a whole) → body.
        source, rest = (loc[0], loc[1:]) if loc else ("body", [])
        if source == "body" and rest:
            rest = rest[1:]
        field = ".".join(rest) or source
        template = SCHEMA_MESSAGES.get(error.get("type", ""), error.get("msg", "Invalid."))
        try:
            message = template.format(**error.get("ctx", {}))
        except (KeyError, IndexError):
            message = template
        fields.setdefault(field, []).append(message)
    detail = " ".join(f"{field}: {' '.join(m)}" for field, m in fields.items())
    return problem(request, 422, detail, errors=fields)


def install(api: NinjaAPI) -> None:
    """Every error the API can raise becomes a problem document."""

    @api.exception_handler(ApiError)
    def api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return problem(request, exc.status, exc.detail, headers=exc.headers)

    @api.exception_handler(SchemaValidationError)
    def schema_error(request: HttpRequest, exc: SchemaValidationError) -> HttpResponse:
        return schema_problem(request, exc)

    @api.exception_handler(DjangoValidationError)
    def service_error(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
        return validation_problem(request, exc)

    @api.exception_handler(PermissionDenied)
    def forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
        return problem(request, 403, str(exc) or "You may not do this.")

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return problem(request, 404, "Not found.")

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return problem(request, 401, "Sign in, or send a personal access token as "
                       "'Authorization: Bearer <token>'.",
                       headers={"WWW-Authenticate": 'Bearer realm="api"'})

    @api.exception_handler(Throttled)
    def throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
        wait = max(1, math.ceil(exc.wait or 1))
        return problem(request, 429, too_many(wait, "requests with this token (or from your "
                                              "account's tokens together)"),
                       headers={"Retry-After": str(wait)})

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        message = str(exc)
        if exc.status_code == 400:
            message = "The request body is not valid JSON."
        return problem(request, exc.status_code, message)


def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/: a problem document, not the pages' HTML 404."""
    return problem(request, 404, "No such API endpoint; see /api/docs.")


def document_problems(schema: dict) -> dict:
    """Error responses are served as application/problem+json: say so in the schema."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if str(code) >= "400" and "application/json" in content:
                    response["content"] = {PROBLEM_JSON: content["application/json"]}
    return schema
