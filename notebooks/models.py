import secrets
import string

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from clusters.backends.local.environments import parse_packages
from clusters.crypto import decrypt
from instances.models import Deployment, instance_name_validator
from workspaces.tokens import BearerToken


class LocalEnvironment(models.Model):
    """What a notebook or service profile needs on the local backend: its Python packages
    (an environment built once with uv and cached) and the commands it needs here."""

    local_packages = models.TextField(
        "packages (local machine)", blank=True,
        help_text="Local backend: the Python packages of its environment, one requirement a "
        "line (built once with uv and cached; notebooks get JupyterLab added when it is not "
        "listed).",
    )
    local_requires = models.CharField(
        "commands needed (local machine)", max_length=200, blank=True,
        help_text="Local backend: commands it needs on this machine, separated by spaces "
        "(e.g. java); without them it shows as unavailable.",
    )

    class Meta:
        abstract = True

    def clean(self) -> None:
        try:
            parse_packages(self.local_packages)
        except ValueError as exc:
            raise ValidationError({"local_packages": str(exc)}) from None

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(parse_packages(self.local_packages))

    @property
    def requires(self) -> tuple[str, ...]:
        return tuple(self.local_requires.split())


class NotebookProfile(LocalEnvironment):
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
    storage_gib = models.PositiveIntegerField(
        "home volume (GiB)", default=10,
        help_text="Each notebook's own volume, mounted at its home directory on Kubernetes; "
        "it is kept across restarts and removed with the notebook.",
    )
    published = models.BooleanField(default=True)
    sort_order = models.IntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "display_name"]

    def __str__(self) -> str:
        return self.display_name


def progress(row: Deployment, *, skipped: str) -> list[tuple[str, str]]:
    """(label, done|current|todo) of a notebook's or service's steps, without `skipped`
    (the step its backend has not): all done once it runs."""
    steps = [(value, label) for value, label in row.Step.choices if value != skipped]
    order = [value for value, _ in steps]
    reached = len(order) if row.status == row.Status.RUNNING else (
        order.index(row.step) if row.step in order else -1)
    return [(label, "done" if i < reached else "current" if i == reached else "todo")
            for i, (_, label) in enumerate(steps)]


def new_host_suffix() -> str:
    """10 random lowercase letters and digits (about 51 bits): part of the notebook's host,
    so nobody can claim it in advance."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(10))


class Notebook(Deployment):
    """A Jupyter server deployed onto one instance."""

    class Status(models.TextChoices):
        DEPLOYING = "deploying", "Deploying"
        RUNNING = "running", "Running"
        # Stopped with its instance: it holds nothing and keeps its files; it starts again
        # when the instance does.
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"
        DELETING = "deleting", "Deleting"
        DELETED = "deleted", "Deleted"

    class Step(models.TextChoices):
        CREATED = "created", "Created"
        PULLING = "pulling", "Image pulling"
        # The local backend's counterpart: building (or finding) the profile's environment.
        PREPARING = "preparing", "Preparing environment"
        STARTING = "starting", "Starting"
        REACHABLE = "reachable", "Reachable"

    FINAL_STATES = frozenset({Status.RUNNING, Status.STOPPED, Status.FAILED, Status.DELETED})
    KIND = "notebook"
    URLS = "notebooks"
    WORKSPACE = "instance__workspace_id"

    instance = models.ForeignKey(
        "instances.Instance", on_delete=models.CASCADE, related_name="notebooks"
    )
    name = models.CharField(max_length=40, validators=[instance_name_validator])
    description = models.TextField(blank=True, validators=[MaxLengthValidator(500)])
    profile = models.ForeignKey(NotebookProfile, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    image = models.CharField(max_length=300)
    cpu = models.DecimalField(max_digits=6, decimal_places=1)
    memory_gib = models.PositiveIntegerField()
    gpus = models.PositiveIntegerField(default=0)
    gpu_indices = models.JSONField(default=list, blank=True)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DEPLOYING)
    step = models.CharField(max_length=20, choices=Step.choices, blank=True)
    # Stopped because its instance stopped (it starts again with it), not by someone.
    stopped_with_instance = models.BooleanField(default=False, editable=False)
    url = models.URLField(max_length=500, blank=True)
    host_suffix = models.CharField(max_length=10, default=new_host_suffix, editable=False)
    # The credential users open the notebook with; encrypted at rest, shown only to those
    # with access to the instance.
    token_encrypted = models.TextField(editable=False)
    # Renewed when someone loses access to the instance, since they could have seen it.
    token_issued_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "name"],
                condition=~Q(status="deleted"),
                name="unique_live_notebook_name_per_instance",
            ),
        ]

    @property
    def key(self) -> str:
        return f"nb-{self.pk}"

    @property
    def host_label(self) -> str:
        """A local notebook's origin on the portal (access.origins): n<id>-<suffix>."""
        return f"n{self.pk}-{self.host_suffix}"

    @property
    def shows_steps(self) -> bool:
        return self.status in (self.Status.DEPLOYING, self.Status.RUNNING)

    @property
    def token(self) -> str:
        return decrypt(self.token_encrypted)

    @property
    def token_renewed(self) -> bool:
        """The token was replaced after deployment (someone lost access to the instance)."""
        return self.token_issued_at - self.created_at > timezone.timedelta(seconds=1)

    @property
    def open_url(self) -> str:
        """The URL that logs the user straight in (Jupyter accepts the token once, then sets
        its own cookie)."""
        return f"{self.url}?token={self.token}" if self.url else ""

    @property
    def steps(self) -> list[tuple[str, str]]:
        """(label, done|current|todo) for the progress list users watch."""
        return progress(self, skipped=self.Step.PULLING if self.instance.cluster.backend
                        == "local" else self.Step.PREPARING)


