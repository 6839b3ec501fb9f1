"""A real Kubernetes control plane for tests, the envtest way.

Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on free loopback
ports from the binaries in ``$KUBEBUILDER_ASSETS`` (controller-runtime's ``setup-envtest``
puts them there), with a CA and certificates made here, admission as in production and RBAC
on. There is no kubelet, CNI or ingress controller; stand-ins play what the tests need:

- **GPU nodes:** Nodes with ``nvidia.com/gpu`` capacity and ``nvidia.com/gpu.product``
  labels, Ready and untainted, so the real scheduler binds GPU pods or says
  FailedScheduling;
- **kubelet:** a thread marks bound pods Running and Ready (so Deployments progress and
  EndpointSlices appear) or fails them on purpose (image pull, crash loop); it force-deletes
  pods being deleted, since no kubelet confirms it;
- **storage:** pending claims get a hostPath PersistentVolume bound to them;
- **ingress controller:** on request, Ingresses get a load-balancer address.

The portal connects with a ServiceAccount token bound to exactly the RBAC that
``docs/kubernetes.md`` documents, through a fault-injecting, counting proxy. Tests arrange
state and play controllers with the admin credential.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RBAC_DOC = ROOT / "docs" / "kubernetes.md"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ADMISSION = ("NamespaceLifecycle,LimitRanger,ServiceAccount,ResourceQuota,PodSecurity,"
             "ValidatingAdmissionPolicy,DefaultStorageClass,MutatingAdmissionWebhook,"
             "ValidatingAdmissionWebhook")
PORTAL_NAMESPACE = "gpupaas-system"
PORTAL_ACCOUNT = "gpupaas-portal"
GPU_NODES = (("gpu-h200-1", "NVIDIA-H200", 8), ("gpu-h200-2", "NVIDIA-H200", 8),
             ("gpu-a100-1", "NVIDIA-A100", 4))
Obj = dict[str, Any]


def assets() -> Path | None:
    """The binaries' folder, or None when this run has no real API server."""
    folder = os.environ.get("KUBEBUILDER_ASSETS")
    if folder and all((Path(folder) / name).is_file() for name in BINARIES):
        return Path(folder)
    return None


def skip_reason() -> str:
    folder = os.environ.get("KUBEBUILDER_ASSETS")
    if not folder:
        return "no real API server: set KUBEBUILDER_ASSETS to the envtest binaries' folder"
    return f"KUBEBUILDER_ASSETS={folder} lacks one of {', '.join(BINARIES)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def documented_block(marker: str) -> list[Obj]:
    """The objects of one YAML block of docs/kubernetes.md, the one after ``<!-- marker -->``,
    exactly as an administrator would copy it."""
    text = RBAC_DOC.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```yaml\n(.*?)```", text, re.S)
    if not match:
        raise AssertionError(f"{RBAC_DOC} has no '<!-- {marker} -->' YAML block")
    return [doc for doc in yaml.safe_load_all(match.group(1)) if doc]


def documented_rbac() -> list[Obj]:
    """The portal's RBAC as docs/kubernetes.md gives it."""
    return documented_block("portal-rbac")


def documented_policies() -> list[Obj]:
    """The admission policies the administrator installs with the portal, as documented."""
    return documented_block("portal-policies")


# The policies' parameter on the test server: the ingress domain most tests use.
TEST_POLICY_PARAMS = {
    "apiVersion": "v1", "kind": "ConfigMap",
    "metadata": {"name": "gpupaas-cluster", "namespace": "gpupaas-system"},
    "data": {"ingressDomain": "apps.example.com", "gpuResource": "nvidia.com/gpu",
             "gpuModelLabel": "nvidia.com/gpu.product"},
}


