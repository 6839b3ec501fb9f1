"""kubeemu: a stateful, in-memory Kubernetes API server over real HTTP, for tests.

No kube-apiserver, k3s, kind or kwok can run where the portal's tests run, yet the portal's
Kubernetes code has to be exercised the way production drives it: over HTTP, through the
official ``kubernetes`` client and ``kubectl``. This module serves enough of the API for that,
keeps its state in memory, and adds what a real cluster cannot give a test: fault injection,
a request counter, direct access to the store and control over workload readiness.

In a test::

    from tests.kit import kubeemu

    with kubeemu.start() as emu:
        api = kubernetes.client.ApiClient(emu.client_configuration())
        ...
        emu.faults = kubeemu.Faults(rate=0.2, kinds=("500", "timeout", "reset"), seed=7)
        assert emu.requests.count(verb="create") == 1

As a process: ``python -m tests.kit.kubeemu --port 18002 --kubeconfig /tmp/kubeemu.yaml``.

Schema validation uses the ``kubernetes-validate`` package; YAML bodies need PyYAML.
``contracts/discovery.json`` (next to this file) lists the built-in resources served, as a real
kube-apiserver answered them (``make record-contracts``). ``contracts/answers.json`` holds
the real server's answers to a corpus of requests; ``test_contracts.py`` holds the emulator
to them (Pod Security ``restricted``, GPU quota, Ingress hosts, server-side apply conflicts,
list items without kind).

Known gaps versus a real API server (the backend tests also run against one; see envtest.py):

- no authentication or authorization: RBAC objects are stored, never enforced, and access
  reviews are always allowed;
- admission: only LimitRange maximums per container, Pod Security ``restricted`` and
  ResourceQuota on extended resources (GPUs) for Pods, and for the pods of Deployments and
  StatefulSets (which then stay unready with a FailedCreate Warning, as their controllers
  report); LimitRange defaults written into pods, quota ``status.used``, webhooks and
  ValidatingAdmissionPolicies are not modelled (the portal's policies are evaluated by
  ``tests/kit/admission.py`` and on the real server);
- TokenRequest mints a JWT-shaped token for an existing ServiceAccount and remembers whom it
  names (``RequestRecord.user``), but no request is authenticated or authorized with it:
  impersonation, RBAC and namespace scope are the real server's to prove;
- no Pods, ReplicaSets or Endpoints are created for workloads; readiness is simulated;
  NetworkPolicy has no effect; no Ingress or LoadBalancer status; no Job controller;
- server-side apply tracks field managers and answers conflicts (409, or force), but treats
  lists as one field each (a real server tracks list items by merge key) and does not expose
  ``managedFields``;
- strategic merge patch knows only the common merge keys (containers, env, volumes, ports...);
- no protobuf or CBOR (415), no Table output, no aggregated discovery, openapi/v3 is a stub;
- list pages are not snapshot-consistent; watches are never compacted (no 410 Gone);
- field selectors accept any field path; custom resources are not validated against their
  CRD schema and there is no version conversion (objects are served as stored);
- a single fake node: DaemonSets count one scheduled pod;
- exec, attach and port-forward: refused as a real server refuses them (missing pod, a pod
  not scheduled, no upgrade); for a pod bound to a node (``spec.nodeName``), exec over
  WebSocket (``v5.channel.k8s.io``/``v4``) is answered as a kubelet would for a container
  that has only ``echo``: its arguments on stdout, exit 0, anything else exit 127; pods the
  kit's kubelet stand-in runs (tests/kit/kubelet.py) execute for real in a container of
  their own. attach and port-forward are not modelled.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import copy
import datetime
import hashlib
import itertools
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, get_args
from urllib.parse import parse_qs, urlsplit

import yaml

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = [
    "CLUSTER_API",
    "UPSTREAM_KINDS",
    "DISCOVERY_FILE",
    "FAULT_KINDS",
    "MUTATING_VERBS",
    "ApiError",
    "Emulator",
    "FaultKind",
    "Faults",
    "RequestCounter",
    "RequestRecord",
    "ResourceInfo",
    "Store",
    "WriteEvent",
    "field_match",
    "json_patch",
    "label_match",
    "main",
    "merge_patch",
    "start",
    "strategic_merge",
]

Obj = dict[str, Any]
ObjKey = tuple[str, str, str | None, str]  # group, plural, namespace (None if cluster-scoped), name
FaultKind = Literal["500", "429", "timeout", "reset"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
MUTATING_VERBS: frozenset[str] = frozenset(
    {"create", "update", "patch", "delete", "deletecollection"}
)
# What a real kube-apiserver served, recorded by `make record-contracts` (tests/kit/contracts).
DISCOVERY_FILE = Path(__file__).with_name("contracts") / "discovery.json"
CLUSTER_API = ("cluster.x-k8s.io", "v1beta2", "clusters", "Cluster")
# The kinds of Flux (source- and helm-controller), Cluster API and its Helm add-on provider
# (CAAPH) that the portal uses, at the versions their CRDs serve and store: a test declares
# them (``add_upstream_kinds``) where a real cluster would have them installed.
UPSTREAM_KINDS = (
    ("helm.toolkit.fluxcd.io", "v2", "helmreleases", "HelmRelease"),
    ("source.toolkit.fluxcd.io", "v1", "helmrepositories", "HelmRepository"),
    CLUSTER_API,
    ("cluster.x-k8s.io", "v1beta2", "machinedeployments", "MachineDeployment"),
    ("addons.cluster.x-k8s.io", "v1alpha1", "helmchartproxies", "HelmChartProxy"),
    ("addons.cluster.x-k8s.io", "v1alpha1", "helmreleaseproxies", "HelmReleaseProxy"),
)
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
WORKLOADS = frozenset({"deployments", "statefulsets", "replicasets", "daemonsets"})
# The version of the real server whose discovery and answers the emulator follows.
_RECORDED = json.loads(DISCOVERY_FILE.read_text(encoding="utf-8"))["server"]
SERVER_VERSION: Obj = {
    "major": _RECORDED.lstrip("v").split(".")[0],
    "minor": _RECORDED.split(".")[1],
    "gitVersion": f"{_RECORDED}-kubeemu",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25",
    "compiler": "gc",
    "platform": "linux/amd64",
}
ACCEPTED_MEDIA = (
    "application/json, application/yaml, application/merge-patch+json, "
    "application/strategic-merge-patch+json, application/json-patch+json, "
    "application/apply-patch+yaml"
)
# Groups served from the discovery file that are CRDs on a real cluster (no strategic merge).
CRD_GROUPS = frozenset({"gateway.networking.k8s.io"})
INITIAL_STATUS: Mapping[tuple[str, str], Obj] = {
    ("apps", "statefulsets"): {"replicas": 0, "availableReplicas": 0},
    ("apps", "replicasets"): {"replicas": 0},
    ("apps", "daemonsets"): {
        "currentNumberScheduled": 0,
        "desiredNumberScheduled": 0,
        "numberMisscheduled": 0,
        "numberReady": 0,
    },
    ("autoscaling", "horizontalpodautoscalers"): {"currentReplicas": 0, "desiredReplicas": 0},
    ("", "pods"): {"phase": "Pending"},
    ("", "persistentvolumeclaims"): {"phase": "Pending"},
    ("", "services"): {"loadBalancer": {}},
}

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


# ---------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered with a Kubernetes ``Status`` body, which clients and kubectl parse."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        causes: list[Obj] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details: Obj = dict(details or {})
        if causes:
            self.details["causes"] = causes

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(group, plural)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def _no_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _cause(field_path: str, message: str, reason: str = "FieldValueInvalid") -> Obj:
    return {"reason": reason, "field": field_path, "message": message}


def _invalid(kind: str, name: str, causes: list[Obj]) -> ApiError:
    """422 Invalid, worded like the apiserver: ``Kind "name" is invalid: field: message``."""
    parts = [f"{c['field']}: {c['message']}" for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {joined}',
        {"name": name, "kind": kind},
        causes,
    )


# ---------------------------------------------------------------------------- patches


def merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: what ``application/merge-patch+json`` means."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# Lists that a strategic merge patch merges by key instead of replacing (patchMergeKey).
MERGE_KEYS: Mapping[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
}
SET_LISTS = frozenset({"finalizers"})  # patchStrategy=merge on a list of scalars


def _merge_key(field_name: str, new: list[Any], old: list[Any]) -> str | None:
    if field_name == "ports":  # container ports merge on containerPort, service ports on port
        sample = next((i for i in [*new, *old] if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return MERGE_KEYS.get(field_name)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge(original: Any, patch: Any) -> Any:
    """A good-enough strategic merge patch: merge keys for common lists, ``$patch``,
    ``$retainKeys`` and ``$deleteFromPrimitiveList``; ``$setElementOrder`` is ignored."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return _strip_directives(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    out = dict(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            target = key.split("/", 1)[1]
            out[target] = [x for x in out.get(target) or [] if x not in value]
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            out.pop(key, None)
        elif isinstance(value, dict):
            current = out.get(key)
            out[key] = strategic_merge(current if isinstance(current, dict) else {}, value)
        elif isinstance(value, list) and key in SET_LISTS:
            current_list = list(out.get(key) or [])
            out[key] = current_list + [x for x in value if x not in current_list]
        elif isinstance(value, list) and (mk := _merge_key(key, value, out.get(key) or [])):
            out[key] = _merge_list(out.get(key) or [], value, mk)
        else:
            out[key] = _strip_directives(value)
    if "$retainKeys" in patch:
        out = {k: v for k, v in out.items() if k in patch["$retainKeys"]}
    return out


def _merge_list(old: list[Any], new: list[Any], merge_key: str) -> list[Any]:
    merged = copy.deepcopy(old)
    for item in new:
        idx = next(
            (
                i
                for i, o in enumerate(merged)
                if isinstance(o, dict)
                and isinstance(item, dict)
                and o.get(merge_key) == item.get(merge_key)
            ),
            None,
        )
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if idx is not None:
                merged.pop(idx)
        elif idx is None:
            merged.append(_strip_directives(item))
        else:
            merged[idx] = strategic_merge(merged[idx], item)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(items: list[Any], token: str, *, append: bool = False) -> int:
    if append and token == "-":
        return len(items)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise ValueError(f"invalid array index {token!r}")
    idx = int(token)
    if idx > len(items) or (idx == len(items) and not append):
        raise ValueError(f"array index {idx} out of range")
    return idx


def _child(container: Any, token: str) -> Any:
    if isinstance(container, dict):
        if token not in container:
            raise ValueError(f"path component {token!r} not found")
        return container[token]
    if isinstance(container, list):
        return container[_index(container, token)]
    raise ValueError(f"cannot descend into a scalar at {token!r}")


def _pointer_get(doc: Any, path: str) -> Any:
    for token in _pointer(path):
        doc = _child(doc, token)
    return doc


def _pointer_add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = doc
    for token in tokens[:-1]:
        parent = _child(parent, token)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], append=True), value)
    else:
        raise ValueError(f"cannot add to a scalar at {path!r}")
    return doc


