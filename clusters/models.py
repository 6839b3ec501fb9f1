from django.db import models

from .crypto import decrypt, encrypt


class Cluster(models.Model):
    """A target that instances run on. The built-in local cluster is this machine."""

    class Backend(models.TextChoices):
        LOCAL = "local", "Local machine"
        KUBERNETES = "kubernetes", "Kubernetes"

    name = models.SlugField(max_length=63, unique=True)
    display_name = models.CharField(max_length=100)
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.LOCAL)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Kubernetes clusters only.
    kubeconfig_encrypted = models.TextField(blank=True, editable=False)
    in_cluster = models.BooleanField(
        default=False, help_text="Use the portal pod's service account instead of a kubeconfig."
    )
    ingress_domain = models.CharField(
        max_length=253, blank=True, help_text="Notebook URLs are hosts under this domain."
    )
    ingress_class = models.CharField(max_length=100, blank=True, default="nginx")
    ingress_tls_secret = models.CharField(
        "ingress TLS secret", max_length=253, blank=True,
        help_text="A wildcard certificate secret for the ingress domain; notebooks use HTTPS "
        "when set.",
    )
    ingress_namespace = models.CharField(
        max_length=63, default="ingress-nginx",
        help_text="Namespace of the ingress controller; instances accept traffic from it.",
    )
    gpu_resource_name = models.CharField(max_length=100, default="nvidia.com/gpu")
    gpu_model_label = models.CharField(
        max_length=100, default="nvidia.com/gpu.product",
        help_text="Node label that names the GPU model.",
    )
    storage_class = models.CharField(max_length=100, blank=True)
    capi_namespace = models.CharField(
        "Cluster API namespace", max_length=63, default="gpupaas-clusters",
        help_text="Where Cluster objects for dedicated instances are created.",
    )

    class Meta:
        ordering = ["display_name"]

    def __str__(self) -> str:
        return self.display_name

    @property
    def kubeconfig(self) -> str:
        return decrypt(self.kubeconfig_encrypted)

    def set_kubeconfig(self, text: str) -> None:
        self.kubeconfig_encrypted = encrypt(text)


class GpuAllocation(models.Model):
    """One GPU slot of a local cluster held by one instance.

    The unique constraint is what makes double-booking impossible, whatever the workers do.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="gpu_allocations")
    index = models.PositiveIntegerField()
    holder = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cluster", "index"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "index"], name="one_holder_per_gpu_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.cluster.name} GPU {self.index} → {self.holder}"
