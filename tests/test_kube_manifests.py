"""The Kubernetes manifests are data: asserted as literal dicts and validated against the
Kubernetes OpenAPI schema (kubernetes-validate), with no cluster involved."""

import kubernetes_validate
import pytest

from clusters.backends import InstanceSpec, NotebookSpec
from clusters.backends.kubernetes import manifests as m
from clusters.backends.kubernetes import policies
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


def notebook(**overrides) -> NotebookSpec:
    values = dict(key="nb-9", name="explore", instance=spec(), gpus=1, cpu=4.0, memory_gib=16,
                  image="quay.io/jupyter/tensorflow-notebook:cuda-latest", token="s3cret")
    return NotebookSpec(**{**values, **overrides})


TLS = m.ClusterSettings(portal_id="test-portal", ingress_domain="apps.example.com",
                        ingress_https=True)


def all_objects() -> list[dict]:
    return [
        *m.namespace_objects(spec(), CS),
        m.portal_role_binding(spec(), CS, account=("gpupaas-system", "gpupaas-portal")),
        # The vcluster's NetworkPolicy; its Flux objects are held to the upstream CRDs on the
        # real server (tests/test_kube_clusters.py).
        *[o for o in m.vcluster_objects(spec(kind="vcluster"), CS)
          if o["kind"] == "NetworkPolicy"],
        *m.notebook_objects(notebook(), TLS),
        *m.notebook_objects(notebook(gpus=0), m.ClusterSettings(ingress_domain="x.test")),
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
                "gpupaas.io/host-tag": "i42",
            },
            "annotations": {
                # The GPU model its pods must select (the administrator's gpupaas-gpu-model
                # policy).
                "gpupaas.io/gpu-model": "H200",
                # What adoption rebuilds its row from, should the database lose it.
                "gpupaas.io/record": spec().record(),
            },
        },
    }
    assert "gpupaas.io/gpu-model" not in m.namespace(spec(gpu_model=""), CS)["metadata"][
        "annotations"]


def test_an_instances_record_gives_back_its_spec_and_nothing_else_passes_for_one():
    recorded = m.namespace(spec(), CS)["metadata"]["annotations"]["gpupaas.io/record"]
    assert InstanceSpec.from_record(recorded) == spec(waiting_since=0.0)
    assert m.capi_cluster(spec(kind="dedicated"), CS)["metadata"]["annotations"] == {
        "gpupaas.io/record": spec(kind="dedicated").record()}
    assert InstanceSpec.from_record('{"key": "inst-1"}') is None  # the rest is missing
    assert InstanceSpec.from_record("not json") is None


def test_the_quota_holds_the_size_and_forbids_external_services():
    hard = m.resource_quota(spec(cpu=0.5), CS)["spec"]["hard"]
    assert hard == {
        "requests.cpu": "500m",
        "requests.memory": "256Gi",
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
    # Only the instance's access account, which the proxy's tokens belong to: no portal user
    # name ever becomes a cluster User or Group.
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpupaas-access", "namespace": "alice-train-llama-42"}]
    assert binding["metadata"]["namespace"] == "alice-train-llama-42"
    account = m.access_account(spec(), CS)
    assert account["metadata"]["name"] == "gpupaas-access"
    assert account["automountServiceAccountToken"] is False


def test_a_vclusters_users_hold_nothing_in_its_host_namespace():
    kinds = [(o["kind"], o["metadata"]["name"]) for o in m.namespace_objects(
        spec(kind="vcluster"), CS)]
    assert ("RoleBinding", "owner-admin") not in kinds
    assert ("ServiceAccount", "gpupaas-access") not in kinds
    assert "gpupaas.io/gpu-model" not in m.namespace(spec(kind="vcluster"), CS)["metadata"][
        "annotations"]


def test_the_portal_holds_the_manager_role_in_its_namespace_only():
    binding = m.portal_role_binding(spec(), CS, account=("gpupaas-system", "gpupaas-portal"))
    assert binding["metadata"]["namespace"] == "alice-train-llama-42"
    assert binding["metadata"]["name"] == "gpupaas-portal"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "gpupaas-portal-manager"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gpupaas-portal",
                                    "namespace": "gpupaas-system"}]


