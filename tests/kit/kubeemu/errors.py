"""Errors answered as kube-apiserver answers them: a ``Status`` body, which clients and
kubectl parse, in the server's words."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]
ACCEPTED_MEDIA = (
    "application/json, application/yaml, application/merge-patch+json, "
    "application/strategic-merge-patch+json, application/json-patch+json, "
    "application/apply-patch+yaml"
)


def qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


class ApiError(Exception):
    """An error answered with a Kubernetes ``Status`` body, which clients and kubectl parse."""

    def __init__(self, code: int, reason: str, message: str,
                 details: Mapping[str, Any] | None = None, causes: list[Obj] | None = None
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details: Obj = dict(details or {})
        if causes:
            self.details["causes"] = causes

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details,
                "code": self.code}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(group, plural)} "{name}" not found',
                    {"name": name, "group": group, "kind": plural})


def no_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource")


def conflict(group: str, plural: str, name: str, message: str) -> ApiError:
    return ApiError(409, "Conflict", message, {"name": name, "group": group, "kind": plural})


def unsupported_media(accepted: str = ACCEPTED_MEDIA) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                    f"format - accepted media types include: {accepted}")


def forbidden(plural: str, name: str, message: str) -> ApiError:
    """403, as admission words it: ``pods "x" is forbidden: ...``."""
    return ApiError(403, "Forbidden", f'{plural} "{name}" is forbidden: {message}',
                    {"name": name, "kind": plural})


def cause(field_path: str, message: str, reason: str = "FieldValueInvalid") -> Obj:
    return {"reason": reason, "field": field_path, "message": message}


def invalid(kind: str, name: str, causes: list[Obj]) -> ApiError:
    """422 Invalid, worded like the apiserver: ``Kind "name" is invalid: field: message``."""
    parts = [f"{c['field']}: {c['message']}" for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}',
                    {"name": name, "kind": kind}, causes)


def required(kind: str, field_path: str, message: str) -> ApiError:
    """422 for one missing field of an object without a name (options, a nameless object)."""
    return invalid(kind, "", [cause(field_path, f"Required value: {message}",
                                    "FieldValueRequired")])