def _pointer_remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise ValueError("cannot remove the whole document")
    parent = doc
    for token in tokens[:-1]:
        parent = _child(parent, token)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise ValueError(f"path {path!r} not found")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last))
    raise ValueError(f"cannot remove from a scalar at {path!r}")


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (``application/json-patch+json``); errors are 422 like the server's."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    doc = copy.deepcopy(document)
    try:
        for op in operations:
            kind, path = op["op"], op["path"]
            if kind == "add":
                doc = _pointer_add(doc, path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                _pointer_remove(doc, path)
            elif kind == "replace":
                if path == "":
                    doc = copy.deepcopy(op["value"])
                else:
                    _pointer_get(doc, path)
                    _pointer_remove(doc, path)
                    doc = _pointer_add(doc, path, copy.deepcopy(op["value"]))
            elif kind == "move":
                doc = _pointer_add(doc, path, _pointer_remove(doc, op["from"]))
            elif kind == "copy":
                doc = _pointer_add(doc, path, copy.deepcopy(_pointer_get(doc, op["from"])))
            elif kind == "test":
                if _pointer_get(doc, path) != op.get("value"):
                    raise ValueError(f"test operation failed at {path!r}")
            else:
                raise ValueError(f"unknown operation {kind!r}")
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ApiError(
            422,
            "Invalid",
            f"the server rejected our request due to an error in our request: {exc}",
        ) from exc
    return doc


# ---------------------------------------------------------------------------- selectors


def _requirements(selector: str) -> list[str]:
    parts: list[str] = []
    depth, current = 0, ""
    for ch in selector:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


_SET_REQUIREMENT = re.compile(r"^([^\s!=]+)\s+(in|notin)\s+\((.*)\)$")


def label_match(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Label selector semantics: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``,
    ``a notin (x)``; ``!=`` and ``notin`` match objects without the label, as on a server."""
    labels = labels or {}
    for req in _requirements(selector or ""):
        if m := _SET_REQUIREMENT.match(req):
            key, op = m.group(1), m.group(2)
            values = {v.strip() for v in m.group(3).split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and key in labels and labels[key] in values:
                return False
        elif "!=" in req:
            key, value = (s.strip() for s in req.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in req:
            key, value = (s.strip() for s in re.split(r"==?", req, maxsplit=1))
            if labels.get(key) != value:
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif req not in labels:
            return False
    return True


def field_match(selector: str | None, obj: Obj) -> bool:
    """Field selectors on any dotted path (``metadata.name=x,status.phase!=Active``)."""
    for req in _requirements(selector or ""):
        negate = "!=" in req
        path, value = re.split(r"!=|==?", req, maxsplit=1)
        current: Any = obj
        for part in path.strip().split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if (str(current if current is not None else "") == value.strip()) == negate:
            return False
    return True


# ---------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class ResourceInfo:
    """One served resource (a group/version/plural), as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    verbs: tuple[str, ...] = (
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    )
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return _qualified(self.group, self.plural)

    def discovery(self) -> list[Obj]:
        out: Obj = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            out["shortNames"] = list(self.short_names)
        if self.categories:
            out["categories"] = list(self.categories)
        entries = [out]
        for sub in sorted(self.subresources):
            entry: Obj = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            elif sub == "finalize":
                entry["verbs"] = ["update"]
            entries.append(entry)
        return entries


class Catalog:
    """The served resources, in discovery order (the first version of a group is preferred)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._infos: dict[tuple[str, str, str], ResourceInfo] = {}

    @classmethod
    def from_discovery(cls, path: Path) -> Catalog:
        catalog = cls()
        documents = json.loads(path.read_text(encoding="utf-8"))["groupVersions"]
        for doc in documents:
            group, _, version = doc["groupVersion"].rpartition("/")
            resources = sorted(doc["resources"], key=lambda r: "/" in r["name"])  # parents first
            for r in resources:
                name: str = r["name"]
                if "/" in name:
                    parent, sub = name.split("/", 1)
                    info = catalog._infos.get((group, version, parent))
                    if info is not None:
                        catalog._infos[(group, version, parent)] = replace(
                            info, subresources=info.subresources | {sub}
                        )
                    continue
                catalog._infos[(group, version, name)] = ResourceInfo(
                    group=group,
                    version=version,
                    plural=name,
                    kind=r["kind"],
                    namespaced=r["namespaced"],
                    singular=r.get("singularName") or r["kind"].lower(),
                    verbs=tuple(r.get("verbs") or ()),
                    short_names=tuple(r.get("shortNames") or ()),
                    categories=tuple(r.get("categories") or ()),
                    custom=group in CRD_GROUPS,
                )
        return catalog

    def add(self, info: ResourceInfo) -> ResourceInfo:
        with self._lock:
            self._infos[(info.group, info.version, info.plural)] = info
        return info

    def remove(self, group: str, plural: str) -> None:
        with self._lock:
            for key in [k for k in self._infos if k[0] == group and k[2] == plural]:
                del self._infos[key]

    def lookup(self, group: str, version: str, plural: str) -> ResourceInfo:
        info = self._infos.get((group, version, plural))
        if info is None:
            raise _no_resource()
        return info

    def all(self) -> list[ResourceInfo]:
        with self._lock:
            return list(self._infos.values())

    def by_kind(self, api_version: str, kind: str) -> ResourceInfo:
        group, _, version = api_version.rpartition("/")
        for info in self.all():
            if (info.group, info.version, info.kind) == (group, version, kind):
                return info
        raise KeyError(f"no resource serves {api_version} {kind}")

    def resolve(self, ref: str) -> ResourceInfo:
        """Find a resource the way kubectl names it: ``Deployment``, ``deployments``,
        ``deploy``, ``deployments.apps`` or ``Cluster.cluster.x-k8s.io``."""
        name, _, group = ref.partition(".")
        lowered = name.lower()
        seen: set[tuple[str, str]] = set()
        for info in self.all():
            if (info.group, info.plural) in seen or (group and info.group != group):
                continue
            seen.add((info.group, info.plural))
            if lowered in (info.kind.lower(), info.plural, info.singular, *info.short_names):
                return info
        raise KeyError(f"unknown resource {ref!r}")

    def group_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for info in self.all():
            versions = out.setdefault(info.group, [])
            if info.version not in versions:
                versions.append(info.version)
        return out

    def resource_list(self, group: str, version: str) -> Obj:
        infos = [i for i in self.all() if (i.group, i.version) == (group, version)]
        if not infos:
            raise _no_resource()
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [e for i in sorted(infos, key=lambda i: i.plural) for e in i.discovery()],
        }


# ---------------------------------------------------------------------------- validation


class _Schemas:
    """Validates manifests with kubernetes-validate's JSON schemas.

    ``kubernetes_validate.validate()`` re-reads a 1.8 MB definitions file on every call (about
    23 ms); a compiled ``Draft202012Validator`` per (kind, apiVersion, strictness) validates in
    about 0.5 ms, so validators are built once per process and shared by all emulators.
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _validators: ClassVar[dict[tuple[str, str, bool], Any]] = {}
    _definitions: ClassVar[dict[bool, Any]] = {}

    @staticmethod
    def available() -> bool:
        try:
            import kubernetes_validate  # noqa: F401
        except ImportError:
            return False
        return True

    @classmethod
    def validator(cls, kind: str, api_version: str, strict: bool) -> Any:
        key = (kind, api_version, strict)
        with cls._lock:
            if key not in cls._validators:
                cls._validators[key] = cls._build(kind, api_version, strict)
            return cls._validators[key]

    @classmethod
    def _build(cls, kind: str, api_version: str, strict: bool) -> Any:
        import jsonschema
        import referencing
        from kubernetes_validate import utils

        version = utils.latest_version()
        directory = f"kubernetes-json-schema/v{version}-local{'-strict' if strict else ''}"
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = utils.schema_contents(
                f"{directory}/{kind.lower()}-{group_version}.json", version
            )
        except FileNotFoundError:
            return None
        if strict not in cls._definitions:
            contents = utils.schema_contents(f"{directory}/_definitions.json", version)
            cls._definitions[strict] = referencing.Resource.from_contents(contents)
        registry = cls._definitions[strict] @ (
            referencing.Resource.from_contents(schema) @ referencing.Registry()
        )
        return jsonschema.Draft202012Validator(schema, registry=registry)

    @classmethod
    def _errors(cls, obj: Obj, strict: bool) -> list[Any]:
        validator = cls.validator(obj["kind"], obj["apiVersion"], strict)
        if validator is None:
            return []
        body = {k: v for k, v in obj.items() if k != "status"}  # status is server-owned
        return sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.path)))

    @classmethod
    def unknown_fields(cls, obj: Obj) -> list[str]:
        """Fields the strict schemas reject and the lax ones accept: unknown fields."""
        out: list[str] = []
        for error in cls._errors(obj, strict=True):
            if error.validator == "additionalProperties":
                path = _field_path(error.path)
                names = re.findall(r"'([^']+)'", error.message.rpartition("(")[2])
                out += [f"{path}.{n}" if path else n for n in names]
        return out

    @classmethod
    def causes(cls, obj: Obj) -> list[Obj]:
        causes: list[Obj] = []
        for error in cls._errors(obj, strict=False):
            path = _field_path(error.path)
            if error.validator == "required":
                missing = re.match(r"'([^']+)' is a required property", error.message)
                name = missing.group(1) if missing else "?"
                field_path = f"{path}.{name}" if path else name
                causes.append(
                    _cause(field_path, f"Required value: {error.message}", "FieldValueRequired")
                )
            else:
                causes.append(_cause(path or "<root>", f"Invalid value: {error.message}"))
        return causes


def _field_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _name_error(info: ResourceInfo, name: str) -> str | None:
    if info.group == "rbac.authorization.k8s.io":  # path-segment names: "system:admin" is fine
        bad = name in (".", "..") or "/" in name or "%" in name
        return "may not contain '/' or '%' and may not be '.' or '..'" if bad else None
    if info.plural == "services" and not info.group:
        rule, limit = _DNS1035_LABEL, 63
        text = (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character"
        )
    elif info.plural == "namespaces" and not info.group:
        rule, limit = _DNS1123_LABEL, 63
        text = (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
            "or '-', and must start and end with an alphanumeric character"
        )
    else:
        rule, limit = _DNS1123_SUBDOMAIN, 253
        text = (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character"
        )
    if len(name) > limit:
        return f"must be no more than {limit} characters"
    return None if rule.match(name) else text