def test_a_vcluster_is_a_flux_release_of_the_pinned_chart():
    policy, repository, release = m.vcluster_objects(spec(kind="vcluster"), CS)
    ns = "alice-train-llama-42"
    assert repository == {
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "vcluster", "namespace": ns,
                     "labels": m.labels(spec(kind="vcluster"), CS)},
        "spec": {"url": "https://charts.loft.sh", "interval": "1h"},
    }
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    assert {k: v for k, v in release["spec"].items() if k != "values"} == {
        "releaseName": "vcluster", "interval": "10m", "timeout": "10m",
        "chart": {"spec": {"chart": "vcluster", "version": "0.20.6", "interval": "1h",
                           "sourceRef": {"kind": "HelmRepository", "name": "vcluster"}}},
        "install": {"remediation": {"retries": 2}},
        "upgrade": {"remediation": {"retries": 2}},
    }
    # Only the portal's namespace reaches the virtual cluster's API, and Flux's, which
    # installs catalogue services inside.
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"app": "vcluster", "release": "vcluster"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "gpupaas-system"}}},
            {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "flux-system"}}}],
            "ports": [{"protocol": "TCP", "port": 8443}]}],
    }


RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                        "runAsNonRoot": True, "runAsUser": 12345, "runAsGroup": 12345,
                        "seccompProfile": {"type": "RuntimeDefault"}}


def test_the_vclusters_values_pass_pod_security_restricted_and_sync_ingresses():
    values = m.vcluster_values(spec(kind="vcluster"), CS)
    control_plane = values["controlPlane"]
    statefulset = control_plane["statefulSet"]
    assert statefulset["security"] == {
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 12345, "runAsGroup": 12345,
                               "fsGroup": 12345, "seccompProfile": {"type": "RuntimeDefault"}},
        "containerSecurityContext": RESTRICTED_CONTAINER,
    }
    # The init containers that copy the Kubernetes binaries run restricted too.
    assert control_plane["distro"]["k8s"]["securityContext"] == RESTRICTED_CONTAINER
    assert statefulset["image"] == {"registry": "ghcr.io", "repository": "loft-sh/vcluster-oss",
                                    "tag": "0.20.6"}
    assert statefulset["persistence"]["volumeClaim"] == {
        "enabled": True, "size": "5Gi", "storageClass": "fast-ssd"}
    assert values["policies"] == {"podSecurityStandard": "restricted",
                                  "resourceQuota": {"enabled": False},
                                  "limitRange": {"enabled": False}}
    assert values["sync"] == {"toHost": {"ingresses": {"enabled": True}}}
    assert values["telemetry"] == {"enabled": False}


def test_the_vcluster_kubeconfig_names_the_address_its_certificate_is_for():
    values = m.vcluster_values(spec(kind="vcluster"), CS)
    ns = "alice-train-llama-42"
    assert values["exportKubeConfig"] == {"server": f"https://vcluster.{ns}.svc:443"}
    assert values["controlPlane"]["proxy"]["extraSANs"] == [
        f"vcluster.{ns}.svc", f"vcluster.{ns}.svc.cluster.local", f"vcluster.{ns}"]
    assert "ingress" not in values["controlPlane"]


def test_a_portal_outside_the_cluster_reaches_vclusters_through_the_ingress():
    outside = m.ClusterSettings(portal_id="p", ingress_domain="apps.example.com",
                                vcluster_via_ingress=True)
    values = m.vcluster_values(spec(kind="vcluster"), outside)
    assert values["exportKubeConfig"] == {"server": "https://vc-i42.apps.example.com"}
    assert values["controlPlane"]["proxy"]["extraSANs"] == ["vc-i42.apps.example.com"]
    # Its host ends in the instance's tag, as the host policy requires.
    assert values["controlPlane"]["ingress"] == {
        "enabled": True, "host": "vc-i42.apps.example.com",
        "spec": {"ingressClassName": "nginx"}}
    policy = m.vcluster_objects(spec(kind="vcluster"), outside)[0]
    assert policy["spec"]["ingress"][0]["from"] == m.ingress_sources(outside)


def test_the_virtual_clusters_requests_are_what_it_reserves():
    values = m.vcluster_values(spec(kind="vcluster"), CS)
    control_plane = values["controlPlane"]["statefulSet"]["resources"]["requests"]
    coredns = values["controlPlane"]["coredns"]["deployment"]["resources"]["requests"]
    init = values["controlPlane"]["distro"]["k8s"]["resources"]["requests"]
    millis = lambda q: int(q.removesuffix("m"))  # noqa: E731
    mib = lambda q: int(q.removesuffix("Mi"))  # noqa: E731
    # A pod's quota is the larger of its init containers and its running ones.
    assert millis(init["cpu"]) <= millis(control_plane["cpu"])
    assert m.reserved("vcluster") == m.Reservation(
        cpu_millis=millis(control_plane["cpu"]) + millis(coredns["cpu"]),
        memory_mib=mib(control_plane["memory"]) + mib(coredns["memory"]), storage_gib=5)
    assert str(m.reserved("vcluster")) == "0.22 CPU and 320 MiB memory"
    assert not m.reserved("namespace") and not m.reserved("dedicated")


