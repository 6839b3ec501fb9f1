"""The cluster *inside* a virtual or dedicated instance, for tests: the API server that
vcluster's kubeconfig (`vc-vcluster`) or Cluster API's (`<name>-kubeconfig`) points at.

Notebooks of such instances are deployed into it, so it has to be a real API server where
one can run: a second envtest control plane (etcd, kube-apiserver, controller manager,
scheduler, and the kubelet stand-ins), started by the kit beside the host's. In CI it is an
emulator behind the kit's proxy, which serves it over TLS with a CA made here: the portal
only ever talks to these clusters over verified TLS.

Either way ``kubeconfig`` is the admin kubeconfig a controller would write (server, CA and
credentials inline, as vcluster and Cluster API write them), and the test-side interface is
the targets' own (``get``, ``objects``, ``requests``).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from . import envtest, kubeemu, kubeproxy, targets

Obj = dict[str, Any]


def _kubeconfig(server: str, ca: bytes, user: Obj, name: str = "inner") -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }, sort_keys=False)


class EmulatedInner(targets.EmulatorTarget):
    """An emulator as the inner cluster, reached over TLS through the kit's proxy."""

    def __init__(self, *, gpu_nodes: bool = True) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="inner-"))
        certs = envtest._certificates(self.folder)
        emulator = kubeemu.start()
        self.emulator = emulator
        self.proxy = kubeproxy.start(emulator.url, serving=(str(certs["apiserver.crt"]),
                                                            str(certs["apiserver.key"])))
        self.requests = self.proxy.requests
        emulator.add_hook(kubeemu.serve_endpoints)
        self.kubeconfig = _kubeconfig(self.proxy.url, certs["ca.crt"].read_bytes(),
                                      {"token": "inner-admin"})
        self.ca_file = certs["ca.crt"]
        if gpu_nodes:
            for name, model, count in envtest.GPU_NODES[:1]:
                self.add_node(name, model, count)

    def add_node(self, name: str, model: str, gpus: int) -> None:
        labels = {"kubernetes.io/hostname": name}
        if model:
            labels["nvidia.com/gpu.product"] = model
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "110"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        self.emulator.create({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": name, "labels": labels}})
        info = self.emulator.catalog.resolve("Node")
        self.emulator.store.patch(info, None, name, "application/merge-patch+json", {
            "status": {"capacity": capacity, "allocatable": capacity}}, subresource="status")

    def close(self) -> None:
        self.proxy.stop()
        self.emulator.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class RealInner:
    """A second real control plane, once per session, with GPU nodes and a kubelet."""

    real = True

    def __init__(self, binaries: Path) -> None:
        self.server = envtest.RealServer(binaries, upstream_crds=False, portal_rbac=False)

    def start(self) -> RealInner:
        self.server.start()
        plane = self.server.plane
        certs = plane.certs
        self.kubeconfig = _kubeconfig(plane.url, certs["ca.crt"].read_bytes(), {
            "client-certificate-data": base64.b64encode(certs["admin.crt"].read_bytes())
            .decode(),
            "client-key-data": base64.b64encode(certs["admin.key"].read_bytes()).decode()})
        self.target = _InnerView(self.server, self.kubeconfig)
        return self

    def stop(self) -> None:
        self.server.stop()


class _InnerView(targets.RealTarget):
    """The real inner cluster as a test sees it; the portal reaches it directly (it has its
    own admin kubeconfig, as vcluster and Cluster API write them), so no proxy of ours."""

    def __init__(self, server: envtest.RealServer, kubeconfig: str) -> None:
        self.server = server
        self.kubeconfig = kubeconfig  # the text a controller writes, not the portal's file
        self.plane = server.plane
        assert server.stand_ins is not None
        self.stand_ins = server.stand_ins

    def close(self) -> None:  # shared by the session: nothing to undo per test
        pass
