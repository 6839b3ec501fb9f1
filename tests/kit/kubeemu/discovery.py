"""API discovery as the recorded server answers it: ``/version``, ``/api``, ``/apis``, each
group version's resource list, health checks and a stub of ``/openapi/v3``."""

from __future__ import annotations

import json

from .errors import Obj, no_resource
from .store import DISCOVERY_FILE, Catalog, ResourceInfo

# The version of the real server whose discovery and answers the emulator follows.
_RECORDED = json.loads(DISCOVERY_FILE.read_text(encoding="utf-8"))["server"]
SERVER_VERSION: Obj = {
    "major": _RECORDED.lstrip("v").split(".")[0], "minor": _RECORDED.split(".")[1],
    "gitVersion": f"{_RECORDED}-kubeemu", "gitCommit": "0" * 40, "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc",
    "platform": "linux/amd64",
}


def resource_entries(info: ResourceInfo) -> list[Obj]:
    """A resource's entries in its APIResourceList: itself, then its subresources."""
    out: Obj = {"name": info.plural, "singularName": info.singular or info.kind.lower(),
                "namespaced": info.namespaced, "kind": info.kind, "verbs": list(info.verbs)}
    if info.short_names:
        out["shortNames"] = list(info.short_names)
    if info.categories:
        out["categories"] = list(info.categories)
    entries = [out]
    for sub in sorted(info.subresources):
        entry: Obj = {"name": f"{info.plural}/{sub}", "singularName": "",
                      "namespaced": info.namespaced, "kind": info.kind,
                      "verbs": ["get", "patch", "update"]}
        if sub == "scale":
            entry.update(group="autoscaling", version="v1", kind="Scale")
        elif sub == "finalize":
            entry["verbs"] = ["update"]
        entries.append(entry)
    return entries


def group_versions(catalog: Catalog) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for info in catalog.all():
        versions = out.setdefault(info.group, [])
        if info.version not in versions:
            versions.append(info.version)
    return out


def resource_list(catalog: Catalog, group: str, version: str) -> Obj:
    infos = [i for i in catalog.all() if (i.group, i.version) == (group, version)]
    if not infos:
        raise no_resource()
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [e for i in sorted(infos, key=lambda i: i.plural)
                          for e in resource_entries(i)]}


def _api_group(group: str, versions: list[str]) -> Obj:
    return {"name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
            "preferredVersion": {"groupVersion": f"{group}/{versions[0]}",
                                 "version": versions[0]}}


def document(catalog: Catalog, path: str) -> Obj | str:
    """The discovery document at `path` (text for health checks); ApiError 404 if none."""
    parts = [p for p in path.split("/") if p]
    gvs = group_versions(catalog)
    if parts in (["healthz"], ["livez"], ["readyz"]):
        return "ok"
    if parts == ["version"]:
        return SERVER_VERSION
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if parts == ["apis"]:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [_api_group(g, vs) for g, vs in gvs.items() if g]}
    if len(parts) == 2 and parts[0] == "apis":
        if parts[1] not in gvs or not parts[1]:
            raise no_resource()
        return {"kind": "APIGroup", "apiVersion": "v1", **_api_group(parts[1], gvs[parts[1]])}
    if len(parts) == 2 and parts[0] == "api":
        return resource_list(catalog, "", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return resource_list(catalog, parts[1], parts[2])
    if parts == ["openapi", "v3"]:
        paths = {}
        for group, versions in gvs.items():
            for version in versions:
                rel = f"apis/{group}/{version}" if group else f"api/{version}"
                paths[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash=0"}
        return {"paths": paths}
    if parts[:2] == ["openapi", "v3"] and len(parts) >= 4:
        group, version = ("", parts[3]) if parts[2] == "api" else (parts[3], parts[4])
        return _openapi_stub(catalog, group, version)
    raise no_resource()


def _openapi_stub(catalog: Catalog, group: str, version: str) -> Obj:
    paths: Obj = {}
    for info in catalog.all():
        if (info.group, info.version) != (group, version):
            continue
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        ns = "/namespaces/{namespace}" if info.namespaced else ""
        paths[f"{prefix}{ns}/{info.plural}/{{name}}"] = {"patch": {
            "x-kubernetes-group-version-kind": {"group": group, "version": version,
                                                "kind": info.kind},
            "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}}
                           for n in ("dryRun", "fieldManager", "fieldValidation", "force")],
            "responses": {"200": {"description": "OK"}}}}
    return {"openapi": "3.0.0", "paths": paths, "components": {},
            "info": {"title": "kubeemu", "version": SERVER_VERSION["gitVersion"]}}
