"""Where the portal's Kubernetes proxy sends a user's request, and with which credential.

The proxy (the `access` app) streams HTTP itself; this module only turns the credentials the
portal holds (a cluster's kubeconfig or in-cluster service account, a virtual or dedicated
cluster's admin kubeconfig) into a base URL, TLS settings and the headers that authenticate
the portal. Users never see any of it.
"""

import ssl
from dataclasses import dataclass

import yaml

from clusters.models import Cluster

from ..base import BackendError
from .client import api_client


@dataclass(frozen=True)
class Upstream:
    base_url: str  # no trailing slash; the user's path is appended
    ssl_context: ssl.SSLContext | bool  # False: plain HTTP or verification off by the admin
    headers: dict[str, str]  # the portal's own Authorization, when it uses a token


def upstream_from_kubeconfig(kubeconfig: str | None, *, in_cluster: bool = False,
                             what: str = "the cluster", verified_tls: bool = False) -> Upstream:
    """`verified_tls`: a virtual or dedicated cluster's own kubeconfig, which must be HTTPS
    with verification on (an administrator may turn it off for a registered cluster, never
    for these)."""
    try:
        config = api_client(
            None if in_cluster else yaml.safe_load(kubeconfig or ""), in_cluster=in_cluster
        ).configuration
    except Exception as exc:
        raise BackendError(
            f"The portal cannot use the credentials of {what}: {exc}", detail=repr(exc)
        ) from exc
    if verified_tls and (not config.host.startswith("https://") or not config.verify_ssl):
        raise BackendError(
            f"The kubeconfig of {what} does not verify its server over TLS; the portal never "
            "connects to it insecurely.", detail=f"server {config.host}")
    if config.refresh_api_key_hook is not None:  # exec plugins and expiring tokens
        config.refresh_api_key_hook(config)
    # As the client itself authenticates (its auth settings name the header and its value).
    headers = {
        setting["key"].title(): setting["value"]
        for setting in config.auth_settings().values()
        if setting.get("in") == "header" and setting.get("value")
    }
    context: ssl.SSLContext | bool = False
    if config.host.startswith("https://"):
        if config.verify_ssl:
            context = ssl.create_default_context(cafile=config.ssl_ca_cert or None)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
    return Upstream(base_url=config.host.rstrip("/"), ssl_context=context, headers=headers)


def cluster_upstream(cluster: Cluster) -> Upstream:
    """The host cluster's API with the portal's own credentials (namespace instances)."""
    return upstream_from_kubeconfig(
        None if cluster.in_cluster else cluster.kubeconfig,
        in_cluster=cluster.in_cluster, what=str(cluster),
    )
