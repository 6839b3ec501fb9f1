"""The cluster state: the resource catalog (what is served), selectors, schema validation,
and the ``Store`` of objects with its verbs, server-side apply's field ownership and the
tiny controllers (namespaces, finalizers, owners, workload readiness)."""

from __future__ import annotations

import base64
import copy
import datetime
import functools
import importlib.util
import itertools
import json
import random
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from . import admission
from .errors import (
    ApiError,
    Obj,
    bad_request,
    cause,
    conflict,
    forbidden,
    invalid,
    no_resource,
    not_found,
    qualified,
    required,
    unsupported_media,
)
from .patch import json_patch, merge_patch, strategic_merge

ObjKey = tuple[str, str, str | None, str]  # group, plural, namespace (None if cluster-scoped), name
FieldPath = tuple[str, ...]
# What a real kube-apiserver served, recorded by `make record-contracts` (tests/kit/contracts).
DISCOVERY_FILE = Path(__file__).parent.parent / "contracts" / "discovery.json"
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
# Groups served from the discovery file that are CRDs on a real cluster (no strategic merge).
CRD_GROUPS = frozenset({"gateway.networking.k8s.io"})
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
INITIAL_STATUS: Mapping[tuple[str, str], Obj] = {
    ("apps", "statefulsets"): {"replicas": 0, "availableReplicas": 0},
    ("apps", "replicasets"): {"replicas": 0},
    ("apps", "daemonsets"): {"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                             "numberMisscheduled": 0, "numberReady": 0},
    ("autoscaling", "horizontalpodautoscalers"): {"currentReplicas": 0, "desiredReplicas": 0},
    ("", "pods"): {"phase": "Pending"},
    ("", "persistentvolumeclaims"): {"phase": "Pending"},
    ("", "services"): {"loadBalancer": {}},
}
SPEC_DEFAULTS: Mapping[tuple[str, str], Obj] = {
    ("apps", "deployments"): {
        "replicas": 1, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}},
    ("apps", "statefulsets"): {
        "replicas": 1, "revisionHistoryLimit": 10, "podManagementPolicy": "OrderedReady",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}},
}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def flag(query: Mapping[str, str], name: str) -> bool:
    """Boolean query parameters: Go clients send ``true``, the Python client ``True``."""
    return query.get(name, "").lower() in ("true", "1")


# ---------------------------------------------------------------------------- selectors


@functools.lru_cache(maxsize=256)
def _requirements(selector: str) -> tuple[str, ...]:
    """A selector's requirements, parsed once per selector (a list asks per object)."""
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
    return tuple(parts)


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
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch",
                              "update", "watch")
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return qualified(self.group, self.plural)


