"""A catalogue service's Helm values: the administrator's template, filled in per service.

The template is YAML with `${name}` placeholders, the spelling Flux's own post-build
substitution uses. It is parsed first and filled in afterwards, value by value, so nothing a
placeholder carries can change the document's shape: a scalar that is exactly one
placeholder takes the value with its type (`${gpus}` is a number, `${resources}` a
mapping); a placeholder inside a longer string is replaced by its text.
"""

import json
import re
from typing import Any

import yaml

PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
# What a template may name, and what each holds (ServiceSpec fills them in).
PLACEHOLDERS = {
    "release": "the Helm release's name (svc-<id>); the Service the portal proxies to is "
               "named after it unless the profile says otherwise",
    "name": "the service's name, as its user gave it",
    "gpus": "how many GPUs it was given (a number)",
    "gpu_model": "the instance's GPU model ('' when it names none)",
    "model": "the model its user chose from the profile's list",
    "cpu": "its CPU, as a Kubernetes quantity",
    "memory": "its memory, as a Kubernetes quantity (8Gi)",
    "resources": "requests and limits for CPU, memory and GPUs (a mapping)",
    "node_selector": "the instance's GPU model as a node selector (a mapping; empty "
                     "without GPUs)",
    "tolerations": "what lets it onto tainted GPU nodes (a list; empty without GPUs)",
    "storage_claim": "the name of its own volume claim, kept across stops",
    "base_path": "the path it is served under (/: each service has an origin of its own)",
}


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def check_template(template: str, *, mapping: bool = True) -> None:
    """ValueError in words when the template names a placeholder that does not exist, or
    (`mapping`) is not a YAML mapping."""
    unknown = placeholders(template) - set(PLACEHOLDERS)
    if unknown:
        named = ", ".join(sorted(f"${{{u}}}" for u in unknown))
        raise ValueError(f"unknown placeholder {named}; known: "
                         f"{', '.join(f'${{{p}}}' for p in PLACEHOLDERS)}")
    if not mapping:
        return
    try:
        values = yaml.safe_load(template) if template.strip() else {}
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError("the values must be a YAML mapping")
    try:
        json.dumps(values)
    except TypeError as exc:  # an unquoted date, say: Kubernetes takes JSON
        raise ValueError(f"a value JSON cannot hold ({exc}); quote it") from None


def render_values(template: str, params: dict[str, Any]) -> dict[str, Any]:
    """The template's values with every placeholder filled in from `params`."""
    check_template(template)

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {PLACEHOLDER.sub(lambda m: str(params[m[1]]), k) if isinstance(k, str) else k:
                    fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        if not isinstance(value, str):
            return value
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return params[whole[1]]
        return PLACEHOLDER.sub(lambda m: str(params[m[1]]), value)

    return fill(yaml.safe_load(template) or {})
