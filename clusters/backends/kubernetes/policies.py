"""The admission policies an administrator installs on a cluster with the portal, as data.

The portal never installs or changes an admission policy: a stolen portal token must not be
able to write one (a cluster-wide deny-everything policy is an outage, a loosened one an
escape). These objects are applied by the administrator, from `deploy/kubernetes` on the
cluster the portal runs on, or from docs/kubernetes.md and the cluster's page in the admin
for any other. Tests hold the three copies equal.

- `gpupaas-portal-confined`: what the portal's own ServiceAccount may write. Namespaces only
  with `app.kubernetes.io/managed-by=gpupaas` and Pod Security `restricted` (never relabelled
  otherwise, never unlabelled); RoleBindings only in those namespaces, only to `admin` for a
  ServiceAccount of that namespace (the instance's access account) or to
  `gpupaas-portal-manager` for itself.
- `gpupaas-ingress-hosts`: in a tenant namespace an Ingress names only hosts ending in the
  namespace's tag under the ingress domain, so no tenant receives another's traffic; in a
  namespace of the portal without a tag, no Ingress at all.
- `gpupaas-gpu-model`: a pod that asks for GPUs in an instance whose size names a GPU model
  must select nodes of that model.
- `gpupaas-access-account`: the instance's access account is the portal's alone: nobody
  else mints its tokens, makes a token Secret for it or runs a pod as it.

The cluster's own values (ingress domain, GPU resource, GPU model label) are a parameter the
administrator owns: the ConfigMap `gpupaas-cluster` in the portal's namespace. Changing the
domain is an edit of that object, and Test connection says when it and the portal differ.
"""

from typing import Any

from .manifests import (
    ACCESS_ACCOUNT,
    GPU_MODEL_ANNOTATION,
    HOST_TAG_LABEL,
    MANAGED_BY,
    PORTAL_MANAGER_ROLE,
    ClusterSettings,
)

Manifest = dict[str, Any]

PORTAL_ACCOUNT = ("gpupaas-system", "gpupaas-portal")
PARAMS_NAME = "gpupaas-cluster"
CONFINED = "gpupaas-portal-confined"
INGRESS_HOSTS = "gpupaas-ingress-hosts"
GPU_MODEL = "gpupaas-gpu-model"
ACCESS_ONLY = "gpupaas-access-account"
POLICY_NAMES = (CONFINED, INGRESS_HOSTS, GPU_MODEL, ACCESS_ONLY)
ADMISSION = "admissionregistration.k8s.io/v1"
MANAGED = "'app.kubernetes.io/managed-by'"
PSA = "'pod-security.kubernetes.io/enforce'"
PSA_VERSION = "'pod-security.kubernetes.io/enforce-version'"


def _managed(obj: str) -> str:
    return (f"has({obj}.metadata.labels) && {MANAGED} in {obj}.metadata.labels "
            f"&& {obj}.metadata.labels[{MANAGED}] == '{MANAGED_BY}'")


