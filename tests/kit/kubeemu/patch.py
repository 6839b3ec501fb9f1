"""The three patch types a server accepts, and what ``application/apply-patch+yaml`` merges
with: JSON merge patch (RFC 7386), strategic merge patch, JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

from .errors import ApiError, bad_request


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
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "imagePullSecrets": "name", "conditions": "type",
    "ownerReferences": "uid", "hostAliases": "ip", "resourceClaims": "name",
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
        idx = next((i for i, o in enumerate(merged) if isinstance(o, dict)
                    and isinstance(item, dict) and o.get(merge_key) == item.get(merge_key)),
                   None)
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if idx is not None:
                merged.pop(idx)
        elif idx is None:
            merged.append(_strip_directives(item))
        else:
            merged[idx] = strategic_merge(merged[idx], item)
    return merged


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (``application/json-patch+json``) by the ``jsonpatch`` library,
    on a copy; a failing operation (a ``test``, a missing path, a bad pointer) is 422 like
    the server's."""
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(document, operations)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError,
            ValueError, TypeError, IndexError) as exc:
        raise ApiError(422, "Invalid", "the server rejected our request due to an error in "
                       f"our request: {exc}") from exc
