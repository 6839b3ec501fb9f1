"""What the API reads and answers, as typed schemas (the OpenAPI document is made of them).

Request fields carry only their types here: their rules are the pages' forms and services,
so a refusal says exactly what the page would. The documented limits (maxLength, pattern)
say the same rules for readers of the schema."""

from datetime import datetime
from typing import Literal

from django.conf import settings
from ninja import Schema
from pydantic import ConfigDict, Field

from instances.models import INSTANCE_NAME_MAX, Instance, instance_name_validator
from notebooks.models import Notebook

NAME_RULES = {"maxLength": INSTANCE_NAME_MAX, "pattern": instance_name_validator.regex.pattern}
InstanceStatus = Literal[tuple(Instance.Status.values)]  # type: ignore[valid-type]
NotebookStatus = Literal[tuple(Notebook.Status.values)]  # type: ignore[valid-type]


def required(*names: str) -> ConfigDict:
    """A request body: fields the schema documents as required, that the form checks (with
    its message); a field it does not know is refused (422), so a typo is never ignored."""
    return ConfigDict(extra="forbid", json_schema_extra={"required": list(names)})


class TokenOut(Schema):
    name: str
    prefix: str
    scope: Literal["read", "write"]
    expires_at: datetime


class MeOut(Schema):
    username: str
    email: str
    role: str = Field(description="admin, end-user, or empty: only instances shared with you.")
    token: TokenOut | None = Field(description="The token this request came with; null for a "
                                   "browser session.")


class ProfileOut(Schema):
    name: str = Field(description="What to pass as `profile` when launching.")
    display_name: str
    description: str
    kind: str
    gpus: int
    gpu_model: str
    cpu: float = Field(description="CPU cores (on the local machine, capped at what it has).")
    memory_gib: int
    shared_limits: bool = Field(description="cpu and memory_gib are limits on a machine its "
                                "sandboxes share (the local cluster), not reservations.")
    storage_gib: int
    fits: bool = Field(description="Whether launching it now fits your quota.")
    refusal: str = Field(description="Why it does not fit now; empty when it does.")
    cost: str = Field(description="What launching it takes from your quota.")


class QuotaOut(Schema):
    max_gpus: int
    max_instances: int
    gpus_used: int
    instances_used: int
    gpus_left: int
    instances_left: int


class InstanceOut(Schema):
    id: int
    name: str
    description: str
    status: InstanceStatus
    status_label: str
    status_message: str = Field(description="What is happening, in plain words; on failure, "
                                "the reason.")
    final: bool = Field(description="No worker will change the status by itself any more.")
    profile: str
    size: str
    kind: str
    gpus: int
    gpu_model: str
    cpu: float
    memory_gib: int
    shared_limits: bool = Field(description="cpu and memory_gib are limits on a machine its "
                                "sandboxes share (the local cluster), not reservations.")
    storage_gib: int
    owner: str
    shared: bool = Field(description="Shared with you by its owner.")
    created_at: datetime
    status_changed_at: datetime
    running_since: datetime | None
    deleted_at: datetime | None
    page: str = Field(description="The instance's page in the portal.")


class Page(Schema):
    count: int = Field(description="How many match, on all pages.")
    page: int
    page_size: int
    pages: int


class InstancePage(Page):
    items: list[InstanceOut]


class LaunchIn(Schema):
    model_config = required("name", "profile")

    name: str = Field("", json_schema_extra={**NAME_RULES, "minLength": 1},
                      description="A DNS-1123 label, unique among your live instances.")
    profile: str = Field("", json_schema_extra={"minLength": 1},
                         description="The size: a profile `name` from GET /profiles.")
    description: str = Field("", json_schema_extra={"maxLength": 500})


class EventOut(Schema):
    id: int
    at: datetime
    action: str = Field(description="e.g. instance.launched, instance.running.")
    actor: str | None = Field(description="Who did it; null when the portal's worker did.")
    message: str


class NotebookOut(Schema):
    id: int
    name: str
    description: str
    instance_id: int
    instance: str
    profile: str
    profile_name: str
    status: NotebookStatus
    status_label: str
    step: str
    status_message: str
    final: bool
    url: str = Field(description="The notebook's address (without its token; see POST "
                     "/notebooks/{id}/token).")
    cpu: float
    memory_gib: int
    gpus: int
    token_renewed: bool = Field(description="Its token was replaced after deployment (someone "
                                "lost access to the instance).")
    created_at: datetime
    running_since: datetime | None
    page: str


class NotebookPage(Page):
    items: list[NotebookOut]


class DeployIn(Schema):
    model_config = required("name", "profile")

    name: str = Field("", json_schema_extra={**NAME_RULES, "maxLength": 40, "minLength": 1})
    profile: str = Field("", json_schema_extra={"minLength": 1},
                         description="A notebook profile name, e.g. datascience.")
    description: str = Field("", json_schema_extra={"maxLength": 500})
    cpu: float | None = Field(None, description="Empty: the profile's default.")
    memory_gib: int | None = Field(None, description="Empty: the profile's default.")
    gpus: int | None = Field(None, description="Empty: the profile's default.")