def test_a_dedicated_cluster_sizes_its_gpu_pool_from_the_profile():
    cluster = m.capi_cluster(spec(kind="dedicated", gpus=12), CS)
    assert cluster["apiVersion"] == "cluster.x-k8s.io/v1beta2"  # the storage version
    assert cluster["metadata"]["namespace"] == "gpupaas-clusters"
    assert cluster["metadata"]["labels"]["gpupaas.io/addons"] == "test-portal"
    assert cluster["spec"]["topology"] == {
        "classRef": {"name": "gpu-cluster"},
        "version": "v1.31.0",
        "controlPlane": {"replicas": 1},
        "workers": {"machineDeployments": [
            {"class": "gpu-worker", "name": "gpu-workers", "replicas": 2}
        ]},
    }
    secret = m.capi_kubeconfig_secret_name(spec(kind="dedicated"))
    assert secret == "alice-train-llama-42-kubeconfig"


def test_every_dedicated_cluster_gets_the_gpu_operator_and_ingress_nginx_from_caaph():
    cs = m.ClusterSettings(portal_id="p", ingress_domain="apps.example.com")
    gpu, ingress = m.capi_addons(cs)
    assert gpu == {
        "apiVersion": "addons.cluster.x-k8s.io/v1alpha1", "kind": "HelmChartProxy",
        "metadata": {"name": "gpupaas-p-gpu-operator", "namespace": "gpupaas-clusters",
                     "labels": {"app.kubernetes.io/managed-by": "gpupaas",
                                "gpupaas.io/portal": "p"}},
        "spec": {"clusterSelector": {"matchLabels": {"gpupaas.io/addons": "p"}},
                 "repoURL": "https://helm.ngc.nvidia.com/nvidia", "chartName": "gpu-operator",
                 "version": "v25.3.4", "releaseName": "gpu-operator",
                 "namespace": "gpu-operator",
                 "options": {"install": {"createNamespace": True}, "wait": True,
                             "timeout": "15m"}},
    }
    assert ingress["spec"]["chartName"] == "ingress-nginx"
    assert ingress["spec"]["version"] == "4.12.1"
    values = ingress["spec"]["valuesTemplate"]
    # CAAPH renders the template per Cluster: the wildcard of that cluster's own domain.
    assert ("external-dns.alpha.kubernetes.io/hostname: "
            "'*.{{ .Cluster.metadata.name }}.apps.example.com'") in values
    assert "name: nginx" in values


def test_a_dedicated_clusters_notebooks_use_its_own_domain_and_ingress_class():
    cs = m.ClusterSettings(portal_id="p", ingress_domain="apps.example.com",
                           ingress_class="traefik")
    inside = notebook(instance=spec(kind="dedicated"), host_suffix="k3x9q2m7ab")
    assert m.notebook_host(inside, cs) == (
        "nb-explore-9-k3x9q2m7ab-i42.alice-train-llama-42.apps.example.com")
    ingress = next(o for o in m.notebook_objects(inside, cs) if o["kind"] == "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"] == m.NGINX_ANNOTATIONS
    # A vcluster's Ingresses are synced to the host: the host's class and domain.
    virtual = notebook(instance=spec(kind="vcluster"), host_suffix="k3x9q2m7ab")
    assert m.notebook_host(virtual, cs).endswith("-i42.apps.example.com")


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


