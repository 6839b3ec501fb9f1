from django.db import models


class NotebookProfile(models.Model):
    """A Jupyter image users deploy onto an instance, with its frameworks pre-installed."""

    name = models.SlugField(max_length=63, unique=True)
    display_name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    image = models.CharField(max_length=300, help_text="Image for CPU-only notebooks.")
    gpu_image = models.CharField(
        max_length=300, blank=True, help_text="CUDA-enabled image used when the notebook has GPUs."
    )
    default_cpu = models.DecimalField(max_digits=6, decimal_places=1, default=2)
    default_memory_gib = models.PositiveIntegerField(default=8)
    default_gpus = models.PositiveIntegerField(default=0)
    published = models.BooleanField(default=True)
    sort_order = models.IntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "display_name"]

    def __str__(self) -> str:
        return self.display_name