def _policy(name: str, *, rules: list[Manifest], validations: list[Manifest],
            variables: list[Manifest], params: bool = False,
            conditions: list[Manifest] | None = None) -> Manifest:
    """A ValidatingAdmissionPolicy that fails closed; `params`: reading the cluster's
    parameter (a ConfigMap)."""
    spec: dict[str, Any] = {"failurePolicy": "Fail"}
    if params:
        spec["paramKind"] = {"apiVersion": "v1", "kind": "ConfigMap"}
    spec["matchConstraints"] = {"resourceRules": rules}
    if conditions:
        spec["matchConditions"] = conditions
    spec |= {"variables": variables, "validations": validations}
    return {"apiVersion": ADMISSION, "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name}, "spec": spec}


def _binding(name: str, *, params: bool, namespaces: dict[str, Any] | None = None) -> Manifest:
    spec: dict[str, Any] = {"policyName": name, "validationActions": ["Deny"]}
    if params:
        spec["paramRef"] = {"name": PARAMS_NAME, "namespace": PORTAL_ACCOUNT[0],
                            "parameterNotFoundAction": "Deny"}
    if namespaces:
        spec["matchResources"] = {"namespaceSelector": namespaces}
    return {"apiVersion": ADMISSION, "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name}, "spec": spec}


def confinement_policy() -> list[Manifest]:
    """What the portal's own account may write, whatever its RBAC grants."""
    namespace, account = PORTAL_ACCOUNT
    username = f"system:serviceaccount:{namespace}:{account}"
    writes = ["CREATE", "UPDATE", "DELETE"]
    policy = _policy(
        CONFINED,
        rules=[{"apiGroups": [""], "apiVersions": ["v1"], "operations": writes,
                "resources": ["namespaces"]},
               {"apiGroups": ["rbac.authorization.k8s.io"], "apiVersions": ["v1"],
                "operations": writes, "resources": ["rolebindings"]}],
        conditions=[{"name": "the-portal",
                     "expression": f"request.userInfo.username == '{username}'"}],
        variables=[{"name": "isNamespace",
                    "expression": "request.resource.resource == 'namespaces'"}],
        validations=[
            {
                # Before the change: nothing outside its own namespaces is touched.
                "expression": "request.operation == 'CREATE' || !variables.isNamespace "
                f"|| ({_managed('oldObject')})",
                "message": "the portal manages only namespaces labelled "
                f"app.kubernetes.io/managed-by={MANAGED_BY}",
                "reason": "Forbidden",
            },
            {
                # After the change: still its own, still Pod Security restricted, still (or
                # from the start) carrying the host tag its Ingresses are held to, unchanged.
                "expression": "request.operation == 'DELETE' || !variables.isNamespace || "
                f"(({_managed('object')}) && '{HOST_TAG_LABEL}' in object.metadata.labels "
                f"&& (request.operation == 'CREATE' || ('{HOST_TAG_LABEL}' in "
                f"oldObject.metadata.labels && object.metadata.labels['{HOST_TAG_LABEL}'] == "
                f"oldObject.metadata.labels['{HOST_TAG_LABEL}'])) "
                f"&& {PSA} in object.metadata.labels "
                f"&& object.metadata.labels[{PSA}] == 'restricted' "
                f"&& (!({PSA_VERSION} in object.metadata.labels) "
                f"|| object.metadata.labels[{PSA_VERSION}] == 'latest' "
                f"|| object.metadata.labels[{PSA_VERSION}].matches("
                r"'^v1[.](3[1-9]|[4-9][0-9])$')))",
                "message": "the portal's namespaces keep app.kubernetes.io/managed-by="
                f"{MANAGED_BY}, their {HOST_TAG_LABEL} and Pod Security enforce=restricted",
                "reason": "Forbidden",
            },
            {
                "expression": f"variables.isNamespace || ({_managed('namespaceObject')})",
                "message": "the portal binds roles only in namespaces labelled "
                f"app.kubernetes.io/managed-by={MANAGED_BY}",
                "reason": "Forbidden",
            },
            {
                # Its own manager role for itself; `admin` only for a ServiceAccount of the
                # namespace (the instance's access account). Nothing else, no one else.
                "expression": "variables.isNamespace || request.operation == 'DELETE' || "
                "(object.roleRef.kind == 'ClusterRole' && has(object.subjects) && ("
                f"(object.roleRef.name == '{PORTAL_MANAGER_ROLE}' && object.subjects.all("
                f"s, s.kind == 'ServiceAccount' && s.namespace == '{namespace}' "
                f"&& s.name == '{account}')) || "
                "(object.roleRef.name == 'admin' && object.subjects.all(s, "
                "s.kind == 'ServiceAccount' && s.namespace == object.metadata.namespace))))",
                "message": f"the portal binds only {PORTAL_MANAGER_ROLE} to itself and "
                "admin to a ServiceAccount of the same namespace",
                "reason": "Forbidden",
            },
        ],
    )
    return [policy, _binding(CONFINED, params=False)]


def ingress_host_policy() -> list[Manifest]:
    """In every tenant namespace, Ingress hosts end in the namespace's tag under the domain
    the parameter names (`ingressDomain`)."""
    suffix = (f"'-' + namespaceObject.metadata.labels['{HOST_TAG_LABEL}'] + '.' + "
              "params.data.ingressDomain")
    policy = _policy(
        INGRESS_HOSTS, params=True,
        rules=[{"apiGroups": ["networking.k8s.io"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["ingresses"]}],
        variables=[{"name": "suffix", "expression": suffix}],
        validations=[
            {
                "expression": "!has(object.spec.defaultBackend) && has(object.spec.rules) "
                "&& object.spec.rules.all(r, has(r.host) && "
                "r.host.endsWith(variables.suffix))",
                "messageExpression": "'every Ingress rule in this namespace needs a host "
                "ending in ' + variables.suffix",
                "reason": "Forbidden",
            },
            {
                "expression": "!has(object.spec.tls) || object.spec.tls.all(t, "
                "!has(t.hosts) || t.hosts.all(h, h.endsWith(variables.suffix)))",
                "messageExpression": "'TLS hosts in this namespace must end in ' + "
                "variables.suffix",
                "reason": "Forbidden",
            },
        ],
    )
    # Every namespace of the portal: one without a tag fails the suffix and is refused.
    return [policy, _binding(INGRESS_HOSTS, params=True, namespaces={
        "matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}})]


def gpu_model_policy() -> list[Manifest]:
    """A pod asking for the GPU resource (`gpuResource`) in a namespace annotated with a GPU
    model selects nodes of that model (`gpuModelLabel`), or is refused in words."""
    policy = _policy(
        GPU_MODEL, params=True,
        rules=[{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["pods"]}],
        variables=[
            {"name": "model", "expression":
                "has(namespaceObject.metadata.annotations) && "
                f"'{GPU_MODEL_ANNOTATION}' in namespaceObject.metadata.annotations ? "
                f"namespaceObject.metadata.annotations['{GPU_MODEL_ANNOTATION}'] : ''"},
            {"name": "wantsGpus", "expression":
                "(object.spec.containers + (has(object.spec.initContainers) ? "
                "object.spec.initContainers : [])).exists(c, has(c.resources) && ("
                "(has(c.resources.limits) && params.data.gpuResource in c.resources.limits)"
                " || (has(c.resources.requests) && "
                "params.data.gpuResource in c.resources.requests)))"},
        ],
        validations=[{
            "expression": "variables.model == '' || !variables.wantsGpus || ("
            "has(object.spec.nodeSelector) && params.data.gpuModelLabel in "
            "object.spec.nodeSelector && "
            "object.spec.nodeSelector[params.data.gpuModelLabel] == variables.model)",
            "messageExpression": "'pods of this instance may use only ' + variables.model "
            "+ ' GPUs: select them with nodeSelector ' + params.data.gpuModelLabel + ': ' "
            "+ variables.model",
            "reason": "Forbidden",
        }],
    )
    return [policy, _binding(GPU_MODEL, params=True, namespaces={
        "matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}})]


def access_account_policy() -> list[Manifest]:
    """The instance's access account is the portal's to use: nobody else mints its tokens,
    makes a token Secret for it or runs a pod as it, so no credential of it outlives the
    ten-minute tokens the proxy holds (a user whose access ends has none left)."""
    namespace, account = PORTAL_ACCOUNT
    username = f"system:serviceaccount:{namespace}:{account}"
    writes = ["CREATE", "UPDATE"]
    policy = _policy(
        ACCESS_ONLY,
        rules=[{"apiGroups": [""], "apiVersions": ["v1"], "operations": writes,
                "resources": ["pods", "secrets"]},
               {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["serviceaccounts/token"]}],
        # Neither the portal nor the cluster's administrators (system:masters).
        conditions=[{"name": "not-the-portal",
                     "expression": f"request.userInfo.username != '{username}'"},
                    {"name": "not-an-administrator",
                     "expression": "!has(request.userInfo.groups) || "
                     "!('system:masters' in request.userInfo.groups)"}],
        variables=[{"name": "resource", "expression": "request.resource.resource + "
                    "(has(request.subResource) && request.subResource != '' ? "
                    "'/' + request.subResource : '')"}],
        validations=[{
            "expression": "variables.resource != 'serviceaccounts/token' || "
            f"request.name != '{ACCESS_ACCOUNT}'",
            "message": f"only the portal asks for tokens of {ACCESS_ACCOUNT}",
            "reason": "Forbidden",
        }, {
            "expression": "variables.resource != 'secrets' || !has(object.type) || "
            "object.type != 'kubernetes.io/service-account-token' || "
            "!has(object.metadata.annotations) || "
            "!('kubernetes.io/service-account.name' in object.metadata.annotations) || "
            "object.metadata.annotations['kubernetes.io/service-account.name'] != "
            f"'{ACCESS_ACCOUNT}'",
            "message": f"no long-lived token Secret for {ACCESS_ACCOUNT}",
            "reason": "Forbidden",
        }, {
            "expression": "variables.resource != 'pods' || "
            f"((!has(object.spec.serviceAccountName) || object.spec.serviceAccountName != "
            f"'{ACCESS_ACCOUNT}') && (!has(object.spec.serviceAccount) || "
            f"object.spec.serviceAccount != '{ACCESS_ACCOUNT}'))",
            "message": f"pods do not run as {ACCESS_ACCOUNT}; use a ServiceAccount of your own",
            "reason": "Forbidden",
        }],
    )
    return [policy, _binding(ACCESS_ONLY, params=False, namespaces={
        "matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}})]


def admission_policies() -> list[Manifest]:
    """Every policy and binding, in the order an administrator applies them."""
    return [*confinement_policy(), *ingress_host_policy(), *gpu_model_policy(),
            *access_account_policy()]


def cluster_params(cs: ClusterSettings) -> Manifest:
    """The parameter of the host and GPU model policies for one cluster: the administrator's
    object, which the portal only reads."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": PARAMS_NAME, "namespace": PORTAL_ACCOUNT[0]},
        "data": {"ingressDomain": cs.ingress_domain, "gpuResource": cs.gpu_resource_name,
                 "gpuModelLabel": cs.gpu_model_label},
    }