def test_a_notebook_is_a_token_secret_a_non_root_deployment_a_service_and_an_ingress():
    secret, _, service, ingress, deployment = m.notebook_objects(notebook(), TLS)
    assert secret["stringData"] == {"token": "s3cret"}
    assert secret["metadata"]["namespace"] == "alice-train-llama-42"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi",
                                                "nvidia.com/gpu": "1"}
    assert {"name": "JUPYTER_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "nb-explore-9-token", "key": "token"}}} in container["env"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8888}]
    assert ingress["spec"]["rules"][0]["host"] == "nb-explore-9.apps.example.com"
    # No secretName that nothing creates: the controller's default (wildcard) certificate.
    assert ingress["spec"]["tls"] == [{"hosts": ["nb-explore-9.apps.example.com"]}]
    assert m.notebook_url(notebook(), TLS) == "https://nb-explore-9.apps.example.com/lab"


def test_a_cpu_notebook_asks_for_no_gpu_and_plain_http_without_tls():
    plain = m.ClusterSettings(ingress_domain="x.test")
    _, _, _, ingress, deployment = m.notebook_objects(notebook(gpus=0), plain)
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and "tls" not in ingress["spec"]
    assert m.notebook_url(notebook(), plain) == "http://nb-explore-9.x.test/lab"


def test_notebooks_of_virtual_clusters_get_their_own_namespace_inside():
    inside = notebook(instance=spec(kind="vcluster"))
    assert {o["metadata"]["namespace"] for o in m.notebook_objects(inside, TLS)} == {"notebooks"}


# --- correct on a real cluster (issue 14) ------------------------------------------------------


def test_a_notebook_host_is_unguessable_and_carries_its_instance_tag():
    host = m.notebook_host(notebook(host_suffix="k3x9q2m7ab"), TLS)
    assert host == "nb-explore-9-k3x9q2m7ab-i42.apps.example.com"
    long = m.notebook_host(notebook(name="n" * 40, key="nb-123456", host_suffix="k3x9q2m7ab"),
                           TLS)
    label = long.split(".")[0]
    assert len(label) <= 63 and label == dns_label(label) and label.endswith("-k3x9q2m7ab-i42")


def test_an_nginx_ingress_lets_jupyter_upload_and_keep_kernel_websockets_open():
    ingress = m.notebook_objects(notebook(host_suffix="abc"), TLS)[3]
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/proxy-body-size": "64m",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
        "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
    }
    other = m.ClusterSettings(ingress_domain="x.test", ingress_class="traefik")
    assert "annotations" not in m.notebook_objects(notebook(), other)[3]["metadata"]


def test_a_gpu_notebook_lands_on_its_model_and_tolerates_gpu_taints():
    pod = m.notebook_objects(notebook(), TLS)[4]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H200"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu_pod = m.notebook_objects(notebook(gpus=0), TLS)[4]["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_pod and "tolerations" not in cpu_pod


def test_a_notebook_keeps_its_home_on_its_own_volume_and_has_a_memory_backed_shm():
    objects = m.notebook_objects(notebook(storage_gib=25), CS)
    claim, deployment = objects[1], objects[4]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "25Gi"}},
        "storageClassName": "fast-ssd",
    }
    assert claim["metadata"]["name"] == "nb-explore-9-home"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "home", "persistentVolumeClaim": {"claimName": "nb-explore-9-home"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "home", "mountPath": "/home/jovyan"}, {"name": "shm", "mountPath": "/dev/shm"}]


def test_the_gpu_deployment_is_written_last_so_a_refusal_holds_no_gpu():
    assert [o["kind"] for o in m.notebook_objects(notebook(), TLS)] == [
        "Secret", "PersistentVolumeClaim", "Service", "Ingress", "Deployment"]


def test_limit_range_defaults_never_refuse_a_pod_that_requests_more_than_them():
    limits = m.limit_range(spec(cpu=32.0, memory_gib=256), CS)["spec"]["limits"]
    assert limits == [{
        "type": "Container",
        "default": {"cpu": "32", "memory": "256Gi"},
        "defaultRequest": {"cpu": "100m", "memory": "256Mi"},
        "max": {"cpu": "32", "memory": "256Gi"},
    }]


def test_notebook_sources_are_the_clusters_to_choose():
    chosen = m.ClusterSettings(ingress_from_selectors=("team=ingress,tier=edge",),
                               ingress_from_cidrs=("10.0.0.0/8",))
    _, allow = m.network_policies(spec(), chosen)
    assert allow["spec"]["ingress"] == [{"from": [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"team": "ingress", "tier": "edge"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
    ]}]
    kubernetes_validate.validate(allow, K8S_VERSION, strict=True)


def test_the_admission_policies_are_schema_valid_and_read_the_clusters_parameter():
    objects = policies.admission_policies()
    assert [o["metadata"]["name"] for o in objects] == [
        "gpupaas-portal-confined", "gpupaas-portal-confined", "gpupaas-ingress-hosts",
        "gpupaas-ingress-hosts", "gpupaas-gpu-model", "gpupaas-gpu-model",
        "gpupaas-access-account", "gpupaas-access-account"]
    for obj in [*objects, policies.cluster_params(TLS)]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    bindings = {o["metadata"]["name"]: o["spec"] for o in objects
                if o["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert all(b["validationActions"] == ["Deny"] for b in bindings.values())
    for name in ("gpupaas-ingress-hosts", "gpupaas-gpu-model"):
        assert bindings[name]["paramRef"] == {"name": "gpupaas-cluster",
                                              "namespace": "gpupaas-system",
                                              "parameterNotFoundAction": "Deny"}
    assert policies.cluster_params(TLS)["data"] == {
        "ingressDomain": "apps.example.com", "gpuResource": "nvidia.com/gpu",
        "gpuModelLabel": "nvidia.com/gpu.product"}
