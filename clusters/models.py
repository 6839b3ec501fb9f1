from django.db import models


class Cluster(models.Model):
    """A target that instances run on. The built-in local cluster is this machine."""

    class Backend(models.TextChoices):
        LOCAL = "local", "Local machine"
        KUBERNETES = "kubernetes", "Kubernetes"

    name = models.CharField(max_length=63, unique=True)
    display_name = models.CharField(max_length=100)
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.LOCAL)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["display_name"]

    def __str__(self) -> str:
        return self.display_name


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