FieldPath = tuple[str, ...]
_MISSING = object()
_UNMANAGED_META = frozenset({"name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                             "generation", "managedFields", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "selfLink"})


def _leaf_paths(obj: Obj, prefix: FieldPath = ()) -> dict[FieldPath, Any]:
    """The fields a manager can own: leaves of the object (lists count as one leaf), without
    kind, apiVersion, status and the server's own metadata."""
    out: dict[FieldPath, Any] = {}
    for k, v in obj.items():
        if (not prefix and k in ("apiVersion", "kind", "status")) or (
                prefix == ("metadata",) and k in _UNMANAGED_META):
            continue
        path = (*prefix, k)
        if isinstance(v, dict) and v:
            out.update(_leaf_paths(v, path))
        else:
            out[path] = v
    return out


def _dotted(path: FieldPath) -> str:
    return "".join(f".{p}" for p in path)


def _drop_path(obj: Obj, path: FieldPath) -> None:
    parent = obj
    for part in path[:-1]:
        parent = parent.get(part)
        if not isinstance(parent, dict):
            return
    parent.pop(path[-1], None)


def _ingress_host_causes(ingress: Obj) -> list[Obj]:
    """Ingress rule hosts: lowercase RFC 1123 subdomains, optionally with a leading `*.`."""
    causes = []
    for i, rule in enumerate((ingress.get("spec") or {}).get("rules") or []):
        host = (rule or {}).get("host")
        if not host:
            continue
        bare = host[2:] if host.startswith("*.") else host
        if len(host) > 253 or not _DNS1123_SUBDOMAIN.match(bare):
            causes.append(_cause(
                f"spec.rules[{i}].host",
                f'Invalid value: "{host}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'example.com')"))
    return causes


# What the upstream CRDs' schemas say about the objects the portal writes (Flux, Cluster API,
# CAAPH), a small part of them written down here: the fields each declares where the portal
# writes (``True``: anything below, as ``x-kubernetes-preserve-unknown-fields`` or a part
# the portal never writes; a one-item list: each item), the required ones, and the rules the
# portal could break. A real server prunes what its schema does not declare (or refuses it
# under strict validation), checks required fields and CEL rules; so does the emulator for
# these, held to the recorded contracts (contracts.py).
_ANY = True
UPSTREAM_SCHEMAS: dict[tuple[str, str], Obj] = {
    ("helm.toolkit.fluxcd.io", "helmreleases"): {"spec": {
        "chart": {"metadata": _ANY, "spec": {
            "chart": _ANY, "version": _ANY, "interval": _ANY, "reconcileStrategy": _ANY,
            "valuesFiles": _ANY, "ignoreMissingValuesFiles": _ANY, "verify": _ANY,
            "sourceRef": {"apiVersion": _ANY, "kind": _ANY, "name": _ANY, "namespace": _ANY}}},
        **dict.fromkeys((
            "chartRef", "commonMetadata", "dependsOn", "driftDetection", "install", "interval",
            "kubeConfig", "maxHistory", "persistentClient", "postRenderers", "releaseName",
            "rollback", "serviceAccountName", "storageNamespace", "suspend", "targetNamespace",
            "test", "timeout", "uninstall", "upgrade", "values", "valuesFrom"), _ANY)}},
    ("source.toolkit.fluxcd.io", "helmrepositories"): {"spec": dict.fromkeys((
        "accessFrom", "certSecretRef", "insecure", "interval", "passCredentials", "provider",
        "secretRef", "suspend", "timeout", "type", "url"), _ANY)},
    ("cluster.x-k8s.io", "clusters"): {"spec": {
        **dict.fromkeys(("availabilityGates", "clusterNetwork", "controlPlaneEndpoint",
                         "controlPlaneRef", "infrastructureRef", "paused"), _ANY),
        "topology": {
            "classRef": {"name": _ANY, "namespace": _ANY}, "controlPlane": _ANY,
            "variables": _ANY, "version": _ANY,
            "workers": {"machineDeployments": [dict.fromkeys((
                "class", "deletion", "failureDomain", "healthCheck", "metadata",
                "minReadySeconds", "name", "readinessGates", "replicas", "rollout", "taints",
                "variables"), _ANY)], "machinePools": _ANY}}}},
    ("cluster.x-k8s.io", "machinedeployments"): {"spec": dict.fromkeys((
        "clusterName", "deletion", "machineNaming", "paused", "remediation", "replicas",
        "rollout", "selector", "template"), _ANY)},
    ("addons.cluster.x-k8s.io", "helmchartproxies"): {"spec": dict.fromkeys((
        "chartName", "clusterSelector", "credentials", "namespace", "options",
        "reconcileStrategy", "releaseName", "repoURL", "tlsConfig", "valuesTemplate",
        "version"), _ANY)},
    ("addons.cluster.x-k8s.io", "helmreleaseproxies"): {"spec": dict.fromkeys((
        "chartName", "clusterRef", "credentials", "namespace", "options",
        "reconcileStrategy", "releaseName", "repoURL", "tlsConfig", "values", "version"),
        _ANY)},
}
# (path of an object, with [*] for every item; the fields it requires), when it is there.
UPSTREAM_REQUIRED: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {
    ("helm.toolkit.fluxcd.io", "helmreleases"): [
        ("spec", ("interval",)), ("spec.chart", ("spec",)),
        ("spec.chart.spec", ("chart", "sourceRef")), ("spec.chart.spec.sourceRef",
                                                     ("kind", "name"))],
    ("source.toolkit.fluxcd.io", "helmrepositories"): [("spec", ("url",))],
    ("cluster.x-k8s.io", "clusters"): [
        ("spec.topology", ("classRef", "version")), ("spec.topology.classRef", ("name",)),
        ("spec.topology.workers.machineDeployments[*]", ("class", "name"))],
    ("cluster.x-k8s.io", "machinedeployments"): [("spec", ("clusterName", "selector",
                                                           "template"))],
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


def _undeclared(value: Any, schema: Any, where: str = "") -> list[str]:
    """Field paths in `value` that `schema` does not declare (see UPSTREAM_SCHEMAS)."""
    if schema is _ANY or not isinstance(value, dict | list):
        return []
    if isinstance(schema, list):
        return [f for i, item in enumerate(value if isinstance(value, list) else [])
                for f in _undeclared(item, schema[0], f"{where}[{i}]")]
    out = []
    for key, child in (value.items() if isinstance(value, dict) else []):
        at = f"{where}.{key}" if where else key
        out += [at] if key not in schema else _undeclared(child, schema[key], at)
    return out


def _prune(value: Any, schema: Any) -> None:
    if schema is _ANY or not isinstance(value, dict | list):
        return
    if isinstance(schema, list):
        for item in value if isinstance(value, list) else []:
            _prune(item, schema[0])
        return
    for key in [k for k in value if k not in schema]:
        del value[key]
    for key, child in value.items():
        _prune(child, schema[key])


def _upstream_causes(info: ResourceInfo, obj: Obj) -> list[Obj]:
    """Required fields, lengths and CEL rules of the upstream CRDs, as the server words them."""
    key = (info.group, info.plural)
    causes = [_cause(f"{where}.{field}", "Required value", "FieldValueRequired")
              for path, fields in UPSTREAM_REQUIRED.get(key, [])
              for where, value in _at(obj, path) if isinstance(value, dict)
              for field in fields if field not in value]
    for path, least in UPSTREAM_MIN_LENGTH.get(key, []):
        for where, value in _at(obj, path):
            if isinstance(value, str) and len(value) < least:
                causes.append(_cause(where, f'Invalid value: "{value}": {where} in body should '
                                     f"be at least {least} chars long"))
    spec = obj.get("spec")
    if any(c["reason"] == "FieldValueRequired" for c in causes) and key in UPSTREAM_CEL:
        # A missing required field keeps the CRD's CEL rules from running, and says so.
        causes.append(_cause("<nil>", "Invalid value: null: some validation rules were not "
                             "checked because the object was invalid; correct the existing "
                             "errors to complete validation"))
    elif key == ("helm.toolkit.fluxcd.io", "helmreleases") and isinstance(spec, dict) and (
            ("chart" in spec) == ("chartRef" in spec)):
        causes.append(_cause("spec", "Invalid value: either chart or chartRef must be set"))
    return causes


def _restricted_violations(spec: Obj) -> list[str]:
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


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_SUFFIX = {None: 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
           "Pi": 2**50, "Ei": 2**60}


def _quantity(text: Any) -> float:
    found = _QUANTITY.match(str(text).strip())
    if not found:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    return float(found.group(1)) * _SUFFIX[found.group(2)]


def _limit_range_violations(limit_range: Obj, pod: Obj) -> list[str]:
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
                elif _quantity(limits[resource]) > _quantity(enforced):
                    problems.append(f"maximum {resource} usage per Container is {enforced}, "
                                    f"but limit is {limits[resource]}")
                elif resource in requests and _quantity(requests[resource]) > _quantity(
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


def _label_causes(labels: Any) -> list[Obj]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [_cause("metadata.labels", "Invalid value: not a map")]
    causes: list[Obj] = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        key_ok = bool(_LABEL_NAME.match(name)) and len(name) <= 63
        if prefix:
            key_ok = key_ok and bool(_DNS1123_SUBDOMAIN.match(prefix)) and len(prefix) <= 253
        if not key_ok:
            message = (
                f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                "'-', '_' or '.', and must start and end with an alphanumeric character "
                "(at most 63), with an optional DNS subdomain prefix"
            )
            causes.append(_cause("metadata.labels", message))
        if not isinstance(value, str) or (
            value and (len(value) > 63 or not _LABEL_NAME.match(value))
        ):
            message = (
                f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (at most 63)"
            )
            causes.append(_cause(f"metadata.labels.{key}", message))
    return causes


# ---------------------------------------------------------------------------- scheduler


class _Scheduler:
    """Runs the controllers' delayed work on one daemon thread, so ``stop()`` cancels it all
    (the prototype's ``threading.Timer`` per event outlived the server)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="kubeemu-controllers", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if not self._closed:
                self._queue.append((time.monotonic() + delay, next(self._seq), fn))
                self._queue.sort()
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    not self._queue or self._queue[0][0] > time.monotonic()
                ):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, fn = self._queue.pop(0)
            try:
                fn()
            except Exception:  # a controller bug must not kill the scheduler
                traceback.print_exc()


# ---------------------------------------------------------------------------- store


@dataclass(frozen=True)
class WriteEvent:
    """What a write hook sees: one stored change made through the API (not by controllers)."""

    type: Literal["ADDED", "MODIFIED"]
    info: ResourceInfo
    namespace: str | None
    name: str
    object: Obj


WriteHook = Callable[["Store", WriteEvent], None]


@dataclass(frozen=True)
class _Event:
    rv: int
    group: str
    plural: str
    type: str
    obj: Obj
    old: Obj | None


class Store:
    """The cluster state: objects, the watch event log and the tiny controllers.

    All state changes happen under one re-entrant lock; controllers run later on the
    scheduler thread and take the same lock. Objects handed out are deep copies.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        validate: bool = True,
        auto_ready: bool = True,
        ready_delay: float = 0.05,
        namespace_delete_delay: float = 0.05,
    ) -> None:
        self.catalog = catalog
        self.validate = validate
        self.ready_delay = ready_delay
        self.namespace_delete_delay = namespace_delete_delay
        self.hooks: list[WriteHook] = []
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._scheduler = _Scheduler()
        self._auto_ready = auto_ready
        self._ready_overrides: dict[ObjKey, bool] = {}
        # Server-side apply's field ownership: per object, manager -> (operation, leaf paths).
        self._fields: dict[ObjKey, dict[str, tuple[str, set[FieldPath]]]] = {}
        self._rv = 1
        self._objects: dict[ObjKey, Obj] = {}
        self._events: list[_Event] = []
        self._cleaning_namespaces: set[str] = set()
        self._addresses = itertools.count(10)
        self.closed = False
        namespaces = catalog.lookup("", "v1", "namespaces")
        for ns in SYSTEM_NAMESPACES:
            self.create(namespaces, None, {"metadata": {"name": ns}})

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._changed.notify_all()
        self._scheduler.close()

    # -- readiness knob

    @property
    def auto_ready(self) -> bool:
        return self._auto_ready

    @auto_ready.setter
    def auto_ready(self, value: bool) -> None:
        with self.lock:
            self._auto_ready = value
            for key in [k for k in self._objects if k[0] == "apps" and k[1] in WORKLOADS]:
                if key not in self._ready_overrides:
                    self._schedule_rollout(key)

    def set_ready(self, info: ResourceInfo, namespace: str | None, name: str, ready: bool) -> Obj:
        if info.group != "apps" or info.plural not in WORKLOADS:
            raise ValueError(f"{info.qualified} has no readiness to set")
        with self.lock:
            key = self._key(info, namespace, name)
            if key not in self._objects:
                raise _not_found(info.group, info.plural, name)
            self._ready_overrides[key] = ready
            self._rollout(key)
            return self._view(info, self._objects[key])

    # -- helpers

    def _key(self, info: ResourceInfo, namespace: str | None, name: str) -> ObjKey:
        return (info.group, info.plural, namespace if info.namespaced else None, name)

    def _view(self, info: ResourceInfo, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = info.api_version
        return out

    def _put(self, key: ObjKey, obj: Obj, *, new: bool = False) -> Obj:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        if new:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("generation", 1)
        old = self._objects.get(key)
        self._objects[key] = obj
        event_type = "ADDED" if new else "MODIFIED"
        self._events.append(
            _Event(self._rv, key[0], key[1], event_type, copy.deepcopy(obj), copy.deepcopy(old))
        )
        self._changed.notify_all()
        return obj

    def _remove(self, key: ObjKey, *, orphan: bool = False) -> Obj:
        removed = self._objects.pop(key)
        self._ready_overrides.pop(key, None)
        self._fields.pop(key, None)
        self._rv += 1
        obj = copy.deepcopy(removed)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append(_Event(self._rv, key[0], key[1], "DELETED", obj, None))
        self._changed.notify_all()
        if key[:2] == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._unregister_crd(removed)
        uid = removed["metadata"].get("uid")
        dependents = [
            k
            for k, o in self._objects.items()
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]
        if orphan:
            for k in dependents:
                dependent = copy.deepcopy(self._objects[k])
                refs = dependent["metadata"]["ownerReferences"]
                dependent["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                self._put(k, dependent)
        else:
            live = {o["metadata"].get("uid") for o in self._objects.values()}
            for k in dependents:
                refs = self._objects.get(k, {}).get("metadata", {}).get("ownerReferences") or []
                if k in self._objects and not any(r.get("uid") in live for r in refs):
                    self._delete(k)
        if key[2] is not None:
            self._maybe_remove_namespace(key[2])
        return obj

    def _delete(self, key: ObjKey, *, orphan: bool = False) -> tuple[Obj, bool]:
        """Start deleting: namespaces go Terminating, finalizers hold the object; else remove.
        Returns the object and whether it is gone."""
        obj = self._objects[key]
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj, False
        if key[:2] == ("", "namespaces"):
            obj = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            obj["status"] = {"phase": "Terminating"}
            self._put(key, obj)
            name = key[3]
            self._scheduler.call_later(
                self.namespace_delete_delay, lambda: self._clean_namespace(name)
            )
            return obj, False
        if meta.get("finalizers"):
            obj = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._put(key, obj), False
        return self._remove(key, orphan=orphan), True

    def _clean_namespace(self, name: str) -> None:
        with self.lock:
            ns = self._objects.get(("", "namespaces", None, name))
            if self.closed or ns is None or not ns["metadata"].get("deletionTimestamp"):
                return
            self._cleaning_namespaces.add(name)
            for key in [k for k in self._objects if k[2] == name]:
                if key in self._objects:
                    self._delete(key)
            self._maybe_remove_namespace(name)

    def _maybe_remove_namespace(self, name: str) -> None:
        if name not in self._cleaning_namespaces:
            return
        key: ObjKey = ("", "namespaces", None, name)
        ns = self._objects.get(key)
        if ns is None:
            self._cleaning_namespaces.discard(name)
            return
        if ns["metadata"].get("finalizers") or any(k[2] == name for k in self._objects):
            return
        self._cleaning_namespaces.discard(name)
        self._remove(key)

    def _check_namespace(self, namespace: str | None) -> None:
        if namespace is None:
            return
        ns = self._objects.get(("", "namespaces", None, namespace))
        if ns is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
                {"causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
            )

    # -- server-side behaviour

    def _defaults(self, info: ResourceInfo, obj: Obj, old: Obj | None) -> None:
        group, plural = info.group, info.plural
        spec = obj.get("spec")
        if group == "" and plural == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = (old or {}).get("status") or {"phase": "Active"}
            name = obj["metadata"]["name"]
            labels = obj["metadata"].get("labels") or {}
            obj["metadata"]["labels"] = {**labels, "kubernetes.io/metadata.name": name}
        elif group == "" and plural == "secrets":
            string_data = obj.pop("stringData", None) or {}
            obj.setdefault("type", "Opaque")
            encoded = {
                k: base64.b64encode(str(v).encode()).decode() for k, v in string_data.items()
            }
            obj["data"] = {**(obj.get("data") or {}), **encoded}
        elif group == "" and plural == "services":
            self._service_defaults(obj.setdefault("spec", {}), (old or {}).get("spec") or {})
        elif group == "" and plural == "resourcequotas":
            hard = (spec or {}).get("hard") or {}
            obj["status"] = {"hard": dict(hard), "used": dict.fromkeys(hard, "0")}
        elif group == "apps" and plural == "deployments" and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault(
                "strategy",
                {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                },
            )
        elif group == "apps" and plural == "statefulsets" and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault(
                "updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
            )
        elif group == "apiextensions.k8s.io" and plural == "customresourcedefinitions":
            self._crd_status(obj)

    def _service_defaults(self, spec: Obj, old_spec: Obj) -> None:
        spec.setdefault("type", "ClusterIP")
        if spec["type"] != "ExternalName":
            if old_spec.get("clusterIP"):
                spec.setdefault("clusterIP", old_spec["clusterIP"])
            if not spec.get("clusterIP"):
                n = next(self._addresses)
                spec["clusterIP"] = f"10.43.{n // 250}.{n % 250 + 1}"
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("sessionAffinity", "None")
        old_ports = {
            (p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or []
        }
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
            if spec["type"] in ("NodePort", "LoadBalancer") and not port.get("nodePort"):
                previous = old_ports.get((port.get("port"), port["protocol"]), {})
                port["nodePort"] = previous.get("nodePort") or 30000 + next(self._addresses) % 2768

    def _crd_status(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        now = _now()
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": storage,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": "", "lastTransitionTime": now}
                for t, r in (
                    ("NamesAccepted", "NoConflicts"),
                    ("Established", "InitialNamesAccepted"),
                )
            ],
        }

    def _check_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        expected = f"{names.get('plural')}.{spec.get('group')}"
        if crd["metadata"]["name"] != expected:
            raise _invalid(
                "CustomResourceDefinition",
                crd["metadata"]["name"],
                [
                    _cause(
                        "metadata.name",
                        f'Invalid value: "{crd["metadata"]["name"]}": must be '
                        'spec.names.plural+"."+spec.group',
                    )
                ],
            )

    def _register_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec.get("versions") or []:
            if version.get("served", True):
                self.catalog.add(
                    ResourceInfo(
                        group=spec["group"],
                        version=version["name"],
                        plural=names["plural"],
                        kind=names["kind"],
                        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                        singular=names.get("singular") or names["kind"].lower(),
                        short_names=tuple(names.get("shortNames") or ()),
                        categories=tuple(names.get("categories") or ()),
                        subresources=frozenset((version.get("subresources") or {}).keys()),
                        custom=True,
                    )
                )

    def _unregister_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        self.catalog.remove(group, plural)
        for key in [k for k in self._objects if k[:2] == (group, plural)]:
            self._remove(key)

    def _check_immutable(self, info: ResourceInfo, new: Obj, old: Obj) -> None:
        name = new["metadata"]["name"]
        causes: list[Obj] = []

        def immutable(field_path: str, message: str = "field is immutable") -> None:
            causes.append(_cause(field_path, message))

        new_spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
        if info.group in ("apps", "batch") and old_spec.get("selector") != new_spec.get("selector"):
            immutable("spec.selector")
        if (info.group, info.plural) == ("apps", "statefulsets"):
            allowed = {
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            }
            if _without(new_spec, allowed) != _without(old_spec, allowed):
                immutable(
                    "spec",
                    "Forbidden: updates to statefulset spec for fields other than 'replicas', "
                    "'ordinals', 'template', 'updateStrategy', "
                    "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                )
        if (info.group, info.plural) == ("", "services"):
            old_ip = old_spec.get("clusterIP")
            if old_ip and new_spec.get("clusterIP") not in (old_ip, None, ""):
                immutable("spec.clusterIP")
        if info.group == "" and info.plural in ("configmaps", "secrets") and old.get("immutable"):
            for key in ("data", "binaryData", "immutable"):
                if new.get(key) != old.get(key):
                    immutable(key, "Forbidden: field is immutable when `immutable` is set")
        if causes:
            raise _invalid(info.kind, name, causes)

    def _validate(self, info: ResourceInfo, obj: Obj, strict: bool) -> None:
        schemas = self.validate and not info.custom
        causes = _label_causes(obj["metadata"].get("labels"))
        upstream = UPSTREAM_SCHEMAS.get((info.group, info.plural))
        if upstream is not None and self.validate:
            unknown = _undeclared({k: v for k, v in obj.items() if k == "spec"}, upstream)
            if strict and unknown:
                fields = ", ".join(f'unknown field "{f}"' for f in unknown)
                raise ApiError(400, "BadRequest", f"strict decoding error: {fields}")
            _prune(obj, {**dict.fromkeys(obj, _ANY), **upstream})
            causes += _upstream_causes(info, obj)
        if schemas:
            causes += _Schemas.causes(obj)
        if (info.group, info.plural) == ("networking.k8s.io", "ingresses"):
            causes += _ingress_host_causes(obj)
        if causes:
            raise _invalid(info.kind, obj["metadata"].get("name", ""), causes)
        if strict and schemas and (unknown := _Schemas.unknown_fields(obj)):
            # fieldValidation=Strict answers unknown fields with 400, not 422
            fields = ", ".join(f'unknown field "{f}"' for f in unknown)
            raise ApiError(400, "BadRequest", f"strict decoding error: {fields}")

    # -- field ownership (server-side apply)

    def _own(self, key: ObjKey, manager: str, before: Obj | None, after: Obj) -> None:
        """A create, update or patch: its manager takes the fields it set or changed."""
        old, new = _leaf_paths(before or {}), _leaf_paths(after)
        changed = {p for p, v in new.items() if old.get(p, _MISSING) != v}
        owners = self._fields.setdefault(key, {})
        for other, (_, paths) in list(owners.items()):
            paths -= changed
            if not paths and other != manager:
                del owners[other]
        op, mine = owners.get(manager, ("Update", set()))
        owners[manager] = ("Update", (mine | changed) & new.keys())

    def _apply_ownership(self, info: ResourceInfo, key: ObjKey, manager: str, applied: Obj,
                         current: Obj, force: bool) -> set[FieldPath]:
        """Check an apply against the other managers' fields (409 unless forced) and hand the
        applied fields to `manager`. Returns the fields it owned alone and no longer applies,
        which the apply removes."""
        wanted, now = _leaf_paths(applied), _leaf_paths(current)
        owners = self._fields.setdefault(key, {})
        conflicts = [(other, op, path) for other, (op, paths) in owners.items()
                     if other != manager for path in sorted(paths & wanted.keys())
                     if now.get(path, _MISSING) != wanted[path]]
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{o}"'
                       + (f" using {info.api_version}" if op == "Update" else ""),
                       "field": _dotted(p)} for o, op, p in conflicts]
            listed = "; ".join(f"{c['message']}: {c['field']}" for c in causes)
            plural = "s" if len(conflicts) > 1 else ""
            raise ApiError(409, "Conflict",
                           f"Apply failed with {len(conflicts)} conflict{plural}: {listed}",
                           {"causes": causes})
        taken = {p for _, _, p in conflicts}
        for other, (_, paths) in list(owners.items()):
            if other != manager:
                paths -= taken
                if not paths:
                    del owners[other]
        _, before = owners.get(manager, ("Apply", set()))
        shared = set().union(*(paths for o, (_, paths) in owners.items() if o != manager))
        owners[manager] = ("Apply", set(wanted))
        return {p for p in before - wanted.keys() if p not in shared}

    # -- admission

    def _admit_pod(self, namespace: str | None, pod: Obj) -> None:
        """LimitRange maximums per container, Pod Security Admission (`restricted` only) and
        ResourceQuota on extended resources (GPUs), answered as the real admission plugins
        answer, in their order (LimitRanger, PodSecurity, ResourceQuota)."""
        name = pod["metadata"]["name"]
        problems = [problem for key, limits in sorted(self._objects.items())
                    if key[:3] == ("", "limitranges", namespace)
                    for problem in _limit_range_violations(limits, pod)]
        if problems:
            # The LimitRanger's aggregate: one error as is, several in brackets.
            text = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
            raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: {text}',
                           {"name": name, "kind": "pods"})
        ns = self._objects.get(("", "namespaces", None, namespace or ""))
        labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") == "restricted":
            problems = _restricted_violations(pod.get("spec") or {})
            if problems:
                version = labels.get("pod-security.kubernetes.io/enforce-version", "latest")
                raise ApiError(
                    403, "Forbidden",
                    f'pods "{name}" is forbidden: violates PodSecurity "restricted:{version}": '
                    + ", ".join(problems), {"name": name, "kind": "pods"})
        pods = [o for k, o in self._objects.items() if k[:3] == ("", "pods", namespace)
                and not o["metadata"].get("deletionTimestamp")
                and (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        for key, quota in sorted(self._objects.items()):
            if key[:3] != ("", "resourcequotas", namespace):
                continue
            for item, limit in ((quota.get("spec") or {}).get("hard") or {}).items():
                resource = item.removeprefix("requests.")
                if resource == item or "/" not in resource:
                    continue  # only extended resources (nvidia.com/gpu) are counted here
                wanted = _pod_request(pod, resource)
                used = sum(_pod_request(p, resource) for p in pods)
                if wanted and used + wanted > int(limit):
                    raise ApiError(
                        403, "Forbidden",
                        f'pods "{name}" is forbidden: exceeded quota: {key[3]}, requested: '
                        f"{item}={wanted}, used: {item}={used}, limited: {item}={limit}",
                        {"name": name, "kind": "pods"})

    # -- controllers

    def _after_write(
        self, info: ResourceInfo, key: ObjKey, event_type: str, *, rollout: bool = True
    ) -> None:
        if rollout and info.group == "apps" and info.plural in WORKLOADS:
            self._schedule_rollout(key)
        if self.hooks:
            event = WriteEvent(
                "ADDED" if event_type == "ADDED" else "MODIFIED",
                info,
                key[2],
                key[3],
                self._view(info, self._objects[key]),
            )
            for hook in list(self.hooks):
                hook(self, event)

    def _schedule_rollout(self, key: ObjKey) -> None:
        def run() -> None:
            with self.lock:
                if not self.closed:
                    self._rollout(key)

        self._scheduler.call_later(self.ready_delay, run)

    def _rollout(self, key: ObjKey) -> None:
        """What the workload controllers would report once the pods are (or are not) ready."""
        obj = self._objects.get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        ready = self._ready_overrides.get(key, self._auto_ready)
        if key[1] in ("deployments", "statefulsets") and self._pods_refused(key, obj):
            ready = False
        obj = copy.deepcopy(obj)
        obj["status"] = _workload_status(key[1], obj, ready)
        self._put(key, obj)

    def _pods_refused(self, key: ObjKey, workload: Obj) -> bool:
        """Whether admission would refuse the workload's pods; if so, the Warning the real
        controller records: FailedCreate on the Deployment's ReplicaSet or on the
        StatefulSet."""
        _, plural, namespace, name = key
        template = (workload.get("spec") or {}).get("template") or {}
        if plural == "deployments":
            replica_set = f"{name}-{workload['metadata'].get('uid', '')[:8] or '5d9c7b'}"
            pod_name = f"{replica_set}-x7k2q"
            involved = {"kind": "ReplicaSet", "apiVersion": "apps/v1", "name": replica_set}
        else:
            pod_name = f"{name}-0"
            involved = {"kind": "StatefulSet", "apiVersion": "apps/v1", "name": name}
        try:
            self._admit_pod(namespace, {"metadata": {"name": pod_name},
                                        "spec": template.get("spec") or {}})
        except ApiError as refusal:
            message = (f"Error creating: {refusal.message}" if plural == "deployments" else
                       f"create Pod {pod_name} in StatefulSet {name} failed error: "
                       f"{refusal.message}")
            already = any(k[:3] == ("", "events", namespace) and
                          e["involvedObject"].get("name") == involved["name"] and
                          e.get("reason") == "FailedCreate" for k, e in self._objects.items())
            if not already:
                events = self.catalog.lookup("", "v1", "events")
                self.create(events, namespace, {
                    "metadata": {"generateName": f"{involved['name']}."},
                    "involvedObject": {**involved, "namespace": namespace},
                    "type": "Warning", "reason": "FailedCreate", "message": message,
                    "source": {"component": f"{involved['kind'].lower()}-controller"},
                    "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1})
            return True
        return False

    # -- verbs

    def create(
        self,
        info: ResourceInfo,
        namespace: str | None,
        body: Any,
        *,
        strict: bool = False,
        dry_run: bool = False,
        manager: str | None = None,
        applied: bool = False,
    ) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        namespace = namespace if info.namespaced else None
        if info.namespaced and namespace is None:
            namespace = meta.get("namespace") or "default"
        if obj.get("apiVersion") not in (None, "", info.api_version):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj['apiVersion']}) does not match the expected "
                f"API version ({info.api_version})",
            )
        if obj.get("kind") not in (None, "", info.kind):
            raise ApiError(
                400,
                "BadRequest",
                f"the kind in the data ({obj['kind']}) does not match the expected kind "
                f"({info.kind})",
            )
        if namespace and meta.get("namespace") not in (None, "", namespace):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
            meta["name"] = meta["generateName"] + suffix
        name = meta.get("name")
        if not name:
            raise _invalid(
                info.kind,
                "",
                [
                    _cause(
                        "metadata.name",
                        "Required value: name or generateName is required",
                        "FieldValueRequired",
                    )
                ],
            )
        if problem := _name_error(info, name):
            raise _invalid(
                info.kind,
                name,
                [_cause("metadata.name", f'Invalid value: "{name}": {problem}')],
            )
        with self.lock:
            self._check_namespace(namespace)
            key = self._key(info, namespace, name)
            if key in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{info.qualified} "{name}" already exists',
                    {"name": name, "group": info.group, "kind": info.plural},
                )
            if namespace:
                meta["namespace"] = namespace
            obj["apiVersion"], obj["kind"] = info.api_version, info.kind
            for k in (
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
            ):
                meta.pop(k, None)
            if "status" in info.subresources:  # status is server-owned
                obj["status"] = copy.deepcopy(INITIAL_STATUS.get((info.group, info.plural), {}))
            is_crd = (info.group, info.plural) == (
                "apiextensions.k8s.io",
                "customresourcedefinitions",
            )
            if is_crd:
                self._check_crd(obj)
            self._defaults(info, obj, None)
            self._validate(info, obj, strict)
            if (info.group, info.plural) == ("", "pods"):
                self._admit_pod(namespace, obj)
            if dry_run:
                return self._view(info, obj)
            if is_crd:
                self._register_crd(obj)
            self._put(key, obj, new=True)
            if applied:
                self._fields[key] = {manager or "unknown": ("Apply", set(_leaf_paths(body)))}
            else:
                self._own(key, manager or "unknown", None, obj)
            self._after_write(info, key, "ADDED")
            return self._view(info, obj)

    def get(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        with self.lock:
            obj = self._objects.get(self._key(info, namespace, name))
            if obj is None:
                raise _not_found(info.group, info.plural, name)
            return self._view(info, obj)

    def find(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.get(self._key(info, namespace, name))
            return None if obj is None else self._view(info, obj)

    def items(
        self,
        info: ResourceInfo | None = None,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        """Matching objects sorted by (namespace, name), as etcd's key order gives them."""
        with self.lock:
            out = []
            for key in sorted(self._objects, key=lambda k: (k[0], k[1], k[2] or "", k[3])):
                obj = self._objects[key]
                if info is not None and key[:2] != (info.group, info.plural):
                    continue
                if namespace is not None and key[2] != namespace:
                    continue
                if not label_match(label_selector, obj["metadata"].get("labels")):
                    continue
                if not field_match(field_selector, obj):
                    continue
                out.append(self._view(info, obj) if info else copy.deepcopy(obj))
            return out

    def list(self, info: ResourceInfo, namespace: str | None, query: Mapping[str, str]) -> Obj:
        with self.lock:
            items = self.items(
                info, namespace, query.get("labelSelector"), query.get("fieldSelector")
            )
            rv = str(self._rv)
        meta: Obj = {"resourceVersion": rv}
        token = query.get("continue")
        if token:
            try:
                after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(400, "BadRequest", "invalid continue token") from exc
            items = [i for i in items if _sort_key(i) > tuple(after)]
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", "limit must be an integer") from exc
        if 0 < limit < len(items):
            items, rest = items[:limit], len(items) - limit
            last = list(_sort_key(items[-1]))
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"after": last}).encode()
            ).decode()
            meta["remainingItemCount"] = rest
        if not info.custom:  # a real server leaves these off items of built-in kinds
            items = [{k: v for k, v in i.items() if k not in ("kind", "apiVersion")}
                     for i in items]
        return {
            "kind": f"{info.kind}List",
            "apiVersion": info.api_version,
            "metadata": meta,
            "items": _list_items(info, items),
        }

    def update(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
        manager: str | None = None,
    ) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        with self.lock:
            old = self.get(info, namespace, name)
            new = self._write(
                info, namespace, name, copy.deepcopy(body), old, subresource, strict, dry_run
            )
            if not dry_run and subresource is None:
                self._own(self._key(info, namespace, name), manager or "unknown", old, new)
            return new

    def patch(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
        field_manager: str | None = None,
        force: bool = False,
    ) -> tuple[Obj, int]:
        with self.lock:
            drop: set[FieldPath] = set()
            if "apply-patch" in content_type:
                if not field_manager:
                    raise _invalid(
                        "PatchOptions.meta.k8s.io",
                        "",
                        [
                            _cause(
                                "fieldManager",
                                "Required value: is required for apply patch",
                                "FieldValueRequired",
                            )
                        ],
                    )
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "an apply patch must be an object")
                upstream = UPSTREAM_SCHEMAS.get((info.group, info.plural))
                if upstream is not None and self.validate and subresource is None and (
                        unknown := _undeclared({"spec": body.get("spec")}, upstream)):
                    # Server-side apply types the patch against the CRD's schema first, and
                    # refuses (500, no reason) a field it does not declare, strict or not.
                    raise ApiError(500, "", (
                        f"failed to create typed patch object ({namespace}/{name}; "
                        f"{info.api_version}, Kind={info.kind}): .{unknown[0]}: field not "
                        "declared in schema"))
                if self.find(info, namespace, name) is None and subresource is None:
                    body = copy.deepcopy(body)
                    body.setdefault("metadata", {}).setdefault("name", name)
                    if body["metadata"]["name"] != name:
                        raise ApiError(
                            400,
                            "BadRequest",
                            "the name of the object does not match the name on the URL",
                        )
                    return self.create(info, namespace, body, strict=strict, dry_run=dry_run,
                                       manager=field_manager, applied=True), 201
                old = self.get(info, namespace, name)
                if subresource is None:
                    drop = self._apply_ownership(info, self._key(info, namespace, name),
                                                 field_manager, body, old, force)
                new = merge_patch(old, body) if info.custom else strategic_merge(old, body)
                for path in drop:  # fields this manager applied before, alone, and now not
                    _drop_path(new, path)
            else:
                old = self.get(info, namespace, name)
                if "json-patch" in content_type:
                    new = json_patch(old, body)
                elif "strategic-merge-patch" in content_type:
                    if info.custom:
                        raise ApiError(
                            415,
                            "UnsupportedMediaType",
                            f"the body of the request was in an unknown format - accepted media "
                            f"types include: application/json-patch+json, "
                            f"application/merge-patch+json, application/apply-patch+yaml "
                            f"(strategic merge patch is not supported for {info.qualified})",
                        )
                    new = strategic_merge(old, body)
                elif "merge-patch" in content_type:
                    new = merge_patch(old, body)
                else:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        f"the body of the request was in an unknown format - accepted media types "
                        f"include: {ACCEPTED_MEDIA}",
                    )
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patch did not produce an object")
            written = self._write(info, namespace, name, new, old, subresource, strict, dry_run)
            if not dry_run and subresource is None and "apply-patch" not in content_type:
                self._own(self._key(info, namespace, name), field_manager or "unknown", old,
                          written)
            return written, 200

    def _write(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        new: Obj,
        old: Obj,
        subresource: str | None,
        strict: bool,
        dry_run: bool,
    ) -> Obj:
        """The common path of update, patch and apply on an existing object."""
        key = self._key(info, namespace, name)
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        meta, old_meta = new["metadata"], old["metadata"]
        if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {info.qualified} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "group": info.group, "kind": info.plural},
            )
        if meta.get("name", name) != name:
            raise ApiError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        if info.namespaced and meta.get("namespace", key[2]) not in (key[2], ""):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        for k in (
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "namespace",
            "deletionGracePeriodSeconds",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        meta["name"] = name
        new["apiVersion"], new["kind"] = info.api_version, info.kind
        if subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        else:
            if "status" in info.subresources:
                if old.get("status") is None:
                    new.pop("status", None)
                else:
                    new["status"] = copy.deepcopy(old["status"])
            if _without(new, _OWNED) != _without(old, _OWNED):
                new["metadata"]["generation"] = old_meta.get("generation", 1) + 1
            self._check_immutable(info, new, old)
        self._defaults(info, new, old)
        self._validate(info, new, strict)
        if dry_run:
            return self._view(info, new)
        if _same_but_version(new, old) and not old_meta.get("deletionTimestamp"):
            # A write that changes nothing is a no-op, as on a real server: same resourceVersion,
            # no watch event. Idempotent clients rely on it.
            return self._view(info, old)
        self._put(key, new)
        if key[:2] == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(new)
        if old_meta.get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            if key[:2] == ("", "namespaces"):
                self._maybe_remove_namespace(name)
                return self._view(info, new)
            return self._view(info, self._remove(key))
        # A status write is the test standing in for the controller: leave it alone.
        self._after_write(info, key, "MODIFIED", rollout=subresource != "status")
        return self._view(info, new)

    def delete(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        options = options or {}
        with self.lock:
            key = self._key(info, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise _not_found(info.group, info.plural, name)
            if key[:2] == ("", "namespaces") and name in UNDELETABLE_NAMESPACES:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                    {"name": name, "kind": "namespaces"},
                )
            preconditions = options.get("preconditions") or {}
            for field_name in ("uid", "resourceVersion"):
                expected = preconditions.get(field_name)
                actual = obj["metadata"].get(field_name)
                if expected and expected != actual:
                    raise ApiError(
                        409,
                        "Conflict",
                        f"Precondition failed: {field_name.replace('uid', 'UID')} in precondition: "
                        f"{expected}, {field_name} in object meta: {actual}",
                        {"name": name, "group": info.group, "kind": info.plural},
                    )
            if dry_run:
                return self._view(info, obj)
            uid = obj["metadata"].get("uid")
            result, gone = self._delete(key, orphan=options.get("propagationPolicy") == "Orphan")
            if gone and (info.group, info.plural) != ("", "pods"):
                return {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": info.group, "kind": info.plural, "uid": uid},
                }
            return self._view(info, result)

    def delete_collection(
        self,
        info: ResourceInfo,
        namespace: str | None,
        query: Mapping[str, str],
        options: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        with self.lock:
            listed = self.list(info, namespace, {k: v for k, v in query.items() if k != "limit"})
            for item in listed["items"]:
                meta = item["metadata"]
                key = self._key(info, meta.get("namespace"), meta["name"])
                if key in self._objects and not dry_run:
                    self._delete(key, orphan=(options or {}).get("propagationPolicy") == "Orphan")
            return listed

    def watch(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str | None,
        query: Mapping[str, str],
        deadline: float,
    ) -> Generator[Obj, None, None]:
        """Watch events; initial ADDED events unless resuming, and the initial-events-end
        BOOKMARK that WatchList clients (kubectl >= 1.35 informers) wait for."""
        rv = query.get("resourceVersion") or ""
        send_initial = _flag(query, "sendInitialEvents")
        if send_initial and query.get("resourceVersionMatch") != "NotOlderThan":
            raise _invalid(
                "ListOptions.meta.k8s.io",
                "",
                [
                    _cause(
                        "resourceVersionMatch",
                        "Forbidden: sendInitialEvents requires setting resourceVersionMatch "
                        "to NotOlderThan",
                    )
                ],
            )
        if send_initial and not _flag(query, "allowWatchBookmarks"):
            raise _invalid(
                "ListOptions.meta.k8s.io",
                "",
                [
                    _cause(
                        "allowWatchBookmarks",
                        "Forbidden: allowWatchBookmarks must be set to true when "
                        "sendInitialEvents is true",
                    )
                ],
            )
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")

        def matches(obj: Obj) -> bool:
            meta = obj["metadata"]
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and label_match(labels, meta.get("labels"))
                and field_match(fields, obj)
            )

        initial = send_initial or rv in ("", "0")
        with self.lock:
            if initial:
                items = [o for o in self.items(info, namespace) if matches(o)]
                position, start_rv = len(self._events), self._rv
            else:
                try:
                    since = int(rv)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv!r}") from exc
                items, start_rv = [], since
                position = bisect.bisect_right([e.rv for e in self._events], since)
        return self._watch_stream(info, items, position, start_rv, send_initial, matches, deadline)

    def _watch_stream(
        self,
        info: ResourceInfo,
        items: list[Obj],
        position: int,
        start_rv: int,
        send_initial: bool,
        matches: Callable[[Obj], bool],
        deadline: float,
    ) -> Generator[Obj, None, None]:
        for obj in items:
            yield {"type": "ADDED", "object": obj}
        if send_initial:
            yield {
                "type": "BOOKMARK",
                "object": {
                    "kind": info.kind,
                    "apiVersion": info.api_version,
                    "metadata": {
                        "resourceVersion": str(start_rv),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                },
            }
        while True:
            with self.lock:
                while position >= len(self._events) and not self.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(min(remaining, 0.5))
                batch, position = self._events[position:], len(self._events)
                closed = self.closed
            for event in batch:
                if (event.group, event.plural) != (info.group, info.plural):
                    continue
                event_type = event.type
                now_matches = matches(event.obj)
                if event_type == "MODIFIED" and event.old is not None:
                    was_matching = matches(event.old)
                    if not now_matches and not was_matching:
                        continue
                    if not was_matching:
                        event_type = "ADDED"
                    elif not now_matches:
                        event_type = "DELETED"
                elif not now_matches:
                    continue
                yield {"type": event_type, "object": self._view(info, event.obj)}
            if closed or time.monotonic() >= deadline:
                return

    def scale(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        obj = self.get(info, namespace, name)
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        meta = {
            k: obj["metadata"][k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in obj["metadata"]
        }
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": meta,
            "spec": {"replicas": spec.get("replicas", 1)},
            "status": {
                "replicas": status.get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in match_labels.items()),
            },
        }

    def set_scale(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        content_type: str | None,
        body: Any,
        *,
        dry_run: bool = False,
    ) -> Obj:
        with self.lock:
            current = self.scale(info, namespace, name)
            if content_type is None:
                wanted = body
            elif "json-patch" in content_type:
                wanted = json_patch(current, body)
            elif "strategic-merge-patch" in content_type:
                wanted = strategic_merge(current, body)
            else:
                wanted = merge_patch(current, body)
            try:
                replicas = int(wanted["spec"]["replicas"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ApiError(400, "BadRequest", "spec.replicas is required") from exc
            rv = (
                (wanted.get("metadata") or {}).get("resourceVersion")
                if content_type is None
                else None
            )
            patch: Obj = {"spec": {"replicas": replicas}}
            if rv:
                patch["metadata"] = {"resourceVersion": rv}
            self.patch(
                info, namespace, name, "application/merge-patch+json", patch, dry_run=dry_run
            )
            return self.scale(info, namespace, name)


_OWNED = frozenset({"metadata", "status"})


def _same_but_version(new: Obj, old: Obj) -> bool:
    def strip(obj: Obj) -> Obj:
        meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
        return {**obj, "metadata": meta}

    return strip(new) == strip(old)


def _without(mapping: Mapping[str, Any], keys: Iterable[str]) -> Obj:
    skip = set(keys)
    return {k: v for k, v in mapping.items() if k not in skip}


def _flag(query: Mapping[str, str], name: str) -> bool:
    """Boolean query parameters: Go clients send ``true``, the Python client ``True``."""
    return query.get(name, "").lower() in ("true", "1")


def _sort_key(obj: Obj) -> tuple[str, str]:
    return (obj["metadata"].get("namespace") or "", obj["metadata"]["name"])


def _workload_status(plural: str, obj: Obj, ready: bool) -> Obj:
    generation = obj["metadata"].get("generation", 1)
    if plural == "daemonsets":
        n = 1 if ready else 0
        return {
            "observedGeneration": generation,
            "currentNumberScheduled": 1,
            "desiredNumberScheduled": 1,
            "numberMisscheduled": 0,
            "numberReady": n,
            "numberAvailable": n,
            "updatedNumberScheduled": 1,
            **({} if ready else {"numberUnavailable": 1}),
        }
    replicas = (obj.get("spec") or {}).get("replicas", 1)
    available = replicas if ready else 0
    status: Obj = {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": available,
        "availableReplicas": available,
    }
    if plural == "replicasets":
        status["fullyLabeledReplicas"] = replicas
        return status
    status["updatedReplicas"] = replicas
    name = obj["metadata"]["name"]
    if plural == "statefulsets":
        status.update(
            currentReplicas=replicas, currentRevision=f"{name}-1", updateRevision=f"{name}-1"
        )
        return status
    now = _now()
    if not ready and replicas:
        status["unavailableReplicas"] = replicas
    status["conditions"] = [
        {
            "type": "Available",
            "status": "True" if ready or not replicas else "False",
            "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable",
            "message": "Deployment has minimum availability."
            if ready
            else "Deployment does not have minimum availability.",
            "lastTransitionTime": now,
            "lastUpdateTime": now,
        },
        {
            "type": "Progressing",
            "status": "True",
            "reason": "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated",
            "message": f'ReplicaSet "{name}-1" has successfully progressed.'
            if ready
            else f'ReplicaSet "{name}-1" is progressing.',
            "lastTransitionTime": now,
            "lastUpdateTime": now,
        },
    ]
    return status


# ---------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Faults:
    """Which requests the emulator fails, and how.

    Each request that passes the filters (``verbs``: Kubernetes verbs such as
    ``MUTATING_VERBS``; ``paths``: URL path prefixes) draws one number from a generator seeded
    with ``seed``; below ``rate`` it fails with a kind drawn from ``kinds``. The same seed and
    request sequence give the same faults. Kinds:

    - ``"500"``: an HTTP 500 with an ``InternalError`` Status body;
    - ``"429"``: an HTTP 429 ``TooManyRequests`` with ``Retry-After: 1`` (API Priority and
      Fairness shedding load);
    - ``"timeout"``: the connection is held ``delay`` seconds (set it above the client's read
      timeout), then answered 504 ``Timeout`` and closed;
    - ``"reset"``: the socket is closed with SO_LINGER 0, so the client sees a TCP reset.

    With ``after=True`` the request is carried out first and only its answer is lost, as when
    a write reaches etcd but the response never arrives. ``limit`` caps the number of faults.
    """

    rate: float = 0.0
    kinds: tuple[FaultKind, ...] = ("500",)
    seed: int | None = None
    delay: float = 2.0
    verbs: frozenset[str] | None = None
    paths: tuple[str, ...] | None = None
    after: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be within 0.0-1.0, not {self.rate}")
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be among {FAULT_KINDS}, got {kinds}")
        object.__setattr__(self, "kinds", kinds)
        if self.verbs is not None:
            object.__setattr__(self, "verbs", frozenset(self.verbs))
        if isinstance(self.paths, str):
            object.__setattr__(self, "paths", (self.paths,))
        if self.delay < 0:
            raise ValueError("fault delay must not be negative")


@dataclass(frozen=True)
class _Decision:
    kind: FaultKind
    after: bool
    delay: float


class _FaultInjector:
    """Draws the faults for one ``Faults`` setting; replaced whole when the setting changes."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self._injected = 0

    def decide(self, verb: str, path: str) -> _Decision | None:
        f = self.faults
        if f.rate <= 0.0:
            return None
        if f.verbs is not None and verb not in f.verbs:
            return None
        if f.paths is not None and not any(path.startswith(p) for p in f.paths):
            return None
        with self._lock:
            if f.limit is not None and self._injected >= f.limit:
                return None
            if self._rng.random() >= f.rate:
                return None
            self._injected += 1
            return _Decision(self._rng.choice(f.kinds), f.after, f.delay)


# ---------------------------------------------------------------------------- request counter


@dataclass
class RequestRecord:
    """One HTTP request as the emulator saw it. ``status`` is None while a watch or a held
    ``timeout`` fault is pending, and stays None when the connection was reset."""

    method: str
    path: str
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    pattern: str
    status: int | None = None
    fault: FaultKind | None = None
    headers: dict[str, str] = field(default_factory=dict)  # as received, names lowercased
    # Who the request's bearer token names, when it is a ServiceAccount token this emulator
    # minted (TokenRequest); None for any other credential (the emulator authenticates none).
    user: str | None = None

    @property
    def failed(self) -> bool:
        return self.fault is not None or (self.status is not None and self.status >= 400)


class RequestCounter:
    """Counts every HTTP request received, faulted or not; thread-safe; ``reset()`` between
    phases of a test. Keys: ``verb`` is the Kubernetes verb (``get``, ``list``, ``watch``,
    ``create``, ``update``, ``patch``, ``delete``, ``deletecollection``, or ``discovery``),
    ``resource`` is ``plural[.group][/subresource]`` (empty for discovery)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def _begin(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self._records.append(record)
        return record

    def _finish(
        self, record: RequestRecord, status: int | None, fault: FaultKind | None = None
    ) -> None:
        with self._lock:
            record.status = status
            if fault is not None:
                record.fault = fault

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return [replace(r) for r in self._records]

    @property
    def total(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def failed(self) -> int:
        """Requests answered with an error status or hit by a fault."""
        return sum(r.failed for r in self.records())

    @property
    def faulted(self) -> int:
        return sum(r.fault is not None for r in self.records())

    @property
    def succeeded(self) -> int:
        return sum(not r.failed for r in self.records())

    def count(
        self,
        *,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        method: str | None = None,
        faulted: bool | None = None,
        failed: bool | None = None,
    ) -> int:
        return sum(
            (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (namespace is None or r.namespace == namespace)
            and (method is None or r.method == method.upper())
            and (faulted is None or (r.fault is not None) == faulted)
            and (failed is None or r.failed == failed)
            for r in self.records()
        )

    def by_verb(self) -> dict[str, int]:
        return dict(Counter(r.verb for r in self.records()))

    def by_resource(self) -> dict[str, int]:
        return dict(Counter(r.resource for r in self.records()))

    def by_verb_resource(self) -> dict[tuple[str, str], int]:
        return dict(Counter((r.verb, r.resource) for r in self.records()))

    def by_pattern(self) -> dict[tuple[str, str], int]:
        """Counts per (HTTP method, path pattern such as ``/api/v1/namespaces/{namespace}``)."""
        return dict(Counter((r.method, r.pattern) for r in self.records()))

    def by_fault(self) -> dict[str, int]:
        return dict(Counter(r.fault for r in self.records() if r.fault is not None))


# ---------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class _Route:
    verb: str
    pattern: str
    discovery: bool = False
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def resource(self) -> str:
        if self.discovery or not self.plural:
            return ""
        base = _qualified(self.group, self.plural)
        return f"{base}/{self.subresource}" if self.subresource else base


_DISCOVERY_ROOTS = frozenset({"version", "healthz", "livez", "readyz", "openapi"})


def _parse_route(method: str, path: str, query: Mapping[str, str]) -> _Route:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] in _DISCOVERY_ROOTS:
        return _Route("discovery", path or "/", discovery=True)
    if parts[0] == "api" and len(parts) >= 2:
        group, version, rest, prefix = "", parts[1], parts[2:], f"/api/{parts[1]}"
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
        prefix = f"/apis/{group}/{version}"
    elif parts[0] in ("api", "apis"):
        return _Route("discovery", path, discovery=True)
    else:
        return _Route(method.lower(), path)
    if not rest:
        return _Route("discovery", prefix, discovery=True)
    watch = _flag(query, "watch")
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
        prefix += "/watch"
    namespace = None
    is_ns_subresource = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest and rest[0] == "namespaces" and len(rest) >= 3 and not is_ns_subresource:
        namespace, rest = rest[1], rest[2:]
        prefix += "/namespaces/{namespace}"
    if not rest:
        return _Route(method.lower(), path)
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    pattern = f"{prefix}/{plural}" + ("/{name}" if name else "") + (f"/{sub}" if sub else "")
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method, method.lower())
    return _Route(verb, pattern, False, group, version, plural, namespace, name, sub)


@dataclass
class _Response:
    code: int
    body: Any
    content_type: str = "application/json"
    stream: Generator[Obj, None, None] | None = None


def _decode_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "protobuf" in content_type or "cbor" in content_type:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{ACCEPTED_MEDIA}",
        )
    try:
        if "yaml" in content_type:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise ApiError(400, "BadRequest", f"the request body could not be decoded: {exc}") from exc


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() must not wait for watches and idle keep-alives
    allow_reuse_address = True
    request_queue_size = 128

    handler_class: type[BaseHTTPRequestHandler] | None = None  # the kit's proxy has its own

    def __init__(self, address: tuple[str, int], emulator: Any) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, self.handler_class or _Handler)

    def close_connections(self) -> None:
        """Stop serving kept-alive connections too: a stopped emulator must look dead."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


POD_STREAMS = ("exec", "attach", "portforward")


def _ws_frame(payload: bytes, *, opcode: int) -> bytes:
    """One final, unmasked WebSocket frame (a server's)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack("!Q", size)
    return head + payload


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubeemu/1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms stalls
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("KUBEEMU_LOG"):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        emu = self.server.emulator
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = _parse_route(method, url.path, query)
        if route.plural == "pods" and route.group == "" and route.subresource in POD_STREAMS:
            self._pod_stream(route, parse_qs(url.query, keep_blank_values=True))
            return
        record = emu.requests._begin(
            RequestRecord(
                method,
                self.path,
                route.verb,
                route.resource,
                route.namespace,
                route.name,
                route.pattern,
                headers={k.lower(): v for k, v in self.headers.items()},
                user=emu.token_user(self.headers.get("Authorization") or ""),
            )
        )
        raw = self._read_body()
        decision = emu._injector.decide(route.verb, url.path)
        if decision is not None and not decision.after:
            self._inject(decision, record)
            return
        if emu.token_refused(self.headers.get("Authorization") or ""):
            response = _Response(401, ApiError(401, "Unauthorized", "Unauthorized").status())
        else:
            response = emu._dispatch(method, route, query,
                                     self.headers.get("Content-Type") or "", raw)
        if decision is not None:
            if response.stream is not None:
                response.stream.close()
            self._inject(decision, record)
            return
        if os.environ.get("KUBEEMU_LOG"):
            print(f"kubeemu: {method} {self.path} -> {response.code}", file=sys.stderr, flush=True)
        emu.requests._finish(record, response.code)
        if response.stream is not None:
            self._send_stream(response.stream)
        else:
            self._send(response.code, response.body, response.content_type)

    def _pod_stream(self, route: _Route, query: dict[str, list[str]]) -> None:
        """exec, attach, port-forward: the real server's refusals, and exec over WebSocket in
        a pod bound to a node, answered as for a container that has only `echo`."""
        emu = self.server.emulator
        record = emu.requests._begin(RequestRecord(
            self.command, self.path, route.verb, route.resource, route.namespace, route.name,
            route.pattern, headers={k.lower(): v for k, v in self.headers.items()},
            user=emu.token_user(self.headers.get("Authorization") or "")))
        self._read_body()
        info = emu.catalog.lookup("", "v1", "pods")
        pod = emu.store.find(info, route.namespace, route.name or "")
        upgrade = (self.headers.get("Upgrade") or "").lower()
        offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "")
                   .split(",")]
        protocol = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io")
                         if p in offered), None)
        error = None
        if pod is None:
            error = _not_found("", "pods", route.name or "")
        elif not (pod.get("spec") or {}).get("nodeName"):
            error = ApiError(400, "BadRequest",
                             f"pod {route.name} does not have a host assigned")
        elif upgrade != "websocket" or route.subresource != "exec" or protocol is None:
            error = ApiError(400, "BadRequest", "Upgrade request required")
        if error is not None:
            emu.requests._finish(record, error.code)
            self._send(error.code, error.status())
            return
        key = self.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        emu.requests._finish(record, 101)
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        if emu.kubelet is not None and emu.kubelet.runs(pod):
            emu.kubelet.exec(self, pod, query, protocol)
            self.close_connection = True
            return
        command = query.get("command") or []
        if command[:1] == ["echo"]:
            frames = [b"\x01" + (" ".join(command[1:]) + "\n").encode()]
            status: Obj = {"metadata": {}, "status": "Success"}
        else:
            frames = [b"\x02" + f"kubeemu: {' '.join(command)}: not found\n".encode()]
            status = {
                "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: error executing "
                           f"command {command}, exit code 127",
                "details": {"causes": [{"reason": "ExitCode", "message": "127"}]},
            }
        frames.append(b"\x03" + json.dumps(status).encode())
        for payload in frames:
            self.wfile.write(_ws_frame(payload, opcode=2))
        self.wfile.write(_ws_frame(struct.pack("!H", 1000), opcode=8))
        self.wfile.flush()
        self.close_connection = True

    def _send(
        self, code: int, body: Any, content_type: str = "application/json", *, close: bool = False
    ) -> None:
        data = (
            body
            if isinstance(body, bytes)
            else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        )
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_stream(self, events: Generator[Obj, None, None]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            self.close_connection = True

    def _inject(self, decision: _Decision, record: RequestRecord) -> None:
        emu = self.server.emulator
        if decision.kind == "500":
            emu.requests._finish(record, 500, "500")
            error = ApiError(500, "InternalError", "kubeemu: injected fault (HTTP 500)")
            self._send(500, error.status())
        elif decision.kind == "429":
            emu.requests._finish(record, 429, "429")
            error = ApiError(429, "TooManyRequests", "kubeemu: injected fault (HTTP 429)",
                             {"retryAfterSeconds": 1})
            self.send_response(429)
            data = json.dumps(error.status()).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif decision.kind == "timeout":
            emu.requests._finish(record, None, "timeout")
            emu._stopping.wait(decision.delay)
            error = ApiError(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted (kubeemu: "
                "injected fault)",
                {"retryAfterSeconds": 1},
            )
            try:
                self._send(504, error.status(), close=True)
                emu.requests._finish(record, 504)
            except OSError:
                self.close_connection = True
        else:
            emu.requests._finish(record, None, "reset")
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


# ---------------------------------------------------------------------------- emulator


class Served:
    """The lifecycle the emulator and the kit's proxy (``kubeproxy``) share: an HTTP server
    on loopback answered by a thread, the request counter and fault injector its handlers
    use, and a stop that leaves nothing serving (kept-alive connections and held faults
    included). A subclass binds with ``_listen``, adjusts the socket if it must, then
    ``_serve``s."""

    server_class: ClassVar[type[_Server]] = _Server
    thread_name: ClassVar[str] = "kubeemu-http"

    def _listen(self, host: str, port: int, faults: Faults | None = None) -> None:
        self.requests = RequestCounter()
        self._injector = _FaultInjector(faults or Faults())
        self._stopping = threading.Event()
        self._server = self.server_class((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits up to one poll interval
            name=self.thread_name,
            daemon=True,
        )

    def _serve(self) -> None:
        self._thread.start()

    def _closing(self) -> None:
        """What to end before the server stops (the emulator's store)."""

    def stop(self) -> None:
        """Stop serving; idempotent. Held faults and open watches end at once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._closing()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=2)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def faults(self) -> Faults:
        return self._injector.faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        self._injector = _FaultInjector(value or Faults())


class Emulator(Served):
    """A running emulator: an HTTP server on ``url`` in front of a ``Store``.

    Create it with ``start()``. Direct store access (``get``, ``objects``, ``create``,
    ``patch_object``, ``delete_object``) bypasses HTTP, the counter and the faults: use it to
    arrange state and to simulate drift made behind the portal's back.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        discovery: Path = DISCOVERY_FILE,
        validate: bool = True,
        auto_ready: bool = True,
        ready_delay: float = 0.05,
        namespace_delete_delay: float = 0.05,
        faults: Faults | None = None,
    ) -> None:
        if validate and not _Schemas.available():
            raise RuntimeError("validate=True needs the kubernetes-validate package")
        self.catalog = Catalog.from_discovery(discovery)
        self.store = Store(
            self.catalog,
            validate=validate,
            auto_ready=auto_ready,
            ready_delay=ready_delay,
            namespace_delete_delay=namespace_delete_delay,
        )
        self.kubelet: Any = None  # tests/kit/kubelet.py, where a test lets pods run
        self._tokens: dict[str, tuple[str, float]] = {}  # TokenRequest: token -> (user, expiry)
        self._tokens_lock = threading.Lock()
        self._listen(host, port, faults)
        self._serve()

    # -- lifecycle

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _closing(self) -> None:
        self.store.close()

    # -- knobs

    @property
    def auto_ready(self) -> bool:
        """Whether workloads become ready ``ready_delay`` seconds after each write. Turning it
        off leaves them reporting unavailable pods, to test waiting and timeouts."""
        return self.store.auto_ready

    @auto_ready.setter
    def auto_ready(self, value: bool) -> None:
        self.store.auto_ready = value

    def set_ready(
        self, kind: str, name: str, namespace: str | None = None, *, ready: bool = True
    ) -> Obj:
        """Force a Deployment/StatefulSet/ReplicaSet/DaemonSet ready or not ready now; the
        choice sticks for that object, whatever ``auto_ready`` says."""
        info = self.catalog.resolve(kind)
        return self.store.set_ready(info, self._namespace(info, namespace), name, ready)

    def add_resource(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        namespaced: bool = True,
        *,
        subresources: Iterable[str] = ("status",),
        short_names: Iterable[str] = (),
        singular: str | None = None,
    ) -> ResourceInfo:
        """Serve a custom resource without posting its CRD (which also works)."""
        return self.catalog.add(
            ResourceInfo(
                group=group,
                version=version,
                plural=plural,
                kind=kind,
                namespaced=namespaced,
                singular=singular or kind.lower(),
                short_names=tuple(short_names),
                subresources=frozenset(subresources),
                custom=True,
            )
        )

    def add_upstream_kinds(self) -> None:
        """Serve Flux's, Cluster API's and CAAPH's kinds (``UPSTREAM_KINDS``)."""
        for kind in UPSTREAM_KINDS:
            self.add_resource(*kind)

    def add_hook(self, hook: WriteHook) -> None:
        """Call ``hook(store, event)`` after every API create/update/patch, under the store
        lock, to play a controller the emulator lacks (e.g. set an Ingress status)."""
        self.store.hooks.append(hook)

    # -- direct store access

    def _namespace(self, info: ResourceInfo, namespace: str | None) -> str | None:
        if not info.namespaced:
            return None
        return namespace or "default"

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object or None; ``kind`` as kubectl names it (``Deployment``,
        ``deployments.apps``, ``cm``...); namespaced kinds default to ``default``."""
        info = self.catalog.resolve(kind)
        return self.store.find(info, self._namespace(info, namespace), name)

    def objects(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> list[Obj]:
        """Stored objects, of one kind or all, in one namespace or all."""
        info = self.catalog.resolve(kind) if kind else None
        return self.store.items(info, namespace, label_selector)

    def create(self, manifest: Obj, *, namespace: str | None = None) -> Obj:
        """Create through the same validation as a POST (raises ApiError)."""
        info = self.catalog.by_kind(manifest["apiVersion"], manifest["kind"])
        ns = namespace or (manifest.get("metadata") or {}).get("namespace")
        return self.store.create(info, self._namespace(info, ns), manifest)

    def patch_object(self, kind: str, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        """Merge-patch a stored object, e.g. to simulate someone scaling or relabelling it."""
        info = self.catalog.resolve(kind)
        ns = self._namespace(info, namespace)
        obj, _ = self.store.patch(info, ns, name, "application/merge-patch+json", patch)
        return obj

    def delete_object(
        self, kind: str, name: str, namespace: str | None = None, *, cascade: bool = True
    ) -> Obj | None:
        """Remove an object at once, ignoring finalizers and Terminating (drift: someone
        deleted it by hand). A namespace takes its contents with it. Watches see DELETED."""
        info = self.catalog.resolve(kind)
        ns = self._namespace(info, namespace)
        with self.store.lock:
            key = self.store._key(info, ns, name)
            if key not in self.store._objects:
                return None
            if key[:2] == ("", "namespaces"):
                for content in [k for k in self.store._objects if k[2] == name]:
                    if content in self.store._objects:
                        self.store._remove(content, orphan=not cascade)
            return self.store._remove(key, orphan=not cascade)

    # -- clients

    def kubeconfig(
        self, path: str | os.PathLike[str], *, namespace: str = "default", context: str = "kubeemu"
    ) -> Path:
        """Write a kubeconfig for this emulator (for kubectl or ``load_kube_config``)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return out

    def client_configuration(self, **attributes: Any) -> Configuration:
        """A ``kubernetes.client.Configuration`` aimed at this emulator (attributes set on it,
        e.g. ``retries=False``)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        for key, value in attributes.items():
            setattr(cfg, key, value)
        return cfg

    # -- HTTP dispatch

    def _dispatch(
        self, method: str, route: _Route, query: Mapping[str, str], content_type: str, raw: bytes
    ) -> _Response:
        try:
            if route.discovery:
                try:
                    return self._discovery(route.pattern)
                except ApiError as exc:
                    if exc.code != 404:
                        raise
                    # an unserved group version is not a resource: no Status body
                    return _Response(404, "404 page not found\n", "text/plain; charset=utf-8")
            if not route.plural:
                raise _no_resource()
            return self._resource(
                method, route, query, content_type, _decode_body(raw, content_type)
            )
        except ApiError as exc:
            return _Response(exc.code, exc.status())
        except Exception as exc:  # a bug in the emulator: answer like the apiserver would
            traceback.print_exc()
            return _Response(500, ApiError(500, "InternalError", f"kubeemu: {exc!r}").status())

    def _token_request(self, namespace: str | None, name: str, body: Any) -> Obj:
        """TokenRequest (authentication.k8s.io/v1) for a ServiceAccount, as a real server
        answers it: the account must exist, at least ten minutes, and the token is a JWT whose
        subject is the account (its signature means nothing here)."""
        info = self.catalog.lookup("", "v1", "serviceaccounts")
        account = self.store.find(info, namespace, name)
        if account is None:
            raise _not_found("", "serviceaccounts", name)
        spec = dict((body or {}).get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise ApiError(422, "Invalid", f'TokenRequest.authentication.k8s.io "{name}" is '
                           f"invalid: spec.expirationSeconds: Invalid value: {seconds}: may "
                           "not specify a duration less than 10 minutes")
        user = f"system:serviceaccount:{namespace}:{name}"
        expires = int(time.time()) + seconds

        def part(value: Obj) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        token = ".".join([part({"alg": "RS256", "kid": "kubeemu"}), part({
            "sub": user, "exp": expires, "iat": int(time.time()),
            "aud": spec.get("audiences") or ["https://kubernetes.default.svc"],
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
            "jti": uuid.uuid4().hex}), part({"sig": uuid.uuid4().hex})])
        with self._tokens_lock:
            self._tokens[token] = (user, float(expires), namespace or "", name,
                                   account["metadata"].get("uid", ""))
        stamp = datetime.datetime.fromtimestamp(expires, datetime.UTC)
        return {
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": spec.get("audiences") or ["https://kubernetes.default.svc"],
                     "expirationSeconds": seconds, "boundObjectRef": None},
            "status": {"token": token,
                       "expirationTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }

    def token_user(self, authorization: str) -> str | None:
        """The ServiceAccount a bearer token minted here names, while it has not expired."""
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        with self._tokens_lock:
            found = self._tokens.get(token)
        return found[0] if found and found[1] > time.time() else None

    def token_refused(self, authorization: str) -> bool:
        """A token minted here that a real server would no longer take: expired, or its
        ServiceAccount deleted since (a token is bound to the account's uid)."""
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        with self._tokens_lock:
            found = self._tokens.get(token)
        if found is None:
            return False  # not one of ours: the emulator authenticates nothing else
        _, expires, namespace, name, uid = found
        account = self.store.find(self.catalog.lookup("", "v1", "serviceaccounts"),
                                  namespace, name)
        return expires <= time.time() or account is None or (
            account["metadata"].get("uid", "") != uid)

    def _discovery(self, path: str) -> _Response:
        parts = [p for p in path.split("/") if p]
        gvs = self.catalog.group_versions()
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return _Response(200, "ok", "text/plain")
        if parts == ["version"]:
            return _Response(200, SERVER_VERSION)
        if parts == ["api"]:
            return _Response(
                200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            )
        if parts == ["apis"]:
            return _Response(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [_api_group(g, vs) for g, vs in gvs.items() if g],
                },
            )
        if len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in gvs or not parts[1]:
                raise _no_resource()
            return _Response(
                200, {"kind": "APIGroup", "apiVersion": "v1", **_api_group(parts[1], gvs[parts[1]])}
            )
        if len(parts) == 2 and parts[0] == "api":
            return _Response(200, self.catalog.resource_list("", parts[1]))
        if len(parts) == 3 and parts[0] == "apis":
            return _Response(200, self.catalog.resource_list(parts[1], parts[2]))
        if parts == ["openapi", "v3"]:
            paths = {}
            for group, versions in gvs.items():
                for version in versions:
                    rel = f"apis/{group}/{version}" if group else f"api/{version}"
                    paths[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash=0"}
            return _Response(200, {"paths": paths})
        if parts[:2] == ["openapi", "v3"] and len(parts) >= 4:
            group, version = ("", parts[3]) if parts[2] == "api" else (parts[3], parts[4])
            return _Response(200, self._openapi_stub(group, version))
        raise _no_resource()

    def _openapi_stub(self, group: str, version: str) -> Obj:
        paths: Obj = {}
        for info in self.catalog.all():
            if (info.group, info.version) != (group, version):
                continue
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            ns = "/namespaces/{namespace}" if info.namespaced else ""
            paths[f"{prefix}{ns}/{info.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": {
                        "group": group,
                        "version": version,
                        "kind": info.kind,
                    },
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": "string"}}
                        for n in ("dryRun", "fieldManager", "fieldValidation", "force")
                    ],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "kubeemu", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths,
            "components": {},
        }

    def _resource(
        self, method: str, route: _Route, query: Mapping[str, str], content_type: str, body: Any
    ) -> _Response:
        info = self.catalog.lookup(route.group, route.version, route.plural)
        store, ns, name, sub = self.store, route.namespace, route.name, route.subresource
        scoped_verbs = ("get", "create", "update", "patch", "delete")
        if info.namespaced and ns is None and route.verb in scoped_verbs:
            raise _no_resource()
        if not info.namespaced and ns is not None:
            raise _no_resource()
        dry_run = query.get("dryRun") == "All" or (
            isinstance(body, dict) and "All" in (body.get("dryRun") or [])
        )
        strict = query.get("fieldValidation") == "Strict"
        if sub is not None:
            if sub not in info.subresources or name is None:
                raise _no_resource()
            if sub == "token" and info.plural == "serviceaccounts" and route.verb == "create":
                return _Response(201, self._token_request(ns, name, body))
            if route.verb not in ("get", "update", "patch"):
                raise _not_allowed()
            if sub == "scale":
                if route.verb == "get":
                    return _Response(200, store.scale(info, ns, name))
                ctype = content_type if route.verb == "patch" else None
                return _Response(200, store.set_scale(info, ns, name, ctype, body, dry_run=dry_run))
        elif route.verb not in info.verbs:
            raise _not_allowed()
        if route.verb == "watch":
            timeout = min(float(query.get("timeoutSeconds") or 1800), 1800)
            events = store.watch(info, ns, name, query, time.monotonic() + timeout)
            return _Response(200, None, stream=events)
        if route.verb == "list":
            return _Response(200, store.list(info, ns, query))
        if route.verb == "get":
            assert name is not None
            return _Response(200, store.get(info, ns, name))
        if route.verb == "create" and route.group == "authorization.k8s.io":
            # No authorization here: every access review is allowed, and nothing is stored.
            return _Response(201, {**body, "status": {
                "allowed": True, "reason": "kubeemu authorizes every request"}})
        if route.verb == "create":
            return _Response(201, store.create(info, ns, body, strict=strict, dry_run=dry_run,
                                               manager=query.get("fieldManager")))
        if route.verb == "deletecollection":
            options = body if isinstance(body, dict) else {}
            if "propagationPolicy" in query:
                options = {**options, "propagationPolicy": query["propagationPolicy"]}
            return _Response(
                200, store.delete_collection(info, ns, query, options, dry_run=dry_run)
            )
        assert name is not None
        if route.verb == "update":
            return _Response(
                200,
                store.update(info, ns, name, body, subresource=sub, strict=strict,
                             dry_run=dry_run, manager=query.get("fieldManager")),
            )
        if route.verb == "patch":
            obj, code = store.patch(
                info,
                ns,
                name,
                content_type,
                body,
                subresource=sub,
                strict=strict,
                dry_run=dry_run,
                field_manager=query.get("fieldManager"),
                force=_flag(query, "force"),
            )
            return _Response(code, obj)
        if route.verb == "delete":
            options = body if isinstance(body, dict) else {}
            if "propagationPolicy" in query:
                options = {**options, "propagationPolicy": query["propagationPolicy"]}
            return _Response(200, store.delete(info, ns, name, options, dry_run=dry_run))
        raise _not_allowed()


def _not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def _api_group(group: str, versions: list[str]) -> Obj:
    return {
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
        "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
    }


def admit_ingresses(store: Store, event: WriteEvent) -> None:
    """A write hook that plays an ingress controller: every new Ingress is admitted at once
    (``status.loadBalancer.ingress``), as ingress-nginx reports it."""
    if event.info.plural == "ingresses" and event.type == "ADDED":
        store.patch(
            event.info, event.namespace, event.name, "application/merge-patch+json",
            {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}},
            subresource="status",
        )


def _list_items(info: ResourceInfo, items: list[Obj]) -> list[Obj]:
    """A real server leaves `kind` and `apiVersion` off the items of a list of built-in kinds
    (they are stated once, on the list); custom resources keep them."""
    if info.custom:
        return items
    for item in items:
        item.pop("kind", None)
        item.pop("apiVersion", None)
    return items


def serve_endpoints(store: Store, event: WriteEvent) -> None:
    """A write hook that plays the EndpointSlice controller for pods that are ready at once:
    every new Service gets a slice with one ready endpoint, labelled like the Service (the
    real controller copies the Service's labels onto its slices)."""
    if event.info.plural != "services" or event.type != "ADDED" or event.info.group:
        return
    spec = event.object.get("spec") or {}
    if not spec.get("selector"):
        return
    name = event.name
    labels = {**(event.object["metadata"].get("labels") or {}),
              "kubernetes.io/service-name": name,
              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    info = store.catalog.by_kind("discovery.k8s.io/v1", "EndpointSlice")
    if store.find(info, event.namespace, f"{name}-emu") is not None:
        return  # a Service deleted and created again: its slice is still there
    store.create(info, event.namespace, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-emu", "namespace": event.namespace, "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.10"], "conditions": {"ready": True}}],
        "ports": [{"name": p.get("name", ""), "port": p.get("targetPort", p.get("port")),
                   "protocol": "TCP"} for p in spec.get("ports") or []],
    })


def start(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    discovery: Path = DISCOVERY_FILE,
    validate: bool = True,
    auto_ready: bool = True,
    ready_delay: float = 0.05,
    namespace_delete_delay: float = 0.05,
    faults: Faults | None = None,
) -> Emulator:
    """Start an emulator on a background thread (port 0 picks a free port); it is also a
    context manager that stops it."""
    return Emulator(
        host=host,
        port=port,
        discovery=discovery,
        validate=validate,
        auto_ready=auto_ready,
        ready_delay=ready_delay,
        namespace_delete_delay=namespace_delete_delay,
        faults=faults,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.kit.kubeemu``: serve until SIGINT/SIGTERM, for kubectl or a browser."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.kit.kubeemu",
        description="An in-memory Kubernetes API server for tests.",
    )
    parser.add_argument("--port", type=int, default=18002, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the emulator here")
    parser.add_argument("--no-auto-ready", action="store_true", help="workloads never get ready")
    parser.add_argument("--ready-delay", type=float, default=0.05)
    parser.add_argument("--no-validate", action="store_true", help="skip schema validation")
    parser.add_argument(
        "--cluster-api", action="store_true", help="serve cluster.x-k8s.io Clusters"
    )
    parser.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="GROUP/VERSION/PLURAL/KIND[/cluster]",
        help="serve a custom resource (repeatable)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default="500", help="comma list of 500,timeout,reset")
    parser.add_argument("--fault-seed", type=int)
    parser.add_argument("--fault-delay", type=float, default=2.0)
    parser.add_argument("--fault-mutating-only", action="store_true")
    args = parser.parse_args(argv)
    faults = Faults(
        rate=args.fault_rate,
        kinds=tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip()),
        seed=args.fault_seed,
        delay=args.fault_delay,
        verbs=MUTATING_VERBS if args.fault_mutating_only else None,
    )
    emu = start(
        args.port,
        host=args.host,
        validate=not args.no_validate,
        auto_ready=not args.no_auto_ready,
        ready_delay=args.ready_delay,
        faults=faults,
    )
    if args.cluster_api:
        emu.add_upstream_kinds()
    for spec in args.resource:
        parts = spec.split("/")
        if len(parts) not in (4, 5):
            parser.error(f"--resource {spec!r}: expected GROUP/VERSION/PLURAL/KIND[/cluster]")
        emu.add_resource(*parts[:4], namespaced=len(parts) == 4)
    if args.kubeconfig:
        emu.kubeconfig(args.kubeconfig)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"kubeemu listening on {emu.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
