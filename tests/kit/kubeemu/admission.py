"""Validation and admission, in the server's words: names, labels, Ingress hosts, immutable
fields, the upstream CRDs' schemas (Flux, Cluster API, CAAPH), and the admission plugins
the portal meets: LimitRanger (Container maximums), PodSecurity (``restricted``) and
ResourceQuota on extended resources (GPUs)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kubernetes.utils.quantity import parse_quantity

from .errors import Obj, cause, forbidden, invalid

if TYPE_CHECKING:
    from .store import ObjKey, ResourceInfo

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SUBDOMAIN_TEXT = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                   "characters, '-' or '.', and must start and end with an alphanumeric "
                   "character")


def without(mapping: Mapping[str, Any], keys: Iterable[str]) -> Obj:
    skip = set(keys)
    return {k: v for k, v in mapping.items() if k not in skip}


def name_error(info: ResourceInfo, name: str) -> str | None:
    if info.group == "rbac.authorization.k8s.io":  # path-segment names: "system:admin" is fine
        bad = name in (".", "..") or "/" in name or "%" in name
        return "may not contain '/' or '%' and may not be '.' or '..'" if bad else None
    if info.plural == "services" and not info.group:
        rule, limit = _DNS1035_LABEL, 63
        text = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character")
    elif info.plural == "namespaces" and not info.group:
        rule, limit = _DNS1123_LABEL, 63
        text = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character")
    else:
        rule, limit, text = _DNS1123_SUBDOMAIN, 253, _SUBDOMAIN_TEXT
    if len(name) > limit:
        return f"must be no more than {limit} characters"
    return None if rule.match(name) else text


def label_causes(labels: Any) -> list[Obj]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [cause("metadata.labels", "Invalid value: not a map")]
    causes: list[Obj] = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        key_ok = bool(_LABEL_NAME.match(name)) and len(name) <= 63
        if prefix:
            key_ok = key_ok and bool(_DNS1123_SUBDOMAIN.match(prefix)) and len(prefix) <= 253
        if not key_ok:
            causes.append(cause("metadata.labels", (
                f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                "'-', '_' or '.', and must start and end with an alphanumeric character "
                "(at most 63), with an optional DNS subdomain prefix")))
        if not isinstance(value, str) or (
                value and (len(value) > 63 or not _LABEL_NAME.match(value))):
            causes.append(cause(f"metadata.labels.{key}", (
                f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (at most 63)")))
    return causes


def ingress_host_causes(ingress: Obj) -> list[Obj]:
    """Ingress rule hosts: lowercase RFC 1123 subdomains, optionally with a leading `*.`."""
    causes = []
    for i, rule in enumerate((ingress.get("spec") or {}).get("rules") or []):
        host = (rule or {}).get("host")
        if not host:
            continue
        bare = host[2:] if host.startswith("*.") else host
        if len(host) > 253 or not _DNS1123_SUBDOMAIN.match(bare):
            causes.append(cause(f"spec.rules[{i}].host", f'Invalid value: "{host}": '
                                f"{_SUBDOMAIN_TEXT} (e.g. 'example.com')"))
    return causes


def immutable_causes(info: ResourceInfo, new: Obj, old: Obj) -> list[Obj]:
    """The fields an update may not change, as the server refuses them."""
    causes: list[Obj] = []
    new_spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
    if info.group in ("apps", "batch") and old_spec.get("selector") != new_spec.get("selector"):
        causes.append(cause("spec.selector", "field is immutable"))
    if (info.group, info.plural) == ("apps", "statefulsets"):
        allowed = {"replicas", "ordinals", "template", "updateStrategy",
                   "persistentVolumeClaimRetentionPolicy", "minReadySeconds"}
        if without(new_spec, allowed) != without(old_spec, allowed):
            causes.append(cause("spec", (
                "Forbidden: updates to statefulset spec for fields other than 'replicas', "
                "'ordinals', 'template', 'updateStrategy', "
                "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden")))
    if (info.group, info.plural) == ("", "services"):
        old_ip = old_spec.get("clusterIP")
        if old_ip and new_spec.get("clusterIP") not in (old_ip, None, ""):
            causes.append(cause("spec.clusterIP", "field is immutable"))
    if info.group == "" and info.plural in ("configmaps", "secrets") and old.get("immutable"):
        causes += [cause(key, "Forbidden: field is immutable when `immutable` is set")
                   for key in ("data", "binaryData", "immutable") if new.get(key) != old.get(key)]
    return causes


def check_crd(crd: Obj) -> None:
    spec = crd.get("spec") or {}
    name = crd["metadata"]["name"]
    if name != f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}":
        raise invalid("CustomResourceDefinition", name, [cause(
            "metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')])


# What the upstream CRDs' schemas say about the objects the portal writes (Flux, Cluster API,
# CAAPH), a small part of them written down here: the fields each declares where the portal
# writes (``True``: anything below, as ``x-kubernetes-preserve-unknown-fields`` or a part
# the portal never writes; a one-item list: each item), the required ones, and the rules the
# portal could break. A real server prunes what its schema does not declare (or refuses it
# under strict validation), checks required fields and CEL rules; so does the emulator for
# these, held to the recorded contracts (contracts.py).
ANY = True
UPSTREAM_SCHEMAS: dict[tuple[str, str], Obj] = {
    ("helm.toolkit.fluxcd.io", "helmreleases"): {"spec": {
        "chart": {"metadata": ANY, "spec": {
            "chart": ANY, "version": ANY, "interval": ANY, "reconcileStrategy": ANY,
            "valuesFiles": ANY, "ignoreMissingValuesFiles": ANY, "verify": ANY,
            "sourceRef": {"apiVersion": ANY, "kind": ANY, "name": ANY, "namespace": ANY}}},
        **dict.fromkeys((
            "chartRef", "commonMetadata", "dependsOn", "driftDetection", "install", "interval",
            "kubeConfig", "maxHistory", "persistentClient", "postRenderers", "releaseName",
            "rollback", "serviceAccountName", "storageNamespace", "suspend", "targetNamespace",
            "test", "timeout", "uninstall", "upgrade", "values", "valuesFrom"), ANY)}},
    ("source.toolkit.fluxcd.io", "helmrepositories"): {"spec": dict.fromkeys((
        "accessFrom", "certSecretRef", "insecure", "interval", "passCredentials", "provider",
        "secretRef", "suspend", "timeout", "type", "url"), ANY)},
    ("cluster.x-k8s.io", "clusters"): {"spec": {
        **dict.fromkeys(("availabilityGates", "clusterNetwork", "controlPlaneEndpoint",
                         "controlPlaneRef", "infrastructureRef", "paused"), ANY),
        "topology": {
            "classRef": {"name": ANY, "namespace": ANY}, "controlPlane": ANY,
            "variables": ANY, "version": ANY,
            "workers": {"machineDeployments": [dict.fromkeys((
                "class", "deletion", "failureDomain", "healthCheck", "metadata",
                "minReadySeconds", "name", "readinessGates", "replicas", "rollout", "taints",
                "variables"), ANY)], "machinePools": ANY}}}},
    ("cluster.x-k8s.io", "machinedeployments"): {"spec": dict.fromkeys((
        "clusterName", "deletion", "machineNaming", "paused", "remediation", "replicas",
        "rollout", "selector", "template"), ANY)},
    ("addons.cluster.x-k8s.io", "helmchartproxies"): {"spec": dict.fromkeys((
        "chartName", "clusterSelector", "credentials", "namespace", "options",
        "reconcileStrategy", "releaseName", "repoURL", "tlsConfig", "valuesTemplate",
        "version"), ANY)},
    ("addons.cluster.x-k8s.io", "helmreleaseproxies"): {"spec": dict.fromkeys((
        "chartName", "clusterRef", "credentials", "namespace", "options",
        "reconcileStrategy", "releaseName", "repoURL", "tlsConfig", "values", "version"), ANY)},
}
# (path of an object, with [*] for every item; the fields it requires), when it is there.
UPSTREAM_REQUIRED: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {
    ("helm.toolkit.fluxcd.io", "helmreleases"): [
        ("spec", ("interval",)), ("spec.chart", ("spec",)),
        ("spec.chart.spec", ("chart", "sourceRef")),
        ("spec.chart.spec.sourceRef", ("kind", "name"))],
    ("source.toolkit.fluxcd.io", "helmrepositories"): [("spec", ("url",))],
    ("cluster.x-k8s.io", "clusters"): [
        ("spec.topology", ("classRef", "version")), ("spec.topology.classRef", ("name",)),
        ("spec.topology.workers.machineDeployments[*]", ("class", "name"))],
    ("cluster.x-k8s.io", "machinedeployments"): [
        ("spec", ("clusterName", "selector", "template"))],
    ("addons.cluster.x-k8s.io", "helmchartproxies"): [
        ("spec", ("chartName", "clusterSelector", "repoURL"))],
}
# (path of a string, the least length its schema allows).
UPSTREAM_MIN_LENGTH = {
    ("cluster.x-k8s.io", "clusters"): [
        ("spec.topology.classRef.name", 1), ("spec.topology.version", 1),
        ("spec.topology.workers.machineDeployments[*].class", 1),
        ("spec.topology.workers.machineDeployments[*].name", 1)],
}
# Kinds whose CRDs carry CEL rules (x-kubernetes-validations).
UPSTREAM_CEL = frozenset({("helm.toolkit.fluxcd.io", "helmreleases"),
                          ("cluster.x-k8s.io", "clusters")})


def _at(obj: Any, path: str) -> list[tuple[str, Any]]:
    """The values at a dotted path ([*]: every item of a list), with their field paths."""
    found: list[tuple[str, Any]] = [("", obj)]
    for part in path.split("."):
        name, every = part.removesuffix("[*]"), part.endswith("[*]")
        step = []
        for where, value in found:
            if isinstance(value, dict) and name in value:
                child, at = value[name], f"{where}.{name}" if where else name
                if every and isinstance(child, list):
                    step += [(f"{at}[{i}]", item) for i, item in enumerate(child)]
                elif not every:
                    step.append((at, child))
        found = step
    return found


def undeclared(value: Any, schema: Any, where: str = "") -> list[str]:
    """Field paths in `value` that `schema` does not declare (see UPSTREAM_SCHEMAS)."""
    if schema is ANY or not isinstance(value, dict | list):
        return []
    if isinstance(schema, list):
        return [f for i, item in enumerate(value if isinstance(value, list) else [])
                for f in undeclared(item, schema[0], f"{where}[{i}]")]
    out = []
    for key, child in (value.items() if isinstance(value, dict) else []):
        at = f"{where}.{key}" if where else key
        out += [at] if key not in schema else undeclared(child, schema[key], at)
    return out


def prune(value: Any, schema: Any) -> None:
    if schema is ANY or not isinstance(value, dict | list):
        return
    if isinstance(schema, list):
        for item in value if isinstance(value, list) else []:
            prune(item, schema[0])
        return
    for key in [k for k in value if k not in schema]:
        del value[key]
    for key, child in value.items():
        prune(child, schema[key])


def upstream_causes(info: ResourceInfo, obj: Obj) -> list[Obj]:
    """Required fields, lengths and CEL rules of the upstream CRDs, as the server words them."""
    key = (info.group, info.plural)
    causes = [cause(f"{where}.{field}", "Required value", "FieldValueRequired")
              for path, fields in UPSTREAM_REQUIRED.get(key, [])
              for where, value in _at(obj, path) if isinstance(value, dict)
              for field in fields if field not in value]
    for path, least in UPSTREAM_MIN_LENGTH.get(key, []):
        for where, value in _at(obj, path):
            if isinstance(value, str) and len(value) < least:
                causes.append(cause(where, f'Invalid value: "{value}": {where} in body should '
                                    f"be at least {least} chars long"))
    spec = obj.get("spec")
    if any(c["reason"] == "FieldValueRequired" for c in causes) and key in UPSTREAM_CEL:
        # A missing required field keeps the CRD's CEL rules from running, and says so.
        causes.append(cause("<nil>", "Invalid value: null: some validation rules were not "
                            "checked because the object was invalid; correct the existing "
                            "errors to complete validation"))
    elif key == ("helm.toolkit.fluxcd.io", "helmreleases") and isinstance(spec, dict) and (
            ("chart" in spec) == ("chartRef" in spec)):
        causes.append(cause("spec", "Invalid value: either chart or chartRef must be set"))
    return causes


def restricted_violations(spec: Obj) -> list[str]:
    """What Pod Security `restricted` refuses in a pod spec, worded as the API server words it
    (the checks the portal's pods meet: privilege escalation, capabilities, non-root, seccomp,
    privileged, host namespaces and hostPath volumes)."""
    pod_sc = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    problems = []

    def names(predicate: Callable[[Obj], bool]) -> list[str]:
        return [c.get("name", "") for c in containers if predicate(c.get("securityContext") or {})]

    def which(found: list[str]) -> str:
        quoted = ", ".join(f'"{n}"' for n in found)
        return f"container {quoted}" if len(found) == 1 else f"containers {quoted}"

    if any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        problems.append("host namespaces (hostNetwork=true)")
    if found := names(lambda sc: sc.get("privileged") is True):
        problems.append(f"privileged ({which(found)} must not set securityContext.privileged=true)")
    if found := names(lambda sc: sc.get("allowPrivilegeEscalation") is not False):
        problems.append(f"allowPrivilegeEscalation != false ({which(found)} must set "
                        "securityContext.allowPrivilegeEscalation=false)")
    if found := names(lambda sc: "ALL" not in ((sc.get("capabilities") or {}).get("drop") or [])):
        problems.append(f'unrestricted capabilities ({which(found)} must set '
                        f'securityContext.capabilities.drop=["ALL"])')
    if hostpath := [v.get("name", "") for v in spec.get("volumes") or [] if "hostPath" in v]:
        problems.append(f"restricted volume types (volume {hostpath[0]!r} uses hostPath)")
    if pod_sc.get("runAsNonRoot") is not True and (
            found := names(lambda sc: sc.get("runAsNonRoot") is not True)):
        problems.append(f"runAsNonRoot != true (pod or {which(found)} must set "
                        "securityContext.runAsNonRoot=true)")
    seccomp_ok = ("RuntimeDefault", "Localhost")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in seccomp_ok and (
            found := names(lambda sc: (sc.get("seccompProfile") or {}).get("type")
                           not in seccomp_ok)):
        problems.append(f'seccompProfile (pod or {which(found)} must set '
                        'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    return problems


def limit_range_violations(limit_range: Obj, pod: Obj) -> list[str]:
    """The LimitRanger's refusals of a pod's containers against a LimitRange's `Container`
    maximums, after its defaults are applied (a container without a limit gets `default`),
    in its words: "maximum cpu usage per Container is 2, but limit is 4" (Kubernetes
    plugin/pkg/admission/limitranger, maxConstraint)."""
    problems = []
    for item in (limit_range.get("spec") or {}).get("limits") or []:
        if item.get("type") != "Container":
            continue
        for container in (pod.get("spec") or {}).get("containers") or []:
            resources = container.get("resources") or {}
            limits = {**(item.get("default") or {}), **(resources.get("limits") or {})}
            requests = resources.get("requests") or {}
            for resource, enforced in sorted((item.get("max") or {}).items()):
                if resource not in limits:
                    problems.append(f"maximum {resource} usage per Container is {enforced}.  "
                                    "No limit is specified")
                elif parse_quantity(limits[resource]) > parse_quantity(enforced):
                    problems.append(f"maximum {resource} usage per Container is {enforced}, "
                                    f"but limit is {limits[resource]}")
                elif resource in requests and parse_quantity(requests[resource]) > parse_quantity(
                        enforced):
                    problems.append(f"maximum {resource} usage per Container is {enforced}, "
                                    f"but request is {requests[resource]}")
    return problems


def _pod_request(pod: Obj, resource: str) -> int:
    """A pod's request of an extended resource (limits stand in for missing requests)."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        value = (res.get("requests") or {}).get(resource, (res.get("limits") or {}).get(resource))
        total += int(value or 0)
    return total