class Catalog:
    """The served resources, in discovery order (the first version of a group is preferred)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._infos: dict[tuple[str, str, str], ResourceInfo] = {}

    @classmethod
    def from_discovery(cls, path: Path) -> Catalog:
        catalog = cls()
        for doc in json.loads(path.read_text(encoding="utf-8"))["groupVersions"]:
            group, _, version = doc["groupVersion"].rpartition("/")
            for r in sorted(doc["resources"], key=lambda r: "/" in r["name"]):  # parents first
                name: str = r["name"]
                if "/" in name:
                    parent, sub = name.split("/", 1)
                    info = catalog._infos.get((group, version, parent))
                    if info is not None:
                        catalog._infos[(group, version, parent)] = replace(
                            info, subresources=info.subresources | {sub})
                    continue
                catalog._infos[(group, version, name)] = ResourceInfo(
                    group=group, version=version, plural=name, kind=r["kind"],
                    namespaced=r["namespaced"], singular=r.get("singularName") or r["kind"].lower(),
                    verbs=tuple(r.get("verbs") or ()), short_names=tuple(r.get("shortNames") or ()),
                    categories=tuple(r.get("categories") or ()), custom=group in CRD_GROUPS)
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
            raise no_resource()
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


# ---------------------------------------------------------------------------- schemas


class _Schemas:
    """Validates manifests with kubernetes-validate's JSON schemas.

    ``kubernetes_validate.validate()`` re-reads a 1.8 MB definitions file on every call (about
    23 ms); a compiled ``Draft202012Validator`` per (kind, apiVersion, strictness) validates in
    about 0.5 ms, so validators are built once per process and shared by all emulators.
    """

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("kubernetes_validate") is not None

    @staticmethod
    @functools.cache
    def _definitions(strict: bool) -> Any:
        import referencing
        from kubernetes_validate import utils

        version = utils.latest_version()
        return referencing.Resource.from_contents(utils.schema_contents(
            f"kubernetes-json-schema/v{version}-local{'-strict' if strict else ''}"
            "/_definitions.json", version))

    @staticmethod
    @functools.cache
    def validator(kind: str, api_version: str, strict: bool) -> Any:
        import jsonschema
        import referencing
        from kubernetes_validate import utils

        version = utils.latest_version()
        directory = f"kubernetes-json-schema/v{version}-local{'-strict' if strict else ''}"
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = utils.schema_contents(
                f"{directory}/{kind.lower()}-{group_version}.json", version)
        except FileNotFoundError:
            return None
        registry = _Schemas._definitions(strict) @ (
            referencing.Resource.from_contents(schema) @ referencing.Registry())
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
                causes.append(cause(f"{path}.{name}" if path else name,
                                    f"Required value: {error.message}", "FieldValueRequired"))
            else:
                causes.append(cause(path or "<root>", f"Invalid value: {error.message}"))
        return causes


def _field_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _strict_error(unknown: list[str]) -> ApiError:
    # fieldValidation=Strict answers unknown fields with 400, not 422
    return bad_request("strict decoding error: "
                       + ", ".join(f'unknown field "{f}"' for f in unknown))


# ---------------------------------------------------------------------------- field ownership

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


def _drop_path(obj: Obj, path: FieldPath) -> None:
    parent = obj
    for part in path[:-1]:
        parent = parent.get(part)
        if not isinstance(parent, dict):
            return
    parent.pop(path[-1], None)


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
                        not self._queue or self._queue[0][0] > time.monotonic()):
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
class Event:
    """One entry of the watch event log."""

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

    def __init__(self, catalog: Catalog, *, validate: bool = True, auto_ready: bool = True,
                 ready_delay: float = 0.05, namespace_delete_delay: float = 0.05) -> None:
        self.catalog = catalog
        self.validate = validate
        self.ready_delay = ready_delay
        self.namespace_delete_delay = namespace_delete_delay
        self.hooks: list[WriteHook] = []
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._scheduler = _Scheduler()
        self._auto_ready = auto_ready
        self._ready_overrides: dict[ObjKey, bool] = {}
        # Server-side apply's field ownership: per object, manager -> (operation, leaf paths).
        self._fields: dict[ObjKey, dict[str, tuple[str, set[FieldPath]]]] = {}
        self.rv = 1
        self._objects: dict[ObjKey, Obj] = {}
        self.events: list[Event] = []
        self._cleaning_namespaces: set[str] = set()
        self._addresses = itertools.count(10)
        self.closed = False
        namespaces = catalog.lookup("", "v1", "namespaces")
        for ns in SYSTEM_NAMESPACES:
            self.create(namespaces, None, {"metadata": {"name": ns}})

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()
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
                raise not_found(info.group, info.plural, name)
            self._ready_overrides[key] = ready
            self._rollout(key)
            return self.view(info, self._objects[key])

    # -- helpers

    def _key(self, info: ResourceInfo, namespace: str | None, name: str) -> ObjKey:
        return (info.group, info.plural, namespace if info.namespaced else None, name)

    def view(self, info: ResourceInfo, obj: Obj) -> Obj:
        # Stored objects are JSON: a round trip copies them several times faster than
        # deepcopy, which counts when a list returns thousands.
        out = json.loads(json.dumps(obj))
        out["apiVersion"] = info.api_version
        return out

    def _log(self, key: ObjKey, event_type: str, obj: Obj, old: Obj | None) -> None:
        self.events.append(Event(self.rv, key[0], key[1], event_type, obj, old))
        self.changed.notify_all()

    def _put(self, key: ObjKey, obj: Obj, *, new: bool = False) -> Obj:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        if new:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta.setdefault("generation", 1)
        old = self._objects.get(key)
        self._objects[key] = obj
        self._log(key, "ADDED" if new else "MODIFIED", copy.deepcopy(obj), copy.deepcopy(old))
        return obj

    def _remove(self, key: ObjKey, *, orphan: bool = False) -> Obj:
        removed = self._objects.pop(key)
        self._ready_overrides.pop(key, None)
        self._fields.pop(key, None)
        self.rv += 1
        obj = copy.deepcopy(removed)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._log(key, "DELETED", obj, None)
        if key[:2] == CRDS:
            self._unregister_crd(removed)
        uid = removed["metadata"].get("uid")
        dependents = [k for k, o in self._objects.items() if any(
            r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]
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
        if obj["metadata"].get("deletionTimestamp"):
            return obj, False
        namespace = key[:2] == ("", "namespaces")
        if not namespace and not obj["metadata"].get("finalizers"):
            return self._remove(key, orphan=orphan), True
        obj = copy.deepcopy(obj)
        obj["metadata"]["deletionTimestamp"] = now()
        obj["metadata"]["deletionGracePeriodSeconds"] = 0
        if namespace:
            obj["status"] = {"phase": "Terminating"}
            name = key[3]
            self._scheduler.call_later(self.namespace_delete_delay,
                                       lambda: self._clean_namespace(name))
        return self._put(key, obj), False

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
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"unable to create new content in namespace "
                           f"{namespace} because it is being terminated", {"causes": [
                               {"reason": "NamespaceTerminating", "field": "metadata.namespace"}]})

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
            encoded = {k: base64.b64encode(str(v).encode()).decode()
                       for k, v in string_data.items()}
            obj["data"] = {**(obj.get("data") or {}), **encoded}
        elif group == "" and plural == "services":
            self._service_defaults(obj.setdefault("spec", {}), (old or {}).get("spec") or {})
        elif group == "" and plural == "resourcequotas":
            hard = (spec or {}).get("hard") or {}
            obj["status"] = {"hard": dict(hard), "used": dict.fromkeys(hard, "0")}
        elif (group, plural) in SPEC_DEFAULTS and isinstance(spec, dict):
            for field, value in SPEC_DEFAULTS[(group, plural)].items():
                spec.setdefault(field, copy.deepcopy(value))
        elif (group, plural) == CRDS:
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
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p
                     for p in old_spec.get("ports") or []}
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
            if spec["type"] in ("NodePort", "LoadBalancer") and not port.get("nodePort"):
                previous = old_ports.get((port.get("port"), port["protocol"]), {})
                port["nodePort"] = previous.get("nodePort") or 30000 + next(self._addresses) % 2768

    def _crd_status(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        stamp = now()
        crd["status"] = {
            "acceptedNames": spec.get("names") or {}, "storedVersions": storage,
            "conditions": [{"type": t, "status": "True", "reason": r, "message": "",
                            "lastTransitionTime": stamp}
                           for t, r in (("NamesAccepted", "NoConflicts"),
                                        ("Established", "InitialNamesAccepted"))],
        }

    def _register_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec.get("versions") or []:
            if version.get("served", True):
                self.catalog.add(ResourceInfo(
                    group=spec["group"], version=version["name"], plural=names["plural"],
                    kind=names["kind"], namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    singular=names.get("singular") or names["kind"].lower(),
                    short_names=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    subresources=frozenset((version.get("subresources") or {}).keys()),
                    custom=True))

    def _unregister_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        self.catalog.remove(group, plural)
        for key in [k for k in self._objects if k[:2] == (group, plural)]:
            self._remove(key)

    def _validate(self, info: ResourceInfo, obj: Obj, strict: bool) -> None:
        schemas = self.validate and not info.custom
        causes = admission.label_causes(obj["metadata"].get("labels"))
        upstream = admission.UPSTREAM_SCHEMAS.get((info.group, info.plural))
        if upstream is not None and self.validate:
            unknown = admission.undeclared({k: v for k, v in obj.items() if k == "spec"}, upstream)
            if strict and unknown:
                raise _strict_error(unknown)
            admission.prune(obj, {**dict.fromkeys(obj, admission.ANY), **upstream})
            causes += admission.upstream_causes(info, obj)
        if schemas:
            causes += _Schemas.causes(obj)
        if (info.group, info.plural) == ("networking.k8s.io", "ingresses"):
            causes += admission.ingress_host_causes(obj)
        if causes:
            raise invalid(info.kind, obj["metadata"].get("name", ""), causes)
        if strict and schemas and (unknown := _Schemas.unknown_fields(obj)):
            raise _strict_error(unknown)

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
        _, mine = owners.get(manager, ("Update", set()))
        owners[manager] = ("Update", (mine | changed) & new.keys())

    def _apply_ownership(self, info: ResourceInfo, key: ObjKey, manager: str, applied: Obj,
                         current: Obj, force: bool) -> set[FieldPath]:
        """Check an apply against the other managers' fields (409 unless forced) and hand the
        applied fields to `manager`. Returns the fields it owned alone and no longer applies,
        which the apply removes."""
        wanted, current_fields = _leaf_paths(applied), _leaf_paths(current)
        owners = self._fields.setdefault(key, {})
        conflicts = [(other, op, path) for other, (op, paths) in owners.items()
                     if other != manager for path in sorted(paths & wanted.keys())
                     if current_fields.get(path, _MISSING) != wanted[path]]
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{o}"'
                       + (f" using {info.api_version}" if op == "Update" else ""),
                       "field": "".join(f".{part}" for part in p)} for o, op, p in conflicts]
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

    # -- controllers

    def _after_write(self, info: ResourceInfo, key: ObjKey, event_type: str, *,
                     rollout: bool = True) -> None:
        if rollout and info.group == "apps" and info.plural in WORKLOADS:
            self._schedule_rollout(key)
        if self.hooks:
            event = WriteEvent("ADDED" if event_type == "ADDED" else "MODIFIED", info, key[2],
                               key[3], self.view(info, self._objects[key]))
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
            admission.admit_pod(self._objects, namespace, {
                "metadata": {"name": pod_name}, "spec": template.get("spec") or {}})
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
                    "firstTimestamp": now(), "lastTimestamp": now(), "count": 1})
            return True
        return False

    # -- verbs

    def create(self, info: ResourceInfo, namespace: str | None, body: Any, *,
               strict: bool = False, dry_run: bool = False, manager: str | None = None,
               applied: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        namespace = namespace if info.namespaced else None
        if info.namespaced and namespace is None:
            namespace = meta.get("namespace") or "default"
        if obj.get("apiVersion") not in (None, "", info.api_version):
            raise bad_request(f"the API version in the data ({obj['apiVersion']}) does not "
                              f"match the expected API version ({info.api_version})")
        if obj.get("kind") not in (None, "", info.kind):
            raise bad_request(f"the kind in the data ({obj['kind']}) does not match the "
                              f"expected kind ({info.kind})")
        if namespace and meta.get("namespace") not in (None, "", namespace):
            raise _namespace_mismatch()
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
            meta["name"] = meta["generateName"] + suffix
        name = meta.get("name")
        if not name:
            raise required(info.kind, "metadata.name", "name or generateName is required")
        if problem := admission.name_error(info, name):
            raise invalid(info.kind, name,
                          [cause("metadata.name", f'Invalid value: "{name}": {problem}')])
        with self.lock:
            self._check_namespace(namespace)
            key = self._key(info, namespace, name)
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{info.qualified} "{name}" already exists',
                               {"name": name, "group": info.group, "kind": info.plural})
            if namespace:
                meta["namespace"] = namespace
            obj["apiVersion"], obj["kind"] = info.api_version, info.kind
            for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp",
                      "generation"):
                meta.pop(k, None)
            if "status" in info.subresources:  # status is server-owned
                obj["status"] = copy.deepcopy(INITIAL_STATUS.get((info.group, info.plural), {}))
            is_crd = (info.group, info.plural) == CRDS
            if is_crd:
                admission.check_crd(obj)
            self._defaults(info, obj, None)
            self._validate(info, obj, strict)
            if (info.group, info.plural) == ("", "pods"):
                admission.admit_pod(self._objects, namespace, obj)
            if dry_run:
                return self.view(info, obj)
            if is_crd:
                self._register_crd(obj)
            self._put(key, obj, new=True)
            if applied:
                self._fields[key] = {manager or "unknown": ("Apply", set(_leaf_paths(body)))}
            else:
                self._own(key, manager or "unknown", None, obj)
            self._after_write(info, key, "ADDED")
            return self.view(info, obj)

    def get(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        obj = self.find(info, namespace, name)
        if obj is None:
            raise not_found(info.group, info.plural, name)
        return obj

    def find(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.get(self._key(info, namespace, name))
            return None if obj is None else self.view(info, obj)

    def items(self, info: ResourceInfo | None = None, namespace: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None
              ) -> list[Obj]:
        """Matching objects sorted by (namespace, name), as etcd's key order gives them."""
        with self.lock:
            out = []
            # Only the kind's keys are sorted, as etcd ranges over one prefix: a list costs
            # what that kind holds, not what the whole store does.
            keys = [k for k in self._objects
                    if (info is None or k[:2] == (info.group, info.plural))
                    and (namespace is None or k[2] == namespace)]
            for key in sorted(keys, key=lambda k: (k[0], k[1], k[2] or "", k[3])):
                obj = self._objects[key]
                if not label_match(label_selector, obj["metadata"].get("labels")):
                    continue
                if not field_match(field_selector, obj):
                    continue
                out.append(self.view(info, obj) if info else copy.deepcopy(obj))
            return out

    def list(self, info: ResourceInfo, namespace: str | None, query: Mapping[str, str]) -> Obj:
        with self.lock:
            items = self.items(info, namespace, query.get("labelSelector"),
                               query.get("fieldSelector"))
            rv = str(self.rv)
        meta: Obj = {"resourceVersion": rv}
        if token := query.get("continue"):
            try:
                after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
            except (ValueError, KeyError, TypeError) as exc:
                raise bad_request("invalid continue token") from exc
            items = [i for i in items if _sort_key(i) > tuple(after)]
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as exc:
            raise bad_request("limit must be an integer") from exc
        if 0 < limit < len(items):
            items, rest = items[:limit], len(items) - limit
            last = list(_sort_key(items[-1]))
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"after": last}).encode()).decode()
            meta["remainingItemCount"] = rest
        if not info.custom:  # a real server leaves these off items of built-in kinds
            items = [{k: v for k, v in i.items() if k not in ("kind", "apiVersion")}
                     for i in items]
        return {"kind": f"{info.kind}List", "apiVersion": info.api_version, "metadata": meta,
                "items": items}

    def update(self, info: ResourceInfo, namespace: str | None, name: str, body: Any, *,
               subresource: str | None = None, strict: bool = False, dry_run: bool = False,
               manager: str | None = None) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        with self.lock:
            old = self.get(info, namespace, name)
            new = self._write(info, namespace, name, copy.deepcopy(body), old, subresource,
                              strict, dry_run)
            if not dry_run and subresource is None:
                self._own(self._key(info, namespace, name), manager or "unknown", old, new)
            return new

    def patch(self, info: ResourceInfo, namespace: str | None, name: str, content_type: str,
              body: Any, *, subresource: str | None = None, strict: bool = False,
              dry_run: bool = False, field_manager: str | None = None, force: bool = False
              ) -> tuple[Obj, int]:
        with self.lock:
            if "apply-patch" in content_type:
                return self._apply(info, namespace, name, body, subresource=subresource,
                                   strict=strict, dry_run=dry_run, manager=field_manager,
                                   force=force)
            old = self.get(info, namespace, name)
            if "json-patch" in content_type:
                new = json_patch(old, body)
            elif "strategic-merge-patch" in content_type:
                if info.custom:
                    raise unsupported_media(
                        "application/json-patch+json, application/merge-patch+json, "
                        "application/apply-patch+yaml (strategic merge patch is not "
                        f"supported for {info.qualified})")
                new = strategic_merge(old, body)
            elif "merge-patch" in content_type:
                new = merge_patch(old, body)
            else:
                raise unsupported_media()
            written = self._write(info, namespace, name, new, old, subresource, strict, dry_run)
            if not dry_run and subresource is None:
                self._own(self._key(info, namespace, name), field_manager or "unknown", old,
                          written)
            return written, 200

    def _apply(self, info: ResourceInfo, namespace: str | None, name: str, body: Any, *,
               subresource: str | None, strict: bool, dry_run: bool, manager: str | None,
               force: bool) -> tuple[Obj, int]:
        """Server-side apply: create, or merge and take the applied fields (conflicts: 409)."""
        if not manager:
            raise required("PatchOptions.meta.k8s.io", "fieldManager",
                           "is required for apply patch")
        if not isinstance(body, dict):
            raise bad_request("an apply patch must be an object")
        upstream = admission.UPSTREAM_SCHEMAS.get((info.group, info.plural))
        if upstream is not None and self.validate and subresource is None and (
                unknown := admission.undeclared({"spec": body.get("spec")}, upstream)):
            # Server-side apply types the patch against the CRD's schema first, and refuses
            # (500, no reason) a field it does not declare, strict or not.
            raise ApiError(500, "", (
                f"failed to create typed patch object ({namespace}/{name}; "
                f"{info.api_version}, Kind={info.kind}): .{unknown[0]}: field not "
                "declared in schema"))
        if self.find(info, namespace, name) is None and subresource is None:
            body = copy.deepcopy(body)
            if body.setdefault("metadata", {}).setdefault("name", name) != name:
                raise bad_request("the name of the object does not match the name on the URL")
            return self.create(info, namespace, body, strict=strict, dry_run=dry_run,
                               manager=manager, applied=True), 201
        old = self.get(info, namespace, name)
        drop: set[FieldPath] = set()
        if subresource is None:
            drop = self._apply_ownership(info, self._key(info, namespace, name), manager, body,
                                         old, force)
        new = merge_patch(old, body) if info.custom else strategic_merge(old, body)
        for path in drop:  # fields this manager applied before, alone, and now not
            _drop_path(new, path)
        return self._write(info, namespace, name, new, old, subresource, strict, dry_run), 200

    def _write(self, info: ResourceInfo, namespace: str | None, name: str, new: Any, old: Obj,
               subresource: str | None, strict: bool, dry_run: bool) -> Obj:
        """The common path of update, patch and apply on an existing object."""
        if not isinstance(new, dict):  # a patch's result (an update's body is checked)
            raise ApiError(422, "Invalid", "the patch did not produce an object")
        key = self._key(info, namespace, name)
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        meta, old_meta = new["metadata"], old["metadata"]
        if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
            raise conflict(info.group, info.plural, name, (
                f'Operation cannot be fulfilled on {info.qualified} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again"))
        if meta.get("name", name) != name:
            raise bad_request("the name of the object does not match the name on the URL")
        if info.namespaced and meta.get("namespace", key[2]) not in (key[2], ""):
            raise _namespace_mismatch()
        for k in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "namespace",
                  "deletionGracePeriodSeconds"):
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
            if admission.without(new, _OWNED) != admission.without(old, _OWNED):
                new["metadata"]["generation"] = old_meta.get("generation", 1) + 1
            if causes := admission.immutable_causes(info, new, old):
                raise invalid(info.kind, name, causes)
        self._defaults(info, new, old)
        self._validate(info, new, strict)
        if dry_run:
            return self.view(info, new)
        if _same_but_version(new, old) and not old_meta.get("deletionTimestamp"):
            # A write that changes nothing is a no-op, as on a real server: same resourceVersion,
            # no watch event. Idempotent clients rely on it.
            return self.view(info, old)
        self._put(key, new)
        if key[:2] == CRDS:
            self._register_crd(new)
        if old_meta.get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            if key[:2] == ("", "namespaces"):
                self._maybe_remove_namespace(name)
                return self.view(info, new)
            return self.view(info, self._remove(key))
        # A status write is the test standing in for the controller: leave it alone.
        self._after_write(info, key, "MODIFIED", rollout=subresource != "status")
        return self.view(info, new)

    def delete(self, info: ResourceInfo, namespace: str | None, name: str,
               options: Mapping[str, Any] | None = None, *, dry_run: bool = False) -> Obj:
        options = options or {}
        with self.lock:
            key = self._key(info, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise not_found(info.group, info.plural, name)
            if key[:2] == ("", "namespaces") and name in UNDELETABLE_NAMESPACES:
                raise forbidden("namespaces", name, "this namespace may not be deleted")
            preconditions = options.get("preconditions") or {}
            for field_name in ("uid", "resourceVersion"):
                expected = preconditions.get(field_name)
                actual = obj["metadata"].get(field_name)
                if expected and expected != actual:
                    raise conflict(info.group, info.plural, name, (
                        f"Precondition failed: {field_name.replace('uid', 'UID')} in "
                        f"precondition: {expected}, {field_name} in object meta: {actual}"))
            if dry_run:
                return self.view(info, obj)
            uid = obj["metadata"].get("uid")
            result, gone = self._delete(key, orphan=options.get("propagationPolicy") == "Orphan")
            if gone and (info.group, info.plural) != ("", "pods"):
                return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": info.group, "kind": info.plural,
                                    "uid": uid}}
            return self.view(info, result)

    def delete_collection(self, info: ResourceInfo, namespace: str | None,
                          query: Mapping[str, str], options: Mapping[str, Any] | None = None, *,
                          dry_run: bool = False) -> Obj:
        with self.lock:
            listed = self.list(info, namespace, {k: v for k, v in query.items() if k != "limit"})
            for item in listed["items"]:
                meta = item["metadata"]
                key = self._key(info, meta.get("namespace"), meta["name"])
                if key in self._objects and not dry_run:
                    self._delete(key, orphan=(options or {}).get("propagationPolicy") == "Orphan")
            return listed

    def scale(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        obj = self.get(info, namespace, name)
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        meta = {k: obj["metadata"][k] for k in
                ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in obj["metadata"]}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta,
                "spec": {"replicas": spec.get("replicas", 1)},
                "status": {"replicas": status.get("replicas", 0),
                           "selector": ",".join(f"{k}={v}" for k, v in match_labels.items())}}

    def set_scale(self, info: ResourceInfo, namespace: str | None, name: str,
                  content_type: str | None, body: Any, *, dry_run: bool = False) -> Obj:
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
                raise bad_request("spec.replicas is required") from exc
            rv = (wanted.get("metadata") or {}).get("resourceVersion") if content_type is None \
                else None
            patch: Obj = {"spec": {"replicas": replicas}}
            if rv:
                patch["metadata"] = {"resourceVersion": rv}
            self.patch(info, namespace, name, "application/merge-patch+json", patch,
                       dry_run=dry_run)
            return self.scale(info, namespace, name)


