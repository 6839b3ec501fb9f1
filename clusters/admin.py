import yaml
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from workspaces.services import client_ip

from .backends import BackendError, get_backend
from .backends.kubernetes import policies
from .backends.kubernetes.client import check_kubeconfig
from .backends.local import tenants
from .models import Cluster, GpuAllocation
from .services import save_cluster


class ClusterForm(forms.ModelForm):
    kubeconfig = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "autocomplete": "off", "spellcheck": "false"}),
        help_text="Paste a kubeconfig to replace the stored one. It is stored encrypted and "
        "never shown again; leave empty to keep the current one.",
    )
    prometheus_url = forms.URLField(
        required=False, assume_scheme="http", label="Prometheus URL",
        help_text=Cluster._meta.get_field("prometheus_url").help_text)

    class Meta:
        model = Cluster
        fields = [
            "display_name", "name", "backend", "description", "in_cluster", "ingress_domain",
            "ingress_class", "ingress_https", "ingress_namespace", "ingress_from_namespaces",
            "ingress_from_cidrs", "gpu_resource_name", "gpu_model_label", "storage_class",
            "capi_namespace", "shell_image", "shell_reaches_portal", "prometheus_url",
        ]

    def clean_kubeconfig(self) -> str:
        text = self.cleaned_data["kubeconfig"].strip()
        if not text:
            return ""
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise forms.ValidationError(f"This is not valid YAML: {exc}") from exc
        if not isinstance(config, dict) or not config.get("clusters"):
            raise forms.ValidationError("This is not a kubeconfig: it lists no clusters.")
        try:
            check_kubeconfig(config, from_cluster=False,
                             allow_exec=settings.KUBECONFIG_EXEC_ALLOWED)
        except ValueError as exc:
            raise forms.ValidationError(f"This kubeconfig cannot be used: {exc}.") from exc
        return text

    def clean(self) -> dict:
        data = super().clean()
        kubernetes = data.get("backend") == Cluster.Backend.KUBERNETES
        has_credentials = (
            data.get("kubeconfig") or data.get("in_cluster")
            or (self.instance.pk and self.instance.kubeconfig_encrypted)
        )
        if kubernetes and not has_credentials:
            raise forms.ValidationError(
                "A Kubernetes cluster needs a kubeconfig or in-cluster credentials."
            )
        return data

    def save(self, commit: bool = True) -> Cluster:
        cluster = super().save(commit=False)
        if self.cleaned_data.get("kubeconfig"):
            cluster.set_kubeconfig(self.cleaned_data["kubeconfig"])
        if commit:
            cluster.save()
        return cluster


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    form = ClusterForm
    list_display = [
        "display_name", "name", "backend", "has_kubeconfig", "ingress_domain", "notebooks_run_as",
    ]
    prepopulated_fields = {"name": ["display_name"]}
    actions = ["test_connection"]
    readonly_fields = ["notebooks_run_as", "admission_policies"]
    fieldsets = [
        (None, {"fields": ["display_name", "name", "backend", "description",
                           "notebooks_run_as"]}),
        ("Credentials", {"fields": ["kubeconfig", "in_cluster"]}),
        ("Kubernetes", {"fields": [
            "ingress_domain", "ingress_class", "ingress_https", "ingress_namespace",
            "ingress_from_namespaces", "ingress_from_cidrs", "gpu_resource_name",
            "gpu_model_label", "storage_class", "capi_namespace", "shell_image",
            "shell_reaches_portal", "prometheus_url",
        ]}),
        ("Admission policies", {"fields": ["admission_policies"]}),
    ]

    def save_model(self, request: HttpRequest, obj: Cluster, form: forms.Form,
                   change: bool) -> None:
        save_cluster(cluster=obj, fields=form.fields, by=request.user,
                     ip_address=client_ip(request))
        if obj.backend != Cluster.Backend.KUBERNETES:
            return
        # The policies protect tenants (and the cluster from the portal) from the first
        # instance on; the portal may not install them itself.
        try:
            report = get_backend(obj).policy_report().strip()
        except BackendError as exc:
            report = f"Could not read the admission policies: {exc.message}"
        level = messages.SUCCESS if report.endswith("installed.") else messages.WARNING
        self.message_user(request, f"{obj}: {report}", level)

    @admin.display(boolean=True, description="kubeconfig stored")
    def has_kubeconfig(self, cluster: Cluster) -> bool:
        return bool(cluster.kubeconfig_encrypted)

    @admin.display(description="local notebooks run as")
    def notebooks_run_as(self, cluster: Cluster) -> str:
        # The local backend isolates tenants only when the portal runs as root: say which.
        if cluster.backend != Cluster.Backend.LOCAL:
            return "-"
        return tenants.mode_line()

    @admin.display(description="apply on the cluster")
    def admission_policies(self, cluster: Cluster) -> str:
        """The exact YAML an administrator applies with `kubectl apply -f`: the policies and
        this cluster's parameter (docs/kubernetes.md, 'Admission policies')."""
        if cluster.backend != Cluster.Backend.KUBERNETES or not cluster.pk:
            return "-"
        from .backends.kubernetes import cluster_settings  # the backend: loaded when needed

        objects = [*policies.admission_policies(),
                   policies.cluster_params(cluster_settings(cluster))]
        text = "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects)
        return format_html('<pre class="policy-yaml">{}</pre>', text)

    @admin.action(description="Test connection")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        for cluster in queryset:
            try:
                report = get_backend(cluster).check_connection()
            except BackendError as exc:
                self.message_user(request, f"{cluster}: {exc.message}", messages.ERROR)
                continue
            level = messages.SUCCESS if report.startswith(("Connected", "Local")) else (
                messages.ERROR)
            self.message_user(request, f"{cluster}: {report}", level)


@admin.register(GpuAllocation)
class GpuAllocationAdmin(admin.ModelAdmin):
    list_display = ["cluster", "index", "holder", "created_at"]
    list_filter = ["cluster"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
