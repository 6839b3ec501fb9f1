"""The Kubernetes manifests are data: asserted as literal dicts and validated against the
Kubernetes OpenAPI schema (kubernetes-validate), with no cluster involved."""

import kubernetes_validate
import pytest

from clusters.backends import InstanceSpec
from clusters.backends.kubernetes import manifests as m
from clusters.backends.kubernetes.names import dns_label, instance_object_name, label_value

K8S_VERSION = "1.31"
CS = m.ClusterSettings(portal_id="test-portal", storage_class="fast-ssd")


def spec(**overrides) -> InstanceSpec:
    values = dict(
        key="inst-42", name="train-llama", owner="alice", workspace="7", kind="namespace",
        gpus=4, gpu_model="H200", cpu=32.0, memory_gib=256, storage_gib=500,
        cluster_class="gpu-cluster", kubernetes_version="v1.31.0", worker_class="gpu-worker",
        gpus_per_node=8,
    )
    return InstanceSpec(**{**values, **overrides})


def all_objects() -> list[dict]:
    return [
        *m.namespace_objects(spec(), CS),
        *m.vcluster_objects(spec(kind="vcluster"), CS),
    ]


@pytest.mark.parametrize("obj", all_objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_every_object_the_portal_sends_is_schema_valid(obj):
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_namespace_carries_ownership_and_restricted_pod_security():
    assert m.namespace(spec(), CS) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "alice-train-llama-42",
            "labels": {
                "app.kubernetes.io/managed-by": "gpupaas",
                "gpupaas.io/portal": "test-portal",
                "gpupaas.io/instance": "inst-42",
                "gpupaas.io/workspace": "7",
                "gpupaas.io/owner": "alice",
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "v1.31",
                "pod-security.kubernetes.io/audit": "restricted",
                "pod-security.kubernetes.io/audit-version": "v1.31",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/warn-version": "v1.31",
            },
        },
    }


def test_the_quota_holds_the_size_and_forbids_external_services():
    hard = m.resource_quota(spec(cpu=0.5), CS)["spec"]["hard"]
    assert hard == {
        "requests.cpu": "500m", "limits.cpu": "500m",
        "requests.memory": "256Gi", "limits.memory": "256Gi",
        "requests.nvidia.com/gpu": "4",
        "requests.storage": "500Gi",
        "pods": "100",
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }
    other = m.ClusterSettings(gpu_resource_name="amd.com/gpu")
    assert "requests.amd.com/gpu" in m.resource_quota(spec(), other)["spec"]["hard"]


def test_network_policies_deny_ingress_except_from_the_namespace_and_the_ingress():
    deny, allow = m.network_policies(spec(), CS)
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert allow["spec"]["ingress"] == [{"from": [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
    ]}]


def test_the_owner_is_admin_of_the_namespace_only():
    binding = m.owner_role_binding(spec(), CS)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}
    ]
    assert binding["metadata"]["namespace"] == "alice-train-llama-42"


def test_the_vcluster_runs_restricted_and_uses_the_storage_class():
    statefulset = m.vcluster_objects(spec(kind="vcluster"), CS)[-1]
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].endswith(f":{m.VCLUSTER_VERSION}")
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"


def test_a_dedicated_cluster_sizes_its_gpu_pool_from_the_profile():
    cluster = m.capi_cluster(spec(kind="dedicated", gpus=12), CS)
    assert cluster["metadata"]["namespace"] == "gpupaas-clusters"
    assert cluster["spec"]["topology"] == {
        "class": "gpu-cluster",
        "version": "v1.31.0",
        "controlPlane": {"replicas": 1},
        "workers": {"machineDeployments": [
            {"class": "gpu-worker", "name": "gpu-workers", "replicas": 2}
        ]},
    }
    secret = m.capi_kubeconfig_secret_name(spec(kind="dedicated"))
    assert secret == "alice-train-llama-42-kubeconfig"


@pytest.mark.parametrize(
    ("owner", "name", "key"),
    [
        ("Alice.Smith@Example.com", "train", "inst-1"),
        ("x" * 80, "y" * 40, "inst-123456789"),
        ("--", "a", "inst-7"),
    ],
)
def test_object_names_are_dns_labels_and_unique_by_instance(owner, name, key):
    made = instance_object_name(key=key, owner=owner, name=name)
    assert len(made) <= 63 and made == dns_label(made)
    assert made.endswith("-" + key.split("-")[1])


def test_label_values_stay_valid_and_distinct():
    assert label_value("alice") == "alice"
    a, b = label_value("alice@example.com"), label_value("alice#example.com")
    assert a != b and len(label_value("z" * 100)) <= 63
    for value in (a, b, label_value("z" * 100)):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "x", "labels": {"k": value}}}, K8S_VERSION, strict=True)
