"""GPU utilisation from NVIDIA's DCGM exporter, read through the cluster's Prometheus (its
HTTP API, `GET /api/v1/query`).

The exporter labels each GPU's series with the pod that holds it: `namespace`, `pod` and
`container`, or `exported_namespace`... where Prometheus keeps its own target labels under
those names (a ServiceMonitor without `honorLabels`). Both are asked for. A GPU no pod of
the namespace holds has no series with its name, so a namespace with no series while the
exporter reports others uses no GPU (0 %); an exporter that reports nothing gives no
reading at all (None), and idle stop then judges by activity alone."""

import json
import urllib.error
import urllib.parse
import urllib.request

from ..base import BackendError

METRIC = "DCGM_FI_DEV_GPU_UTIL"  # GPU utilisation, percent (the exporter's default set)
NAMESPACE_LABELS = ("namespace", "exported_namespace")


def _query(base_url: str, promql: str, timeout_s: float) -> list[dict]:
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            body = json.loads(answer.read())
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise BackendError("The cluster's Prometheus did not answer.",
                           detail=f"{base_url}: {exc}") from exc
    if body.get("status") != "success":
        raise BackendError("The cluster's Prometheus refused the query.",
                           detail=f"{promql}: {body.get('error', body)}")
    return body["data"]["result"]


def namespace_utilisation(base_url: str, namespace: str, *, window_s: int,
                          timeout_s: float = 5.0) -> float | None:
    """The busiest GPU held by a pod of `namespace` over the last `window_s` seconds, in
    percent; 0 when it holds none; None when the exporter reports no GPU at all."""
    promql = " or ".join(f'max_over_time({METRIC}{{{label}="{namespace}"}}[{window_s}s])'
                         for label in NAMESPACE_LABELS)
    values = [float(series["value"][1]) for series in _query(base_url, promql, timeout_s)]
    if values:
        return max(values)
    return 0.0 if _query(base_url, f"count({METRIC})", timeout_s) else None
