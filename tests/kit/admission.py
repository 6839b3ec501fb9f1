"""Evaluate ValidatingAdmissionPolicies as the API server's admission step would, for tests.

The emulator enforces no admission policy and no real API server runs in CI, yet the
policies an administrator installs with the portal (clusters/backends/kubernetes/
policies.py) are what stands between a stolen portal token or a hostile tenant and the
cluster. This evaluator runs their CEL with cel-python against the requests an attacker
would send, following the admissionregistration.k8s.io/v1 rules the policies rely on:

- a policy applies when one of its resourceRules names the request's resource and
  operation, and every matchCondition is true;
- a binding applies when its namespaceSelector (matchLabels, and Exists/In expressions)
  selects the request's namespace; its paramRef names a ConfigMap, and a missing one with
  `parameterNotFoundAction: Deny` refuses the request;
- variables are evaluated in order into `variables`; every validation must be true; a false
  one refuses with its message or messageExpression; an evaluation error refuses under
  `failurePolicy: Fail`.

What it does not prove: the real server's CEL environment (its Kubernetes extension
libraries, cost limits, type checking against the schemas). tests/test_kube_attacks.py
sends the same attacks to a real kube-apiserver where KUBEBUILDER_ASSETS is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import celpy

Obj = dict[str, Any]


@dataclass
class Request:
    operation: str  # CREATE, UPDATE, DELETE
    resource: str  # plural: namespaces, rolebindings, ingresses, pods
    group: str = ""
    username: str = ""
    groups: tuple[str, ...] = ()
    object: Obj | None = None
    old_object: Obj | None = None
    namespace: Obj | None = None  # the namespace object, for namespaced resources
    name: str = ""  # the object's name as the request names it (a TokenRequest's account)
    subresource: str = ""  # "token" for serviceaccounts/token


@dataclass
class Decision:
    allowed: bool
    messages: list[str] = field(default_factory=list)


def _eval(env: celpy.Environment, expression: str, activation: dict[str, Any]) -> Any:
    result = env.program(env.compile(expression)).evaluate(activation)
    if isinstance(result, celpy.CELEvalError):  # an error that reached the top
        raise result
    return result


def _selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels) \
                or (op == "In" and labels.get(key) not in values) \
                or (op == "NotIn" and labels.get(key) in values):
            return False
    return True


def _matches(policy: Obj, request: Request) -> bool:
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
        resource = request.resource + (f"/{request.subresource}" if request.subresource
                                       else "")
        if request.group in rule["apiGroups"] and resource in rule["resources"] \
                and request.operation in rule["operations"]:
            return True
    return False


def admit(objects: list[Obj], request: Request, params: dict[str, Obj] | None = None
          ) -> Decision:
    """The decision of every policy and binding in `objects` on `request`; `params` are the
    ConfigMaps by `namespace/name`."""
    env = celpy.Environment()
    policies = {o["metadata"]["name"]: o for o in objects
                if o["kind"] == "ValidatingAdmissionPolicy"}
    bindings = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    ns_labels = ((request.namespace or {}).get("metadata") or {}).get("labels") or {}
    if request.resource == "namespaces":  # a namespace is selected by its own labels
        ns_labels = ((request.object or request.old_object or {}).get("metadata") or {}
                     ).get("labels") or {}
    decision = Decision(True)
    for binding in bindings:
        policy = policies[binding["spec"]["policyName"]]
        if not _matches(policy, request) or not _selects(
                (binding["spec"].get("matchResources") or {}).get("namespaceSelector"),
                ns_labels):
            continue
        activation: dict[str, Any] = {
            "request": celpy.json_to_cel({
                "operation": request.operation,
                "userInfo": {"username": request.username, "groups": list(request.groups)},
                "resource": {"group": request.group, "resource": request.resource},
                "name": request.name, "subResource": request.subresource,
            }),
            "object": celpy.json_to_cel(request.object),
            "oldObject": celpy.json_to_cel(request.old_object),
            "namespaceObject": celpy.json_to_cel(request.namespace),
        }
        spec = policy["spec"]
        ref = binding["spec"].get("paramRef")
        if ref:
            param = (params or {}).get(f"{ref['namespace']}/{ref['name']}")
            if param is None:
                decision.allowed = False
                decision.messages.append(f"{policy['metadata']['name']}: no params found")
                continue
            activation["params"] = celpy.json_to_cel(param)
        try:
            if not all(_eval(env, c["expression"], activation)
                       for c in spec.get("matchConditions") or []):
                continue
            variables: dict[Any, Any] = {}
            for variable in spec.get("variables") or []:  # each sees the ones before it
                activation["variables"] = celpy.celtypes.MapType(variables)
                variables[celpy.celtypes.StringType(variable["name"])] = _eval(
                    env, variable["expression"], activation)
            activation["variables"] = celpy.celtypes.MapType(variables)
            for validation in spec["validations"]:
                if not bool(_eval(env, validation["expression"], activation)):
                    message = validation.get("message") or ""
                    if validation.get("messageExpression"):
                        message = str(_eval(env, validation["messageExpression"], activation))
                    decision.allowed = False
                    decision.messages.append(message)
        except celpy.CELEvalError as exc:
            if spec.get("failurePolicy", "Fail") == "Fail":
                decision.allowed = False
                decision.messages.append(f"{policy['metadata']['name']}: {exc}")
    return decision
