"""Why something is not running, in plain words, from what the cluster reports."""

import base64
from typing import Any

Manifest = dict[str, Any]


def _event_time(event: Manifest) -> str:
    return event.get("lastTimestamp") or event.get("eventTime") or ""


def explain_events(events: list[Manifest], *, scheduled_at: str = ""
                   ) -> tuple[str, str, bool] | None:
    """(message for the user, raw detail, whether retrying is pointless) for the most recent
    warning that explains a stuck workload, or None when nothing does. `scheduled_at`: when
    the pod was scheduled (its PodScheduled condition); a FailedScheduling event from
    before then is history, not the reason it waits now."""
    warnings = sorted(
        (e for e in events if e.get("type") == "Warning"), key=_event_time, reverse=True)
    for event in warnings:
        reason, text = event.get("reason", ""), event.get("message", "")
        detail = f"{reason}: {text}"
        if reason == "FailedScheduling" and scheduled_at and _event_time(event) <= scheduled_at:
            continue
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


def explain_replica_failure(deployment: Manifest) -> tuple[str, str, bool] | None:
    """The Deployment controller's ReplicaFailure condition: the ReplicaSet could not even
    create the pod (FailedCreate), and says why: Pod Security, quota, or something else."""
    failure = condition(deployment, "ReplicaFailure")
    if failure.get("status") != "True":
        return None
    text = failure.get("message", "")
    detail = f"{failure.get('reason', 'FailedCreate')}: {text}"
    if "violates PodSecurity" in text:
        return ("Refused by the cluster's Pod Security rules: the image or its settings need "
                "more privileges than the instance allows.", detail, True)
    if "exceeded quota" in text:
        return "Quota exceeded: the notebook does not fit the instance's quota.", detail, True
    if "usage per Container" in text:  # the LimitRanger: more than the instance's maximum
        return ("Too big for the instance: a container asks for more than the instance "
                "allows one container.", detail, True)
    return "The cluster cannot create the notebook's pod.", detail, False


def explain_pod(pod: Manifest, *, model: str = "") -> tuple[str, str, bool] | None:
    """Why a pod is not serving, from its status: unschedulable, image pull, crash loop."""
    status = pod.get("status") or {}
    scheduled = condition(pod, "PodScheduled")
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        text = scheduled.get("message", "")
        detail = f"FailedScheduling: {text}"
        of_model = f" {model}" if model else ""
        if "unbound immediate PersistentVolumeClaims" in text:
            return ("Waiting for its home volume: the cluster has not provided the volume "
                    "claim yet (is there a default StorageClass, or one set for the cluster?).",
                    detail, False)
        if "Insufficient" in text and "gpu" in text.lower():
            return (f"Unschedulable: no free{of_model} GPU on the cluster right now; waiting "
                    "for one.", detail, False)
        if "node affinity/selector" in text and model:
            return (f"Unschedulable: no node of the cluster offers{of_model} GPUs; waiting for "
                    "one.", detail, False)
        return "Unschedulable: no node can run it right now; waiting.", detail, False
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason, text = waiting.get("reason", ""), waiting.get("message", "")
        detail = f"{reason}: {text}"
        if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return "Image pull failed: the cluster cannot download the image.", detail, True
        if reason == "CrashLoopBackOff":
            last = ((container.get("lastState") or {}).get("terminated") or {})
            why = last.get("reason") or f"exit code {last.get('exitCode', '?')}"
            if why == "OOMKilled":
                why = "out of memory"
            return (f"JupyterLab keeps crashing ({why}; restarted "
                    f"{container.get('restartCount', 0)} times).", detail, True)
        if reason == "CreateContainerConfigError":
            return "The cluster cannot start the container: its configuration is invalid.", (
                detail), True
    return None


def workload_available(obj: Manifest) -> bool:
    """A Deployment the controller reports Available, with a replica that is."""
    return (condition(obj, "Available").get("status") == "True"
            and bool((obj.get("status") or {}).get("availableReplicas")))


def endpoints_ready(slices: list[Manifest]) -> bool:
    """Some EndpointSlice of the Service has a ready endpoint: traffic can reach a pod."""
    return any(
        (endpoint.get("conditions") or {}).get("ready", True) is not False
        for s in slices for endpoint in s.get("endpoints") or []
    )


def condition(obj: Manifest, kind: str) -> Manifest:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def secret_value(secret: Manifest | None, key: str) -> str:
    data = (secret or {}).get("data") or {}
    return base64.b64decode(data[key]).decode() if key in data else ""
