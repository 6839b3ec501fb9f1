"""The default catalogue every new installation starts with; administrators edit it in the admin."""

from django.contrib.auth.models import Group
from django.db import transaction

from clusters.models import Cluster
from instances.models import ComputeProfile
from notebooks.models import NotebookProfile, ServiceProfile
from workspaces.models import GroupPolicy, Role

# Who may do what: end users use the portal, administrators run it. Map IdP groups to them
# in the admin.
GROUPS = [("Users", Role.END_USER), ("Administrators", Role.ADMIN)]

LOCAL_CLUSTER = {"name": "local", "display_name": "Local machine", "backend": "local"}

COMPUTE_PROFILES = [
    # name, display name, gpus, cpu, memory GiB, storage GiB, description
    ("gpu-1", "Small · 1 GPU", 1, 8, 64, 100, "Prototyping, notebooks and small fine-tunes."),
    ("gpu-2", "Medium · 2 GPUs", 2, 16, 128, 200, "Fine-tuning mid-sized models."),
    ("gpu-4", "Large · 4 GPUs", 4, 32, 256, 500, "Multi-GPU training on one node."),
    ("gpu-6", "X-Large · 6 GPUs", 6, 48, 384, 750, "Large training runs with headroom."),
    ("gpu-8", "Full node · 8 GPUs", 8, 64, 512, 1000, "A whole 8-GPU node for the largest jobs."),
]

STACKS = "quay.io/jupyter"
NOTEBOOK_PROFILES = [
    # name, display name, image, CUDA image, cpu, memory GiB, gpus, description
    ("minimal", "Minimal", f"{STACKS}/minimal-notebook", "",
     1, 4, 0, "JupyterLab with Python and conda: a clean start."),
    ("datascience", "Data Science", f"{STACKS}/datascience-notebook", "", 2, 8, 0,
     "Python, R and Julia with pandas, scikit-learn, matplotlib and friends."),
    ("spark", "Spark", f"{STACKS}/pyspark-notebook", "", 4, 16, 0,
     "Apache Spark with PySpark for distributed data processing."),
    ("tensorflow", "TensorFlow", f"{STACKS}/tensorflow-notebook",
     f"{STACKS}/tensorflow-notebook:cuda-latest", 4, 16, 1,
     "TensorFlow and Keras, with CUDA when the notebook has a GPU."),
]
# What each profile's environment holds on the local backend (built with uv), and the
# commands it needs from the machine.
LOCAL_ENVIRONMENTS = {
    "minimal": ("jupyterlab>=4.2,<5", ""),
    "datascience": ("jupyterlab>=4.2,<5\nnumpy\npandas\nscipy\nscikit-learn\nmatplotlib", ""),
    "spark": ("jupyterlab>=4.2,<5\npyspark", "java"),
    "tensorflow": ("jupyterlab>=4.2,<5\ntensorflow", ""),
}


# Catalogue services: (name, display name, icon, packages, command, health path,
# description). Each runs in its own network, reached through the portal only.
SERVICE_PROFILES = [
    ("tensorboard", "TensorBoard", "chart", "tensorboard>=2.16,<3",
     "tensorboard --logdir {work} --host 127.0.0.1 --port {port} --reload_interval 5", "/",
     "Training curves and graphs from the event files under the instance's work folder."),
    ("mlflow", "MLflow tracking server", "flask", "mlflow>=3,<4",
     "mlflow server --host 127.0.0.1 --port {port} --workers 1 "
     "--backend-store-uri sqlite:///{work}/mlflow.db --artifacts-destination "
     "{work}/mlartifacts", "/health",
     "Experiments, runs, metrics and models, kept in the instance's work folder."),
    ("code-server", "VS Code (code-server)", "code", "", "", "/healthz",
     "VS Code in the browser, with a volume of its own for your files."),
    ("vllm", "vLLM inference endpoint", "box", "", "", "/health",
     "An OpenAI-compatible API serving a model from the list, on the instance's GPUs."),
]

# On Kubernetes every seeded service is the same generic chart (bjw-s app-template, values
# of its 4.x schema) running the tool's own image: the administrator can swap any of them
# for a chart of their choice in the admin.
APP_CHART = ("oci://ghcr.io/bjw-s-labs/helm", "app-template", "4.6.2")


