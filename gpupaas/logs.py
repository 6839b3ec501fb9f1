"""Log lines that say whose they are: the request id, the user id and the instance id.

Every line carries the request it belongs to (`X-Request-ID`, or one made up for it), the
signed-in user's id and the instance's id where known. The request id travels into the
Celery tasks that a request enqueues (a message header), so a worker's lines about a launch
carry the id of the request that asked for it.

Formats (`LOG_FORMAT`): `json`, one object a line for a log collector (production), or
`text`, readable lines (`make run`, which sets it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
user_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("user_id", default=None)
instance_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "instance_id", default=None)
# The request being served, read lazily by the filter: its user once authentication looked
# it up (the filter never makes a query), its instance once the URL named one.
current_request: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "current_request", default=None)

# A request id a client or proxy sends is kept only when it is short and plain, so it cannot
# forge log lines or fill them.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Views whose `pk` is an instance's: every view of `instances`, and these of other apps.
_INSTANCE_VIEWS = {"access:kubeconfig", "access:revoke_all"}


def new_request_id(offered: str | None = None) -> str:
    if offered and _REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """The lines logged inside carry these (any of request_id, user_id, instance_id,
    current_request); what was bound before is back afterwards."""
    contexts = {"request_id": request_id, "user_id": user_id, "instance_id": instance_id,
                "current_request": current_request}
    tokens = [(contexts[name], contexts[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _from_request(request: Any) -> tuple[int | None, int | None]:
    """(user id, instance id) of the request, without a query: the user only when
    AuthenticationMiddleware's lazy object was already resolved."""
    from django.utils.functional import empty

    uid = iid = None
    user = request.__dict__.get("user")
    wrapped = getattr(user, "_wrapped", user)
    if wrapped is not None and wrapped is not empty and getattr(
            wrapped, "is_authenticated", False):
        uid = wrapped.pk
    match = getattr(request, "resolver_match", None)
    if match is not None and (match.namespace == "instances"
                              or match.view_name in _INSTANCE_VIEWS):
        pk = match.kwargs.get("pk")
        if isinstance(pk, int):
            iid = pk
    return uid, iid


class ContextFilter(logging.Filter):
    """Puts request_id, user_id and instance_id on every record (None where unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        uid, iid = user_id.get(), instance_id.get()
        # Django's own lines about a request ("Bad Request: ...") come after the middleware
        # is done with it, but carry the request itself.
        request = getattr(record, "request", None)
        if not hasattr(request, "META"):  # not a Django request
            request = current_request.get()
        if getattr(request, "request_id", None) and not request_id.get():
            record.request_id = request.request_id
        if request is not None:
            from_request = _from_request(request)
            uid = uid if uid is not None else from_request[0]
            iid = iid if iid is not None else from_request[1]
        record.request_id = getattr(record, "request_id", None) or request_id.get() or None
        record.user_id = getattr(record, "user_id", None) or uid
        record.instance_id = getattr(record, "instance_id", None) or iid
        return True


# Attributes every LogRecord has; anything else a caller passed in `extra` is logged too.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "request_id", "user_id", "instance_id", "taskName", "request",
    "context"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the three ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "user_id": getattr(record, "user_id", None),
            "instance_id": getattr(record, "instance_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                    else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`06:40:01 INFO instances.services [req=3f2a… user=4 instance=17] message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(context)s%(message)s",
                         datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{label}={value}" for label, value in (
            ("req", getattr(record, "request_id", None)),
            ("user", getattr(record, "user_id", None)),
            ("instance", getattr(record, "instance_id", None))) if value is not None]
        record.context = f"[{' '.join(parts)}] " if parts else ""
        return super().format(record)


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """The LOGGING setting: one console handler in the chosen format, with the ids."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "gpupaas.logs.ContextFilter"}},
        "formatters": {
            "json": {"()": "gpupaas.logs.JsonFormatter"},
            "text": {"()": "gpupaas.logs.TextFormatter"},
        },
        "handlers": {"console": {
            "class": "logging.StreamHandler", "filters": ["context"],
            "formatter": "json" if log_format == "json" else "text",
        }},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "INFO"},
            # httpx logs every proxied request at INFO; the proxy keeps its own audit trail.
            "httpx": {"level": "WARNING"},
            # Gunicorn and uvicorn log through the root logger, in the same format.
            "gunicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
        },
    }


# --- Celery: the request id travels with the task --------------------------------------------

HEADER = "gpupaas_request_id"


def task_published(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """before_task_publish: a task enqueued while serving a request carries its ids."""
    if headers is not None and request_id.get():
        headers[HEADER] = request_id.get()
        uid = user_id.get()
        if uid is None and current_request.get() is not None:
            uid = _from_request(current_request.get())[0]
        if uid is not None:
            headers["gpupaas_user_id"] = uid


def task_started(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    """task_prerun: the task's lines carry the enqueuing request's ids and its instance."""
    req = getattr(task, "request", None)
    request_id.set(getattr(req, HEADER, None) or "")
    user_id.set(getattr(req, "gpupaas_user_id", None))
    iid = None
    name = getattr(task, "name", "") or ""
    if name.startswith("instances.") and (args or (kwargs or {}).get("instance_id")):
        value = (kwargs or {}).get("instance_id", args[0] if args else None)
        iid = value if isinstance(value, int) else None
    instance_id.set(iid)


def task_finished(**_: Any) -> None:
    request_id.set("")
    user_id.set(None)
    instance_id.set(None)