# ---------------------------------------------------------------------------- certificates


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, the API server's serving certificate, an admin client certificate
    (system:masters) and the ServiceAccount signing key, as PEM files (trustme makes the
    certificates, as for the kit's other servers)."""
    import trustme
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca = trustme.CA(organization_name="envtest")
    serving = ca.issue_cert("localhost", "kubernetes", "kubernetes.default.svc", "127.0.0.1",
                            "10.96.0.1", common_name="kube-apiserver")
    # The API server reads the user from CN and the groups from O.
    admin = ca.issue_cert("envtest-admin", common_name="envtest-admin",
                          organization_name="system:masters")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca.cert_pem.bytes(), "ca.key": ca.private_key_pem.bytes(),
        "apiserver.crt": serving.cert_chain_pems[0].bytes(),
        "apiserver.key": serving.private_key_pem.bytes(),
        "admin.crt": admin.cert_chain_pems[0].bytes(),
        "admin.key": admin.private_key_pem.bytes(),
        "sa.key": sa_key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    out = {}
    for filename, data in files.items():
        (folder / filename).write_bytes(data)
        out[filename] = folder / filename
    return out


# ---------------------------------------------------------------------------- control plane


class ControlPlane:
    """The four processes, the admin credential and the portal's ServiceAccount token."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="envtest-"))
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.certs = _certificates(self.folder)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"

    # -- lifecycle

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (kept for the process)
        proc = subprocess.Popen([str(self.binaries / name), *args], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        c = self.certs
        etcd_client, etcd_peer = free_port(), free_port()
        # Only the flags envtest itself passes, which any etcd build accepts.
        self._spawn("etcd", [
            f"--data-dir={self.folder / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync=true",
        ])
        self._wait_tcp(etcd_client, "etcd")
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", f"--cert-dir={self.folder / 'apiserver-certs'}",
            f"--tls-cert-file={c['apiserver.crt']}", f"--tls-private-key-file={c['apiserver.key']}",
            f"--client-ca-file={c['ca.crt']}",
            f"--service-account-key-file={c['sa.pub']}",
            f"--service-account-signing-key-file={c['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--authorization-mode=RBAC", f"--enable-admission-plugins={ADMISSION}",
            "--allow-privileged=true", "--endpoint-reconciler-type=none",
            "--disable-http2-serving",
        ])
        self.write_kubeconfig(self.folder / "admin.kubeconfig")
        self._wait_ready()
        common = [f"--kubeconfig={self.folder / 'admin.kubeconfig'}", "--leader-elect=false",
                  "--secure-port=0"]
        self._spawn("kube-controller-manager", [
            *common, f"--root-ca-file={c['ca.crt']}",
            f"--service-account-private-key-file={c['sa.key']}",
            f"--cluster-signing-cert-file={c['ca.crt']}",
            f"--cluster-signing-key-file={c['ca.key']}",
            # No kubelet heartbeats here: the node lifecycle controller would evict everything.
            "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle",
            "--use-service-account-credentials=false",
            "--concurrent-namespace-syncs=10",
        ])
        self._spawn("kube-scheduler", common)
        self._wait_controllers()

    def _check_alive(self) -> None:
        for name, proc in self.processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log(name)}")

    def _wait_tcp(self, port: int, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not listen on {port}:\n{self.log(name)}")

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                if self.admin_request("GET", "/readyz") == "ok":
                    return
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready:\n{self.log('kube-apiserver')}")

    def _wait_controllers(self, timeout: float = 60) -> None:
        """The controllers run once they have made the default ServiceAccount (the scheduler
        starts alongside; a pod bound to a node shows it, in the kit's tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                self.admin_request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
                return
            time.sleep(0.3)
        raise RuntimeError(f"controllers not up:\n{self.log('kube-controller-manager')}")

    def stop(self) -> None:
        """Stop every process (the whole session of each) and remove the data folder."""
        for _name, proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc in reversed(self.processes):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.processes.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- credentials

    def write_kubeconfig(self, path: Path, *, token: str | None = None,
                         server: str | None = None) -> Path:
        """Admin (client certificate) by default; a bearer token when given."""
        user = ({"token": token} if token else {
            "client-certificate": str(self.certs["admin.crt"]),
            "client-key": str(self.certs["admin.key"])})
        cluster: Obj = {"server": server or self.url}
        if cluster["server"].startswith("https"):
            cluster["certificate-authority-data"] = base64.b64encode(
                self.certs["ca.crt"].read_bytes()).decode()
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
            "clusters": [{"name": "envtest", "cluster": cluster}],
            "users": [{"name": "envtest", "user": user}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest",
                                                         "user": "envtest"}}],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def admin_configuration(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.certs["ca.crt"])
        cfg.cert_file = str(self.certs["admin.crt"])
        cfg.key_file = str(self.certs["admin.key"])
        return cfg

    def admin_request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> Any:
        """One request as admin; JSON in and out (text for /readyz). Raises on >= 400."""
        import http.client
        import ssl

        context = ssl.create_default_context(cafile=str(self.certs["ca.crt"]))
        context.load_cert_chain(str(self.certs["admin.crt"]), str(self.certs["admin.key"]))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=30)
        try:
            data = None if body is None else (
                body if isinstance(body, bytes) else json.dumps(body).encode())
            conn.request(method, path, body=data, headers={
                "Content-Type": content_type, "Accept": "application/json", **(headers or {})})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            raise AdminError(response.status, raw.decode(errors="replace"))
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    def portal_token(self, *, seconds: int = 86400) -> str:
        """Create the portal's ServiceAccount, apply every RBAC and admission policy block the
        docs show (never a subset) with the policies' parameter, and return a token of that
        ServiceAccount (TokenRequest API)."""
        ns = PORTAL_NAMESPACE
        self.apply_admin({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.apply_admin({"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": {"name": PORTAL_ACCOUNT, "namespace": ns}})
        for obj in [*documented_rbac(), *documented_policies(), TEST_POLICY_PARAMS]:
            self.apply_admin(obj)
        answer = self.admin_request(
            "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{PORTAL_ACCOUNT}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": seconds}})
        return answer["status"]["token"]

    def apply_admin(self, obj: Obj) -> Obj:
        """Server-side apply as admin (field manager envtest)."""
        return self.admin_request(
            "PATCH", path_of(self.resolver(), obj) + "?fieldManager=envtest&force=true",
            obj, content_type="application/apply-patch+yaml")

    _resolver: Resolver | None = None

    def resolver(self) -> Resolver:
        if self._resolver is None:
            self._resolver = Resolver(self.admin_request)
        return self._resolver


