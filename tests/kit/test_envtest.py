"""The real-server kit: the control plane and its stand-ins behave as the backend tests
assume (the real scheduler places GPU pods, the kubelet stand-in runs or fails them, the
controllers make endpoints), and stopping it leaves nothing running."""

import os
import time

import pytest

from . import envtest


def wait(predicate, timeout: float = 30.0):
    deadline, pause = time.monotonic() + timeout, 0.1
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)
    raise AssertionError(f"timed out waiting for {predicate}")


@pytest.fixture
def plane(real_kube):
    ns = f"kit-{os.getpid()}-{time.monotonic_ns() % 100000}"
    real_kube.plane.admin_request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    yield real_kube, ns
    real_kube.stand_ins.failures.clear()
    real_kube.plane.admin_request("DELETE", f"/api/v1/namespaces/{ns}")


def pod(name: str, *, gpus: int, image: str = "busybox") -> dict:
    return {"metadata": {"name": name, "labels": {"app": name}}, "spec": {"containers": [
        {"name": "main", "image": image, "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def events_of(server, ns: str, name: str) -> list[tuple[str, str]]:
    items = server.plane.admin_request("GET", f"/api/v1/namespaces/{ns}/events")["items"]
    return [(e["reason"], e["message"]) for e in items if e["involvedObject"]["name"] == name]


def test_the_real_scheduler_places_gpu_pods_and_the_kubelet_stand_in_runs_them(plane):
    server, ns = plane
    req = server.plane.admin_request
    req("POST", f"/api/v1/namespaces/{ns}/pods", pod("fits", gpus=4))
    req("POST", f"/api/v1/namespaces/{ns}/pods", pod("too-big", gpus=9))

    running = wait(lambda: (p := req("GET", f"/api/v1/namespaces/{ns}/pods/fits"))["status"]
                   .get("phase") == "Running" and p)
    assert running["spec"]["nodeName"].startswith("gpu-")
    assert {c["type"]: c["status"] for c in running["status"]["conditions"]}["Ready"] == "True"
    reasons = wait(lambda: [m for r, m in events_of(server, ns, "too-big")
                            if r == "FailedScheduling"])
    assert "Insufficient nvidia.com/gpu" in reasons[0]


def test_the_kubelet_stand_in_fails_images_on_request(plane):
    server, ns = plane
    req = server.plane.admin_request
    server.stand_ins.failures.update({"broken": "ImagePull", "crashy": "CrashLoop"})
    req("POST", f"/api/v1/namespaces/{ns}/pods", pod("pull", gpus=0, image="example/broken:1"))
    req("POST", f"/api/v1/namespaces/{ns}/pods", pod("crash", gpus=0, image="example/crashy"))

    def waiting(name: str) -> str:
        statuses = req("GET", f"/api/v1/namespaces/{ns}/pods/{name}")["status"].get(
            "containerStatuses") or [{}]
        return (statuses[0].get("state") or {}).get("waiting", {}).get("reason", "")

    assert wait(lambda: waiting("pull")) == "ImagePullBackOff"
    assert wait(lambda: waiting("crash")) == "CrashLoopBackOff"
    assert ("Failed", 'Failed to pull image "example/broken:1": rpc error: code = NotFound '
            "desc = failed to resolve reference: not found") in events_of(server, ns, "pull")


def test_a_deployment_becomes_available_and_its_service_gets_endpoints(plane):
    server, ns = plane
    req = server.plane.admin_request
    labels = {"app": "web"}
    req("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", {
        "metadata": {"name": "web"}, "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                {"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}}}})
    req("POST", f"/api/v1/namespaces/{ns}/services", {"metadata": {"name": "web"}, "spec": {
        "selector": labels, "ports": [{"port": 80}]}})

    wait(lambda: req("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")["status"].get(
        "availableReplicas") == 1)
    slices = wait(lambda: [s for s in req(
        "GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")["items"]
        if s.get("endpoints")])
    assert slices[0]["endpoints"][0]["conditions"]["ready"] is True


def test_a_control_plane_stops_with_nothing_left_running(real_kube):
    plane = envtest.ControlPlane(real_kube.plane.binaries)
    plane.start()
    pids = [proc.pid for _, proc in plane.processes]
    assert len(pids) == 4

    plane.stop()

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not plane.folder.exists()
