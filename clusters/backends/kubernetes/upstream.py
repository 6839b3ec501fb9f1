"""Where the portal's Kubernetes proxy sends a user's request, and with which credential.

The proxy (the `access` app) streams HTTP itself; this module only turns the credentials the
portal holds (a cluster's kubeconfig or in-cluster service account, a virtual or dedicated
cluster's admin kubeconfig) into a base URL, TLS settings and the headers that authenticate
the portal. Users never see any of it.
"""

import ssl
from dataclasses import dataclass

import yaml
from django.conf import settings

from clusters.models import Cluster

from ..base import BackendError
from .client import api_client


@dataclass(frozen=True)
class Upstream:
    base_url: str  # no trailing slash; the user's path is appended
    ssl_context: ssl.SSLContext | bool  # False: plain HTTP or verification off by the admin
    headers: dict[str, str]  # the portal's own Authorization, when it uses a token


def upstream_from_kubeconfig(kubeconfig: str | None, *, in_cluster: bool = False,
                             what: str = "the cluster", from_cluster: bool = False,
                             own_credentials: bool = True) -> Upstream:
    """`from_cluster`: a virtual or dedicated cluster's own kubeconfig, read from a cluster:
    data only (client.check_kubeconfig), HTTPS with verification on (an administrator may turn
    it off for a registered cluster, never for these). `own_credentials=False`: the address
    and TLS trust only, without the credential's token or client certificate, for requests
    that carry a credential of their own (a namespace instance's access token)."""
    try:
        config = api_client(
            None if in_cluster else yaml.safe_load(kubeconfig or ""), in_cluster=in_cluster,
            from_cluster=from_cluster,
            allow_exec=settings.KUBECONFIG_EXEC_ALLOWED and not from_cluster,
        ).configuration
    except Exception as exc:
        raise BackendError(
            f"The portal cannot use the credentials of {what}: {exc}", detail=repr(exc)
        ) from exc
    if from_cluster and (not config.host.startswith("https://") or not config.verify_ssl):
        raise BackendError(
            f"The kubeconfig of {what} does not verify its server over TLS; the portal never "
            "connects to it insecurely.", detail=f"server {config.host}")
    headers = {}
    if own_credentials:
        if config.refresh_api_key_hook is not None:  # exec plugins and expiring tokens
            config.refresh_api_key_hook(config)
        # As the client itself authenticates (its auth settings name the header and value).
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
        if config.cert_file and own_credentials:
            context.load_cert_chain(config.cert_file, config.key_file)
    return Upstream(base_url=config.host.rstrip("/"), ssl_context=context, headers=headers)


def cluster_upstream(cluster: Cluster, *, own_credentials: bool = True) -> Upstream:
    """The host cluster's API: with the portal's own credentials, or (namespace instances'
    users) with none, for a request that brings its own access token."""
    return upstream_from_kubeconfig(
        None if cluster.in_cluster else cluster.kubeconfig,
        in_cluster=cluster.in_cluster, what=str(cluster), own_credentials=own_credentials,
    )