class ServiceProfile(LocalEnvironment):
    """A service from the catalogue users deploy onto an instance beside their notebooks:
    TensorBoard, an MLflow tracking server… The portal serves it to the instance's owner
    and collaborators only, each on an origin of its own (`access.origins`)."""

    class Exposure(models.TextChoices):
        BROWSER = "browser", "A browser app"
        API = "api", "An HTTP API for programs"

    class Icon(models.TextChoices):
        CHART = "chart", "Chart"
        FLASK = "flask", "Flask"
        CODE = "code", "Code"
        BOX = "box", "Box"

    name = models.SlugField(max_length=63, unique=True)
    display_name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    icon = models.CharField(max_length=20, choices=Icon.choices, default=Icon.BOX)
    exposure = models.CharField(max_length=20, choices=Exposure.choices,
                                default=Exposure.BROWSER)
    published = models.BooleanField(default=True)
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="service_profiles",
        help_text="Only members of these groups see and deploy it; none chosen: everyone.",
    )
    sort_order = models.IntegerField(default=0)
    default_cpu = models.DecimalField(max_digits=6, decimal_places=1, default=1)
    default_memory_gib = models.PositiveIntegerField(default=2)
    default_gpus = models.PositiveIntegerField(default=0)
    max_gpus = models.PositiveIntegerField(
        "most GPUs", default=0, help_text="The most GPUs a user may give it (0: none).")
    health_path = models.CharField(
        max_length=200, default="/", help_text="A path that answers (not 5xx) once it is up.")
    local_command = models.CharField(
        "command (local machine)", max_length=500, blank=True,
        help_text="Local backend: how to start it, listening on 127.0.0.1:{port} (its own "
        "network: nothing else reaches it), with {home} the instance's sandbox and {work} "
        "its work folder. Empty: it cannot run on the local machine.",
    )
    # Kubernetes: a Helm chart Flux installs into the instance (or into its inner cluster).
    chart_repository = models.CharField(
        "Helm repository (Kubernetes)", max_length=300, blank=True,
        help_text="Kubernetes: the https:// Helm repository or oci:// registry of its chart. "
        "Empty: it cannot run on Kubernetes clusters.")
    chart = models.CharField("chart", max_length=100, blank=True)
    chart_version = models.CharField("chart version", max_length=60, blank=True)
    values_template = models.TextField(
        "values template", blank=True,
        help_text="Kubernetes: the chart's values, as YAML, with placeholders Flux-style: "
        "${release}, ${name}, ${gpus}, ${gpu_model}, ${model}, ${cpu}, ${memory}, "
        "${resources}, ${node_selector}, ${tolerations}, ${storage_claim}, ${base_path}. "
        "The chart's own schema, when it has one, is checked by Helm at install; a refusal "
        "shows on the service in Flux's words.")
    service_name = models.CharField(
        "its Service", max_length=63, default="${release}",
        help_text="Kubernetes: the Service the chart makes, which the portal proxies to "
        "(placeholders allowed).")
    service_port = models.PositiveIntegerField(
        "its Service's port", default=80,
        validators=[MinValueValidator(1), MaxValueValidator(65535)])
    storage_gib = models.PositiveIntegerField(
        "volume (GiB)", default=10,
        help_text="Kubernetes: its own volume claim (${storage_claim}), kept while it is "
        "stopped and removed with it; 0: none.")
    model_names = models.TextField(
        "models", blank=True,
        help_text="The models users choose from when they deploy it, one a line (${model}); "
        "empty: none to choose.")

    class Meta:
        ordering = ["sort_order", "display_name"]

    def __str__(self) -> str:
        return self.display_name

    @property
    def model_choices(self) -> list[str]:
        return [line.strip() for line in self.model_names.splitlines() if line.strip()]

    def clean(self) -> None:
        from clusters.backends.kubernetes.charts import check_template, placeholders
        from clusters.backends.local.services import command_line

        super().clean()
        errors = {}
        if self.local_command:
            try:
                command_line(self.local_command, port=1, home="/h", work="/w")
            except ValueError as exc:
                errors["local_command"] = f"Not a usable command: {exc}"
        if self.default_gpus > self.max_gpus:
            errors["default_gpus"] = "More than the most GPUs it may have."
        chart = {"chart_repository": self.chart_repository, "chart": self.chart,
                 "chart_version": self.chart_version}
        if any(chart.values()):
            errors.update({k: "Needed with a Helm chart." for k, v in chart.items() if not v})
            if self.chart_repository and not self.chart_repository.startswith(
                    ("https://", "oci://")):
                errors["chart_repository"] = "An https:// repository or an oci:// registry."
        try:
            check_template(self.values_template)
        except ValueError as exc:
            errors["values_template"] = f"Not a usable template: {exc}."
        try:
            check_template(self.service_name, mapping=False)
        except ValueError as exc:
            errors["service_name"] = f"Not a usable name: {exc}."
        if "model" in placeholders(self.values_template) and not self.model_choices:
            errors["model_names"] = "The values template uses ${model}: list at least one."
        if errors:
            raise ValidationError(errors)