class AdminError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


class Resolver:
    """kind names (``Deployment``, ``Cluster.cluster.x-k8s.io``) to API paths, from the
    server's own discovery; refreshed when a name is unknown (a CRD was just added)."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.infos: list[tuple[str, str, str, str, bool]] = []  # group, version, plural, kind, ns

    def refresh(self) -> None:
        infos, seen = [], set()
        groups = [("", v) for v in self.request("GET", "/api")["versions"]]
        for group in self.request("GET", "/apis")["groups"]:
            # The preferred version first; then the others, for kinds only they serve (CAAPH's
            # v1alpha1 HelmChartProxy beside Cluster API's v1beta2 ClusterResourceSet).
            preferred = group["preferredVersion"]["version"]
            groups += [(group["name"], v["version"]) for v in sorted(
                group["versions"], key=lambda v: v["version"] != preferred)]
        for group, version in groups:
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            for r in self.request("GET", path)["resources"]:
                if "/" not in r["name"] and (group, r["name"]) not in seen:
                    seen.add((group, r["name"]))
                    infos.append((group, version, r["name"], r["kind"], r["namespaced"]))
        self.infos = infos

    def find(self, ref: str) -> tuple[str, str, str, str, bool]:
        for attempt in range(2):
            if attempt or not self.infos:
                self.refresh()
            name, _, group = ref.partition(".")
            for info in self.infos:  # core first, then groups in discovery order
                if group and info[0] != group:
                    continue
                if name.lower() in (info[3].lower(), info[2]):
                    return info
        raise KeyError(f"the server serves no {ref!r}")

    def by_api_version(self, api_version: str, kind: str) -> tuple[str, str, str, str, bool]:
        group, _, version = api_version.rpartition("/")
        for attempt in range(2):
            if attempt or not self.infos:
                self.refresh()
            for info in self.infos:
                if (info[0], info[3]) == (group, kind):
                    return (group, version, info[2], kind, info[4])
        raise KeyError(f"the server serves no {api_version} {kind}")


def collection_path(info: tuple[str, str, str, str, bool], namespace: str | None) -> str:
    group, version, plural, _, namespaced = info
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    return f"{path}/{plural}"


def path_of(resolver: Resolver, obj: Obj) -> str:
    info = resolver.by_api_version(obj["apiVersion"], obj["kind"])
    meta = obj["metadata"]
    return f"{collection_path(info, meta.get('namespace'))}/{meta['name']}"


# ---------------------------------------------------------------------------- stand-ins


class StandIns:
    """The GPU nodes, kubelet, volume provisioner and (when asked) ingress controller this
    control plane lacks, as one polling thread with the admin credential."""

    def __init__(self, plane: ControlPlane, interval: float = 0.2) -> None:
        self.plane = plane
        self.interval = interval
        self.start_pods = True  # False: bound pods stay Pending (tests that play the kubelet)
        self.admit_ingresses = False
        self.provide_volumes = True  # False: claims stay unbound, as with no StorageClass
        self.failures: dict[str, str] = {}  # image substring -> "ImagePull" | "CrashLoop"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="envtest-kubelet")
        self._failed: set[str] = set()

    def start(self) -> None:
        for name, model, count in GPU_NODES:
            add_node(self.plane.admin_request, name, model, count)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self._pass()

    def _pass(self) -> None:
        req = self.plane.admin_request
        for pod in req("GET", "/api/v1/pods")["items"]:
            meta, spec = pod["metadata"], pod["spec"]
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            if meta.get("deletionTimestamp"):
                with contextlib.suppress(AdminError):  # no kubelet confirms: force it
                    req("DELETE", path, {"gracePeriodSeconds": 0})
                continue
            phase = (pod.get("status") or {}).get("phase")
            if not spec.get("nodeName") or phase != "Pending" or meta["uid"] in self._failed:
                continue
            image = spec["containers"][0]["image"]
            failure = next((f for s, f in self.failures.items() if s in image), None)
            if failure:
                self._fail(pod, path, failure)
            elif self.start_pods:
                self._run_pod(pod, path)
        claims = req("GET", "/api/v1/persistentvolumeclaims")["items"] if (
            self.provide_volumes) else []
        for claim in claims:
            if not claim["spec"].get("volumeName") and (claim.get("status") or {}).get(
                    "phase") == "Pending":
                self._provide_volume(claim)
        if self.admit_ingresses:
            for ingress in req("GET", "/apis/networking.k8s.io/v1/ingresses")["items"]:
                if not ((ingress.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
                    meta = ingress["metadata"]
                    req("PATCH", f"/apis/networking.k8s.io/v1/namespaces/{meta['namespace']}"
                        f"/ingresses/{meta['name']}/status",
                        {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.7"}]}}},
                        content_type="application/merge-patch+json")

    def _run_pod(self, pod: Obj, path: str) -> None:
        now = _now()
        statuses = [{"name": c["name"], "image": c["image"], "imageID": c["image"],
                     "ready": True, "started": True, "restartCount": 0,
                     "containerID": f"containerd://{pod['metadata']['uid']}",
                     "state": {"running": {"startedAt": now}}}
                    for c in pod["spec"]["containers"]]
        conditions = [{"type": t, "status": "True", "lastTransitionTime": now}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        self.plane.admin_request("PATCH", f"{path}/status", {"status": {
            "phase": "Running", "podIP": _pod_ip(pod), "podIPs": [{"ip": _pod_ip(pod)}],
            "hostIP": "10.0.0.1", "startTime": now, "conditions": conditions,
            "containerStatuses": statuses}}, content_type="application/merge-patch+json")

    def _fail(self, pod: Obj, path: str, failure: str) -> None:
        meta = pod["metadata"]
        image = pod["spec"]["containers"][0]["image"]
        if failure == "ImagePull":
            waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
            reason, message = "Failed", (f'Failed to pull image "{image}": rpc error: code = '
                                         "NotFound desc = failed to resolve reference: not found")
        else:
            waiting = {"reason": "CrashLoopBackOff",
                       "message": "back-off 10s restarting failed container"}
            reason, message = "BackOff", "Back-off restarting failed container"
        self.plane.admin_request("PATCH", f"{path}/status", {"status": {
            "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "",
                                   "ready": False, "restartCount": 3 if failure != "ImagePull"
                                   else 0, "state": {"waiting": waiting}}
                                  for c in pod["spec"]["containers"]]}},
            content_type="application/merge-patch+json")
        self.plane.admin_request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", {
            "metadata": {"generateName": f"{meta['name']}."},
            "involvedObject": {"kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "apiVersion": "v1"},
            "type": "Warning", "reason": reason, "message": message,
            "source": {"component": "kubelet", "host": pod["spec"]["nodeName"]},
            "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1})
        self._failed.add(meta["uid"])

    def _provide_volume(self, claim: Obj) -> None:
        meta = claim["metadata"]
        size = claim["spec"]["resources"]["requests"]["storage"]
        name = f"pv-{meta['uid']}"
        spec: Obj = {
            "capacity": {"storage": size}, "accessModes": claim["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": f"/var/lib/envtest/{name}"},
            "claimRef": {"namespace": meta["namespace"], "name": meta["name"],
                         "uid": meta["uid"], "kind": "PersistentVolumeClaim",
                         "apiVersion": "v1"}}
        if claim["spec"].get("storageClassName"):
            spec["storageClassName"] = claim["spec"]["storageClassName"]
        with contextlib.suppress(AdminError):  # already made on an earlier pass
            self.plane.admin_request("POST", "/api/v1/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                "spec": spec})


def add_node(request: Any, name: str, model: str, gpus: int, *,
             resource: str = "nvidia.com/gpu") -> None:
    """A Ready node offering `gpus` of `model` (or none), schedulable: status by PATCH, and
    the not-ready taint that node admission adds removed."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if model:
        labels["nvidia.com/gpu.product"] = model
    with contextlib.suppress(AdminError):
        request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                          "metadata": {"name": name, "labels": labels}})
    request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}},
            content_type="application/merge-patch+json")
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        capacity[resource] = str(gpus)
    now = _now()
    request("PATCH", f"/api/v1/nodes/{name}/status", {"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "envtest stand-in", "lastHeartbeatTime": now,
                        "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        "nodeInfo": {"kubeletVersion": "v1.36.0", "architecture": "amd64",
                     "operatingSystem": "linux", "containerRuntimeVersion": "containerd://2",
                     "kernelVersion": "6", "osImage": "envtest", "kubeProxyVersion": "",
                     "machineID": name, "systemUUID": name, "bootID": name}}},
        content_type="application/merge-patch+json")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod_ip(pod: Obj) -> str:
    digest = sum(pod["metadata"]["uid"].encode()) % 250
    return f"10.244.{digest}.{len(pod['metadata']['name']) % 250 + 2}"


