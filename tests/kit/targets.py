"""The two Kubernetes API servers the backend tests run against, behind one interface.

``emulator``: ``kubeemu`` in this process. ``real``: kube-apiserver and friends from
``$KUBEBUILDER_ASSETS`` (see ``envtest``). Either way the portal reaches it through
``kubeproxy``, which counts requests and injects faults the same way for both; tests arrange
state and play controllers directly (``get``, ``objects``, ``delete_object``,
``client_configuration``: no proxy, no faults, not counted).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from . import envtest, kubeemu, kubeproxy

Obj = dict[str, Any]


class _Proxied:
    """What both targets share: the proxy the portal goes through."""

    proxy: kubeproxy.Proxy

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def faults(self) -> kubeproxy.Faults:
        return self.proxy.faults

    @faults.setter
    def faults(self, value: kubeproxy.Faults | None) -> None:
        self.proxy.faults = value


class EmulatorTarget(_Proxied):
    real = False

    def __init__(self, emulator: kubeemu.Emulator) -> None:
        self.emulator = emulator
        self.proxy = kubeproxy.start(emulator.url)
        self.requests = self.proxy.requests

    def __getattr__(self, name: str) -> Any:  # get, objects, delete_object, add_hook...
        return getattr(self.emulator, name)

    def close(self) -> None:
        self.proxy.stop()

    @property
    def auto_ready(self) -> bool:
        return self.emulator.auto_ready

    @auto_ready.setter
    def auto_ready(self, value: bool) -> None:
        self.emulator.auto_ready = value

    def kubeconfig(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """The portal's kubeconfig: through the proxy."""
        out = self.emulator.kubeconfig(path, **kwargs)
        config = yaml.safe_load(out.read_text())
        config["clusters"][0]["cluster"]["server"] = self.proxy.url
        out.write_text(yaml.safe_dump(config, sort_keys=False))
        return out


class RealTarget(_Proxied):
    """The real server as a test sees it, with the emulator's test-side interface: ``get``,
    ``objects``, ``delete_object`` (admin, direct), ``requests`` and ``faults`` (the proxy in
    front of the portal), ``auto_ready`` (the kubelet stand-in), ``kubeconfig`` (the portal's
    token through the proxy) and ``client_configuration`` (admin)."""

    real = True

    def __init__(self, server: envtest.RealServer) -> None:
        self.server = server
        self.plane = server.plane
        certs = self.plane.certs  # the proxy serves with the API server's own certificate
        self.proxy = kubeproxy.start(self.plane.url, ca_file=str(certs["ca.crt"]), serving=(
            str(certs["apiserver.crt"]), str(certs["apiserver.key"])))
        self.requests = self.proxy.requests
        self._namespaces_before = {n["metadata"]["name"] for n in self.plane.admin_request(
            "GET", "/api/v1/namespaces")["items"]}
        assert server.stand_ins is not None
        self.stand_ins = server.stand_ins
        self.stand_ins.start_pods, self.stand_ins.admit_ingresses = True, False
        self.stand_ins.provide_volumes = True
        self.stand_ins.failures.clear()

    def close(self) -> None:
        """Remove the namespaces this test made (not waiting: pods go with them)."""
        self.proxy.stop()
        self.stand_ins.start_pods, self.stand_ins.admit_ingresses = True, False
        self.stand_ins.provide_volumes = True
        self.stand_ins.failures.clear()
        for ns in self.plane.admin_request("GET", "/api/v1/namespaces")["items"]:
            name = ns["metadata"]["name"]
            if name not in self._namespaces_before and not ns["metadata"].get(
                    "deletionTimestamp"):
                with contextlib.suppress(envtest.AdminError):
                    self.plane.admin_request("DELETE", f"/api/v1/namespaces/{name}")

    @property
    def auto_ready(self) -> bool:
        return self.stand_ins.start_pods

    @auto_ready.setter
    def auto_ready(self, value: bool) -> None:
        self.stand_ins.start_pods = value

    def add_hook(self, hook: Any) -> None:
        if getattr(hook, "__name__", "") == "serve_endpoints":
            return  # the real controller manager keeps EndpointSlices itself
        if getattr(hook, "__name__", "") != "admit_ingresses":
            raise NotImplementedError(f"no stand-in for {hook!r} on the real server")
        self.stand_ins.admit_ingresses = True

    def kubeconfig(self, path: str | os.PathLike[str], **_: Any) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        return self.plane.write_kubeconfig(out, token=self.server.token, server=self.proxy.url)

    def client_configuration(self, **attributes: Any) -> Any:
        cfg = self.plane.admin_configuration()
        for key, value in attributes.items():
            setattr(cfg, key, value)
        return cfg

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        info = self.plane.resolver().find(kind)
        try:
            obj = self.plane.admin_request(
                "GET", f"{envtest.collection_path(info, namespace or 'default')}/{name}")
        except envtest.AdminError as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def objects(self, kind: str | None = None, namespace: str | None = None, *,
                label_selector: str | None = None) -> list[Obj]:
        """Objects of one kind, or of every kind the portal writes, with kind and apiVersion
        filled in (a real list leaves them off its items)."""
        resolver = self.plane.resolver()
        infos = [resolver.find(kind)] if kind else [
            resolver.find(k) for k in ("ResourceQuota", "LimitRange", "NetworkPolicy",
                                       "RoleBinding", "Role", "ServiceAccount", "Service",
                                       "Secret", "StatefulSet", "Deployment", "Ingress")]
        found = []
        for info in infos:
            query = f"?labelSelector={label_selector}" if label_selector else ""
            try:
                items = self.plane.admin_request(
                    "GET", envtest.collection_path(info, namespace) + query)["items"]
            except envtest.AdminError as exc:
                if exc.status == 404:
                    continue
                raise
            api_version = f"{info[0]}/{info[1]}" if info[0] else info[1]
            for item in items:
                if kind is None and item["metadata"]["name"] in ("default", "kube-root-ca.crt"):
                    continue  # made by the controllers in every namespace, not by the portal
                found.append({"kind": info[3], "apiVersion": api_version, **item})
        return found

    def delete_object(self, kind: str, name: str, namespace: str | None = None,
                      **_: Any) -> Obj | None:
        """Delete as someone would by hand, and wait until it is gone (a namespace takes a few
        seconds: its controller empties it first)."""
        info = self.plane.resolver().find(kind)
        path = f"{envtest.collection_path(info, namespace or 'default')}/{name}"
        try:
            obj = self.plane.admin_request("DELETE", path, {"propagationPolicy": "Background"})
        except envtest.AdminError as exc:
            if exc.status == 404:
                return None
            raise
        delay = 0.1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.plane.admin_request("GET", path)
            except envtest.AdminError as exc:
                if exc.status == 404:
                    return obj
                raise
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        raise AssertionError(f"{kind} {name} still there a minute after deletion")


@contextlib.contextmanager
def emulated(**options: Any) -> Iterator[EmulatorTarget]:
    """A fresh emulator (serving the Flux, Cluster API and CAAPH kinds too) behind its proxy;
    `options` go to ``kubeemu.start``."""
    with kubeemu.start(**options) as emulator:
        emulator.add_upstream_kinds()
        target = EmulatorTarget(emulator)
        try:
            yield target
        finally:
            target.close()


@contextlib.contextmanager
def on_real_server(server: envtest.RealServer) -> Iterator[RealTarget]:
    """The running control plane, for one test or run: what it made is removed after."""
    target = RealTarget(server)
    try:
        yield target
    finally:
        target.close()