class Service(Deployment):
    """A catalogue service deployed onto one instance."""

    Status = Notebook.Status

    class Step(models.TextChoices):
        CREATED = "created", "Created"
        PREPARING = "preparing", "Preparing environment"
        STARTING = "starting", "Starting"
        REACHABLE = "reachable", "Reachable"

    FINAL_STATES = Notebook.FINAL_STATES
    KIND = "service"
    URLS = "services"
    WORKSPACE = "instance__workspace_id"

    instance = models.ForeignKey(
        "instances.Instance", on_delete=models.CASCADE, related_name="services"
    )
    name = models.CharField(max_length=40, validators=[instance_name_validator])
    description = models.TextField(blank=True, validators=[MaxLengthValidator(500)])
    profile = models.ForeignKey(ServiceProfile, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    cpu = models.DecimalField(max_digits=6, decimal_places=1)
    memory_gib = models.PositiveIntegerField()
    gpus = models.PositiveIntegerField(default=0)
    gpu_indices = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DEPLOYING)
    stopped_with_instance = models.BooleanField(default=False, editable=False)
    step = models.CharField(max_length=20, choices=Step.choices, blank=True)
    # Part of its origin (s<id>-<suffix>.<APPS_DOMAIN>): nobody can claim it in advance.
    host_suffix = models.CharField(max_length=10, default=new_host_suffix, editable=False)
    model = models.CharField(max_length=200, blank=True,
                             help_text="The model chosen from its profile's list.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "name"],
                condition=~Q(status="deleted"),
                name="unique_live_service_name_per_instance",
            ),
        ]

    @property
    def key(self) -> str:
        return f"svc-{self.pk}"

    @property
    def host_label(self) -> str:
        """The first label of its own origin's host."""
        return f"s{self.pk}-{self.host_suffix}"

    @property
    def open_path(self) -> str:
        return reverse("services:open", args=[self.pk])

    @property
    def shows_steps(self) -> bool:
        return self.status in (self.Status.DEPLOYING, self.Status.RUNNING)

    @property
    def steps(self) -> list[tuple[str, str]]:
        # On Kubernetes its chart is installed by Flux: there is no environment to prepare.
        return progress(self, skipped="" if self.instance.cluster.backend == "local"
                        else self.Step.PREPARING)


class ServiceKey(BearerToken):
    """One user's key to a service that is an API for programs (an OpenAI-compatible
    endpoint): sent as `Authorization: Bearer gps_…` to the service's origin, which checks
    it, and its user's access to the instance, on every request. Only its digest is kept;
    the key is shown once."""

    PREFIX = "gps_"
    EXPIRED = "The key has expired; make a new one on the service's page."

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="service_keys")
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=60, blank=True,
                            help_text="What it is for, to tell keys apart.")

    class Meta(BearerToken.Meta):
        indexes = [models.Index(fields=["service", "user", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user} on {self.service})"