# ---------------------------------------------------------------------------- the session


class RealServer:
    """What a test session holds: the control plane, the stand-ins, the portal's token, and
    the upstream CRDs (Flux, Cluster API, CAAPH) when ``$ENVTEST_CRDS`` names them."""

    def __init__(self, binaries: Path, *, upstream_crds: bool = True,
                 portal_rbac: bool = True) -> None:
        self.plane = ControlPlane(binaries)
        self.stand_ins: StandIns | None = None
        self.token = ""
        self.crds = crds_folder() if upstream_crds else None
        self.portal_rbac = portal_rbac

    def start(self) -> RealServer:
        self.plane.start()
        try:
            if self.portal_rbac:
                self.token = self.plane.portal_token()
            self.stand_ins = StandIns(self.plane)
            self.stand_ins.start()
            if self.crds:
                install_crds(self.plane, self.crds)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.stand_ins:
            self.stand_ins.stop()
        self.plane.stop()


def crds_folder() -> Path | None:
    """The upstream CRDs' folder (``$ENVTEST_CRDS``), or None. They are other projects'
    files, loaded from where the machine keeps them, never copied into this repository."""
    folder = os.environ.get("ENVTEST_CRDS")
    if folder and Path(folder).is_dir() and any(Path(folder).rglob("*.yaml")):
        return Path(folder)
    return None


CRDS_SKIP = ("no upstream CRDs (Flux, Cluster API, CAAPH): set ENVTEST_CRDS to their folder "
             "(see its README)")


def install_crds(plane: ControlPlane, folder: Path) -> None:
    """Upstream CRDs (a folder named by ``ENVTEST_CRDS``), applied server-side as they are
    (they are too big for a client-side apply), then waited for until served."""
    kinds = []
    for path in sorted(folder.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                plane.apply_admin(doc)
                storage = next(v["name"] for v in doc["spec"]["versions"] if v.get("storage"))
                kinds.append(f"/apis/{doc['spec']['group']}/{storage}/"
                             f"{doc['spec']['names']['plural']}")
    deadline = time.monotonic() + 60
    for path in kinds:
        while True:
            try:
                plane.admin_request("GET", path)
                break
            except AdminError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path} was never served") from None
                time.sleep(0.2)


@contextlib.contextmanager
def running(binaries: Path) -> Iterator[RealServer]:
    server = RealServer(binaries).start()
    try:
        yield server
    finally:
        server.stop()
