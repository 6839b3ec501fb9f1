import ipaddress
import re

from django.core.exceptions import ValidationError
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
    # Set when a reconcile pass found more instances it does not know than it may quarantine
    # at once (ORPHAN_HOLD_COUNT / ORPHAN_HOLD_FRACTION) and did nothing; '' once one may.
    orphans_held = models.CharField(max_length=300, blank=True, editable=False, default="",
                                    db_default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Kubernetes clusters only.
    kubeconfig_encrypted = models.TextField(blank=True, editable=False)
    in_cluster = models.BooleanField(
        default=False, help_text="Use the portal pod's service account instead of a kubeconfig."
    )
    ingress_domain = models.CharField(
        max_length=253, blank=True,
        help_text="Notebook URLs are hosts under this domain (a wildcard DNS record points "
        "it at the ingress controller). Required for Kubernetes clusters.",
    )
    ingress_class = models.CharField(max_length=100, blank=True, default="nginx")
    ingress_https = models.BooleanField(
        "ingress HTTPS", default=False,
        help_text="Notebooks use HTTPS with the ingress controller's default certificate "
        "(for ingress-nginx: --default-ssl-certificate, a wildcard for the ingress domain).",
    )
    ingress_namespace = models.CharField(
        max_length=63, default="ingress-nginx",
        help_text="Namespace of the ingress controller; instances accept traffic from it "
        "unless sources are listed below.",
    )
    ingress_from_namespaces = models.TextField(
        "notebooks reachable from namespaces", blank=True,
        help_text="One namespace label selector per line (key=value,key2=value2): pods in "
        "matching namespaces may reach notebooks. Empty: the ingress namespace above.",
    )
    ingress_from_cidrs = models.TextField(
        "notebooks reachable from CIDRs", blank=True,
        help_text="One CIDR per line. For a hostNetwork ingress controller, the nodes' "
        "addresses; for a cloud L7 load balancer, its documented source ranges.",
    )
    gpu_resource_name = models.CharField(max_length=100, default="nvidia.com/gpu")
    gpu_model_label = models.CharField(
        max_length=100, default="nvidia.com/gpu.product",
        help_text="Node label that names the GPU model.",
    )
    storage_class = models.CharField(max_length=100, blank=True)
    shell_image = models.CharField(
        max_length=300, blank=True,
        help_text="Image of the browser shell's pod (kubectl, helm and a shell, run as a "
        "non-root user). Empty: the portal's SHELL_IMAGE. Pin it by digest.",
    )
    shell_reaches_portal = models.BooleanField(
        "shell pods reach the portal", default=True,
        help_text="The cluster's pods reach the portal's URL over HTTPS, so a browser "
        "shell's kubectl goes through the portal (audited, cut off when access ends). Off: "
        "on namespace instances the shell pod gets a token of the instance's access account "
        "that lives at most 10 minutes, renewed while a shell is open, and kubectl goes "
        "straight to the API server.",
    )
    prometheus_url = models.URLField(
        "Prometheus URL", blank=True, default="", db_default="",
        help_text="Where idle stop reads GPU utilisation: a Prometheus that scrapes NVIDIA's "
        "DCGM exporter (DCGM_FI_DEV_GPU_UTIL), e.g. http://prometheus.monitoring:9090. "
        "Empty: idle stop judges by notebook activity alone, and says so.",
    )
    capi_namespace = models.CharField(
        "Cluster API namespace", max_length=63, default="gpupaas-clusters",
        help_text="Where Cluster objects for dedicated instances are created.",
    )

    class Meta:
        ordering = ["display_name"]

    def __str__(self) -> str:
        return self.display_name

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.backend == self.Backend.KUBERNETES and not self.ingress_domain.strip():
            errors["ingress_domain"] = [
                "A Kubernetes cluster needs an ingress domain: notebook addresses are hosts "
                "under it."]
        for line in _lines(self.ingress_from_namespaces):
            if not _SELECTOR.fullmatch(line):
                errors.setdefault("ingress_from_namespaces", []).append(
                    f"“{line}” is not a selector like team=ml,tier=ingress.")
        for line in _lines(self.ingress_from_cidrs):
            try:
                ipaddress.ip_network(line, strict=False)
            except ValueError:
                errors.setdefault("ingress_from_cidrs", []).append(f"“{line}” is not a CIDR.")
        if errors:
            raise ValidationError(errors)

    @property
    def ingress_from_selector_list(self) -> list[str]:
        return _lines(self.ingress_from_namespaces)

    @property
    def ingress_from_cidr_list(self) -> list[str]:
        return [str(ipaddress.ip_network(c, strict=False)) for c in _lines(self.ingress_from_cidrs)]

    @property
    def kubeconfig(self) -> str:
        return decrypt(self.kubeconfig_encrypted)

    def set_kubeconfig(self, text: str) -> None:
        self.kubeconfig_encrypted = encrypt(text)


_LABEL_PAIR = r"([a-z0-9A-Z.-]+/)?[A-Za-z0-9._-]+=[A-Za-z0-9._-]*"
_SELECTOR = re.compile(rf"{_LABEL_PAIR}(,{_LABEL_PAIR})*")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class GpuAllocation(models.Model):
    """One GPU slot of a local cluster held by one instance.

    The unique constraint is what makes double-booking impossible, whatever the workers do.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="gpu_allocations")
    index = models.PositiveIntegerField()
    holder = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "GPU allocation"
        ordering = ["cluster", "index"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "index"], name="one_holder_per_gpu_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.cluster.name} GPU {self.index} → {self.holder}"
