"""The JSON API: `/api/v1/…`, its OpenAPI document at `/api/openapi.json` and interactive
docs at `/api/docs`. Every endpoint is a thin caller of the services the pages call."""

from typing import Any

from django.urls import URLPattern, URLResolver, re_path
from ninja import NinjaAPI

from . import catalogue, instances, notebooks, problems, usage
from .auth import BearerToken, PortalSession
from .ratelimit import TokenRateLimit

DESCRIPTION = """\
Everything the portal's pages do for an end user, for scripts, CI jobs and the `gpupaas`
command. Authenticate with a personal access token from the **API tokens** page
(`Authorization: Bearer gpa_…`; read-only tokens may only GET), or with your browser session
(writes need the `X-CSRFToken` header).

Errors are RFC 9457 problem details (`application/problem+json`): `status`, `title`,
`detail` in the pages' words and, for validation errors (422), `errors` naming each field.
Another user's objects answer 404. Each token has a request budget (429 with `Retry-After`).
"""


# What an answer's `id` names, by the schema of the answer: the path parameter the
# operations on that object take.
LINKED = {"InstanceOut": "instance_id", "NotebookOut": "notebook_id", "ServiceOut": "service_id"}


def add_links(schema: dict) -> dict:
    """OpenAPI links, so tools can chain calls: an answer that is one instance, notebook or
    service links to every operation taking its id alone (launch → get, delete, stop…)."""
    takers: dict[str, dict[str, str]] = {parameter: {} for parameter in LINKED.values()}
    for path, operations in schema["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        if len(names) == 1 and (name := names.pop()) in takers:
            for operation in operations.values():
                takers[name][operation["operationId"]] = path
    for operations in schema["paths"].values():
        for operation in operations.values():
            for code, answer in operation["responses"].items():
                ref = (answer.get("content", {}).get("application/json", {})
                       .get("schema", {}).get("$ref", ""))
                parameter = LINKED.get(ref.rsplit("/", 1)[-1])
                if str(code).startswith("2") and parameter:
                    answer["links"] = {
                        "".join(w.title() for w in target.split("_")): {
                            "operationId": target,
                            "parameters": {parameter: "$response.body#/id"}}
                        for target in sorted(takers[parameter])
                        if target != operation["operationId"]}
    return schema


class PortalAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs: Any) -> Any:
        return add_links(problems.document_problems(super().get_openapi_schema(**kwargs)))

    def get_openapi_operation_id(self, operation: Any) -> str:
        return operation.view_func.__name__


api = PortalAPI(
    title="GPU portal API", version="1", description=DESCRIPTION, urls_namespace="api",
    auth=[BearerToken(), PortalSession()], throttle=[TokenRateLimit()],
)
problems.install(api)
api.add_router("/v1/", instances.router)
api.add_router("/v1/", notebooks.router)
api.add_router("/v1/", catalogue.router)
api.add_router("/v1/", usage.router)


def urls() -> tuple[list[URLPattern | URLResolver], str, str]:
    """The API's URL patterns. The API authenticates each request itself (a token or the
    session, else a 401 problem), so the portal's sign-in redirect does not apply to it."""
    patterns, app_name, namespace = api.urls
    patterns = [*patterns, re_path(r"^(?P<rest>.*)$", problems.api_not_found)]
    for pattern in patterns:
        pattern.callback.login_required = False
    return patterns, app_name, namespace