_OWNED = frozenset({"metadata", "status"})


def _namespace_mismatch() -> ApiError:
    return bad_request("the namespace of the provided object does not match the namespace "
                       "sent on the request")


def _same_but_version(new: Obj, old: Obj) -> bool:
    def strip(obj: Obj) -> Obj:
        meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
        return {**obj, "metadata": meta}

    return strip(new) == strip(old)


def _sort_key(obj: Obj) -> tuple[str, str]:
    return (obj["metadata"].get("namespace") or "", obj["metadata"]["name"])


def _workload_status(plural: str, obj: Obj, ready: bool) -> Obj:
    generation = obj["metadata"].get("generation", 1)
    if plural == "daemonsets":
        n = 1 if ready else 0
        return {"observedGeneration": generation, "currentNumberScheduled": 1,
                "desiredNumberScheduled": 1, "numberMisscheduled": 0, "numberReady": n,
                "numberAvailable": n, "updatedNumberScheduled": 1,
                **({} if ready else {"numberUnavailable": 1})}
    replicas = (obj.get("spec") or {}).get("replicas", 1)
    available = replicas if ready else 0
    status: Obj = {"observedGeneration": generation, "replicas": replicas,
                   "readyReplicas": available, "availableReplicas": available}
    if plural == "replicasets":
        status["fullyLabeledReplicas"] = replicas
        return status
    status["updatedReplicas"] = replicas
    name = obj["metadata"]["name"]
    if plural == "statefulsets":
        status.update(currentReplicas=replicas, currentRevision=f"{name}-1",
                      updateRevision=f"{name}-1")
        return status
    stamp = now()
    if not ready and replicas:
        status["unavailableReplicas"] = replicas
    status["conditions"] = [
        {"type": "Available", "status": "True" if ready or not replicas else "False",
         "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable",
         "message": "Deployment has minimum availability." if ready
         else "Deployment does not have minimum availability.",
         "lastTransitionTime": stamp, "lastUpdateTime": stamp},
        {"type": "Progressing", "status": "True",
         "reason": "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated",
         "message": f'ReplicaSet "{name}-1" has successfully progressed.' if ready
         else f'ReplicaSet "{name}-1" is progressing.',
         "lastTransitionTime": stamp, "lastUpdateTime": stamp},
    ]
    return status
