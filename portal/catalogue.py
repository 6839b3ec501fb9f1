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
]


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
        _, new = ServiceProfile.objects.get_or_create(name=name, defaults={
            "display_name": display, "icon": icon, "local_packages": packages,
            "local_command": command, "health_path": health, "description": desc,
            "sort_order": order * 10})
        created["service_profiles"] += new
    return created


@transaction.atomic
def seed_groups() -> dict[str, Group]:
    groups = {}
    for name, role in GROUPS:
        group, _ = Group.objects.get_or_create(name=name)
        GroupPolicy.objects.get_or_create(group=group, defaults={"role": role})
        groups[name] = group
    return groups