def app_values(image: str, tag: str, args: list[str], port: int, *, mount: str = "/data",
               env: dict[str, str] | None = None, uid: int = 1000) -> str:
    """An app-template values template: one container under Pod Security `restricted`, its
    Service renamed to the release (which the portal proxies to), and the service's own
    volume mounted at `mount`."""
    quoted = ", ".join(f'"{a}"' for a in args)
    lines = [
        "defaultPodOptions:",
        "  automountServiceAccountToken: false",
        "  nodeSelector: ${node_selector}",
        "  tolerations: ${tolerations}",
        "  securityContext:",
        f"    runAsNonRoot: true\n    runAsUser: {uid}\n    runAsGroup: {uid}",
        f"    fsGroup: {uid}\n    seccompProfile: {{type: RuntimeDefault}}",
        "controllers:",
        "  main:",
        "    strategy: Recreate",
        "    containers:",
        "      main:",
        f"        image: {{repository: {image}, tag: \"{tag}\"}}",
        f"        args: [{quoted}]",
        "        resources: ${resources}",
        "        securityContext:",
        "          allowPrivilegeEscalation: false",
        "          capabilities: {drop: [ALL]}",
    ]
    if env:
        lines.append("        env:")
        lines += [f'          {k}: "{v}"' for k, v in env.items()]
    lines += [
        "service:",
        "  main:",
        "    controller: main",
        "    forceRename: ${release}",
        f"    ports:\n      http: {{port: 80, targetPort: {port}}}",
        "persistence:",
        "  data:",
        "    existingClaim: ${storage_claim}",
        f"    globalMounts: [{{path: {mount}}}]",
    ]
    return "\n".join(lines) + "\n"


KUBERNETES_SERVICES = {
    "tensorboard": {"values_template": app_values(
        "tensorflow/tensorflow", "2.18.0",
        ["tensorboard", "--logdir", "/data", "--bind_all", "--port", "6006"], 6006)},
    "mlflow": {"values_template": app_values(
        "ghcr.io/mlflow/mlflow", "v3.1.1",
        ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "1",
         "--backend-store-uri", "sqlite:////data/mlflow.db",
         "--artifacts-destination", "/data/mlartifacts"], 5000)},
    "code-server": {"values_template": app_values(
        "codercom/code-server", "4.96.4",
        # No password of its own: the portal decides every request, on its own origin.
        ["--bind-addr", "0.0.0.0:8080", "--auth", "none", "/home/coder/project"], 8080,
        mount="/home/coder/project")},
    "vllm": {
        "values_template": app_values(
            "vllm/vllm-openai", "v0.9.2",
            ["--model", "${model}", "--served-model-name", "${model}", "--port", "8000"],
            8000, env={"HF_HOME": "/data"}),
        "exposure": "api", "default_gpus": 1, "max_gpus": 8, "default_cpu": 8,
        "default_memory_gib": 32, "storage_gib": 100,
        "model_names": "Qwen/Qwen2.5-0.5B-Instruct\nQwen/Qwen2.5-7B-Instruct\n"
                       "meta-llama/Llama-3.1-8B-Instruct",
    },
}


@transaction.atomic
def seed_catalogue() -> dict[str, int]:
    """Create what is missing; never overwrite what an administrator changed."""
    cluster, _ = Cluster.objects.get_or_create(
        name=LOCAL_CLUSTER["name"], defaults=LOCAL_CLUSTER
    )
    created: dict[str, int] = {"compute_profiles": 0, "notebook_profiles": 0}
    for order, (name, display, gpus, cpu, mem, disk, desc) in enumerate(COMPUTE_PROFILES):
        _, new = ComputeProfile.objects.get_or_create(
            name=name,
            defaults={
                "display_name": display, "cluster": cluster, "gpus": gpus, "cpu": cpu,
                "memory_gib": mem, "storage_gib": disk, "description": desc,
                "published": True, "sort_order": order * 10,
            },
        )
        created["compute_profiles"] += new
    for order, (name, display, image, gpu_image, cpu, mem, gpus, desc) in enumerate(
        NOTEBOOK_PROFILES
    ):
        _, new = NotebookProfile.objects.get_or_create(
            name=name,
            defaults={
                "display_name": display, "image": image, "gpu_image": gpu_image,
                "default_cpu": cpu, "default_memory_gib": mem, "default_gpus": gpus,
                "description": desc, "published": True, "sort_order": order * 10,
                "local_packages": LOCAL_ENVIRONMENTS[name][0],
                "local_requires": LOCAL_ENVIRONMENTS[name][1],
            },
        )
        created["notebook_profiles"] += new
    created["service_profiles"] = 0
    for order, (name, display, icon, packages, command, health, desc) in enumerate(
        SERVICE_PROFILES
    ):
        chart = dict(zip(("chart_repository", "chart", "chart_version"), APP_CHART,
                         strict=True))
        kubernetes = {**chart, **KUBERNETES_SERVICES[name]}
        profile, new = ServiceProfile.objects.get_or_create(name=name, defaults={
            "display_name": display, "icon": icon, "local_packages": packages,
            "local_command": command, "health_path": health, "description": desc,
            "sort_order": order * 10, **kubernetes})
        created["service_profiles"] += new
        if not new and not profile.chart and not profile.values_template:
            # Seeded before services ran on Kubernetes: their chart is added, nothing else.
            for field in ("chart_repository", "chart", "chart_version", "values_template"):
                setattr(profile, field, kubernetes[field])
            profile.save(update_fields=["chart_repository", "chart", "chart_version",
                                        "values_template"])
    return created


@transaction.atomic
def seed_groups() -> dict[str, Group]:
    groups = {}
    for name, role in GROUPS:
        group, _ = Group.objects.get_or_create(name=name)
        GroupPolicy.objects.get_or_create(group=group, defaults={"role": role})
        groups[name] = group
    return groups