def admit_pod(objects: Mapping[ObjKey, Obj], namespace: str | None, pod: Obj) -> None:
    """LimitRange maximums per container, Pod Security Admission (`restricted` only) and
    ResourceQuota on extended resources (GPUs), answered as the real admission plugins
    answer, in their order (LimitRanger, PodSecurity, ResourceQuota); `objects` are the
    store's."""
    name = pod["metadata"]["name"]
    problems = [problem for key, limits in sorted(objects.items())
                if key[:3] == ("", "limitranges", namespace)
                for problem in limit_range_violations(limits, pod)]
    if problems:
        # The LimitRanger's aggregate: one error as is, several in brackets.
        raise forbidden("pods", name, problems[0] if len(problems) == 1
                        else "[" + ", ".join(problems) + "]")
    ns = objects.get(("", "namespaces", None, namespace or ""))
    labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
    if labels.get("pod-security.kubernetes.io/enforce") == "restricted" and (
            problems := restricted_violations(pod.get("spec") or {})):
        version = labels.get("pod-security.kubernetes.io/enforce-version", "latest")
        raise forbidden("pods", name, f'violates PodSecurity "restricted:{version}": '
                        + ", ".join(problems))
    pods = [o for k, o in objects.items() if k[:3] == ("", "pods", namespace)
            and not o["metadata"].get("deletionTimestamp")
            and (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    for key, quota in sorted(objects.items()):
        if key[:3] != ("", "resourcequotas", namespace):
            continue
        for item, limit in ((quota.get("spec") or {}).get("hard") or {}).items():
            resource = item.removeprefix("requests.")
            if resource == item or "/" not in resource:
                continue  # only extended resources (nvidia.com/gpu) are counted here
            wanted = _pod_request(pod, resource)
            used = sum(_pod_request(p, resource) for p in pods)
            if wanted and used + wanted > int(limit):
                raise forbidden("pods", name, f"exceeded quota: {key[3]}, requested: "
                                f"{item}={wanted}, used: {item}={used}, limited: {item}={limit}")

