"""Why something is not running, in plain words, from what the cluster reports."""

import base64
from typing import Any

import yaml

Manifest = dict[str, Any]


def explain_events(events: list[Manifest]) -> tuple[str, str, bool] | None:
    """(message for the user, raw detail, whether retrying is pointless) for the most recent
    warning that explains a stuck workload, or None when nothing does."""
    warnings = sorted(
        (e for e in events if e.get("type") == "Warning"),
        key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "",
        reverse=True,
    )
    for event in warnings:
        reason, text = event.get("reason", ""), event.get("message", "")
        detail = f"{reason}: {text}"
        if "exceeded quota" in text:
            return "Quota exceeded: the instance's resources do not fit its quota.", detail, True
        if reason == "FailedScheduling":
            if "Insufficient" in text and "gpu" in text.lower():
                return (
                    "Unschedulable: no free GPU of that model on the cluster right now; "
                    "waiting for one.", detail, False,
                )
            return "Unschedulable: no node can run it right now; waiting.", detail, False
        if reason in ("ErrImagePull", "ImagePullBackOff", "Failed") and "image" in text.lower():
            return "Image pull failed: the cluster cannot download the image.", detail, True
    return None


def workload_ready(obj: Manifest) -> bool:
    """A StatefulSet or Deployment with every wanted replica ready."""
    wanted = obj.get("spec", {}).get("replicas", 1)
    return (obj.get("status") or {}).get("readyReplicas", 0) >= wanted


def condition(obj: Manifest, kind: str) -> Manifest:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def secret_value(secret: Manifest | None, key: str) -> str:
    data = (secret or {}).get("data") or {}
    return base64.b64decode(data[key]).decode() if key in data else ""


def point_kubeconfig_at(kubeconfig: str, server: str) -> str:
    """vcluster writes a kubeconfig for localhost; the portal reaches it through its Service."""
    config = yaml.safe_load(kubeconfig)
    for entry in config.get("clusters") or []:
        entry.setdefault("cluster", {})["server"] = server
    return yaml.safe_dump(config, sort_keys=False)