class ServiceOut(Schema):
    id: int
    name: str
    description: str
    instance_id: int
    instance: str
    service: str = Field(description="The catalogue service's name, e.g. tensorboard.")
    service_name: str
    status: NotebookStatus
    status_label: str
    step: str
    status_message: str
    final: bool
    cpu: float
    memory_gib: int
    gpus: int
    created_at: datetime
    running_since: datetime | None
    page: str
    open: str = Field(description="Opens it in a browser signed in to the portal: the portal "
                      "signs that browser in on the service's own address.")
    exposure: str = Field(description="browser, or api: an HTTP API for programs, called "
                          "at `api_base` with one of your keys (`/services/{id}/keys`).")
    model: str = Field(description="The model it serves, chosen from its profile's list.")
    api_base: str = Field(description="An API service's base URL, for an OpenAI-compatible "
                          "client's base_url; empty for a browser app.")


class ServicePage(Page):
    items: list[ServiceOut]


class ServiceIn(DeployIn):
    profile: str = Field("", description="A catalogue service's name, e.g. tensorboard.")
    model: str = Field("", json_schema_extra={"maxLength": 200},
                       description="For a service that serves a model (vLLM): one from "
                       "its `models`; empty: the first.")


class ServiceKeyIn(Schema):
    name: str = Field("", json_schema_extra={"maxLength": 60},
                      description="What it is for, to tell keys apart.")


class ServiceKeyOut(Schema):
    id: int
    prefix: str = Field(description="The key's first characters: enough to tell it apart.")
    name: str
    state: str = Field(description="active, expired or revoked.")
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None


class NewServiceKeyOut(ServiceKeyOut):
    key: str = Field(description="The key, shown this once: send it as `Authorization: "
                     "Bearer <key>`.")
    api_base: str


class ServiceProfileOut(Schema):
    name: str
    display_name: str
    description: str
    cpu: float
    memory_gib: int
    gpus: int
    max_gpus: int
    exposure: str = Field(description="browser (opened in a browser) or api (for programs, "
                          "with a key).")
    models: list[str] = Field(description="The models it serves, to choose from; empty: "
                              "none to choose.")


class NotebookTokenOut(Schema):
    token: str
    open_url: str = Field(description="The URL that signs you straight in.")


class KubeconfigIn(Schema):
    model_config = ConfigDict(extra="forbid")

    hours: float | None = Field(
        None, json_schema_extra={"exclusiveMinimum": 0,
                                 "maximum": settings.ACCESS_TOKEN_MAX_TTL_HOURS},
        description="How long its token is valid; empty: the portal's default. At most the "
                    "administrator's maximum.")


class KubeconfigOut(Schema):
    kubeconfig: str = Field(description="YAML; its only credential is a token for this "
                            "instance, through the portal's Kubernetes proxy.")
    context: str
    token_prefix: str
    expires_at: datetime


class CollaboratorOut(Schema):
    id: int
    email: str
    status: Literal["pending", "accepted"]
    status_label: str
    access: Literal["manage", "use"]
    user: str | None
    guest: bool
    invited_by: str | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None


class InviteIn(Schema):
    model_config = required("emails")

    emails: list[str] = Field(default_factory=list, json_schema_extra={"minItems": 1},
                              description="One or more addresses.")
    access: Literal["manage", "use"] = Field(
        "manage", description="manage: the owner's access (delete, share); use: all but "
        "deleting and sharing. A guest gets at most the portal's GUEST_MAX_ACCESS.")


class InviteOut(Schema):
    sent: list[CollaboratorOut]
    unsent: list[CollaboratorOut] = Field(description="The mail server refused these; "
                                          "resend them later.")


class InstanceHours(Schema):
    name: str
    gpu_hours: float


class MonthHours(Schema):
    month: str = Field(examples=["2026-11"])
    gpu_hours: float


class BudgetOut(Schema):
    whose: str = Field(examples=["your workspace", "the group ml-team"])
    gpu_hours: int = Field(description="The monthly budget.")
    used: float = Field(description="GPU-hours used of it this month.")
    percent: int
    spent: bool = Field(description="Nothing more launches or starts this month.")


class UsageOut(Schema):
    month: str = Field(examples=["2026-11"])
    start: datetime
    end: datetime = Field(description="The month's end, or now for the month under way.")
    gpu_hours: float
    cpu_hours: float
    memory_gib_hours: float
    instances: list[InstanceHours]
    last_12_months: list[MonthHours]
    budgets: list[BudgetOut] = Field(description="This month's GPU-hour budgets that apply "
                                     "to your launches (none when none is set).")
