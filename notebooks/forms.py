from decimal import Decimal

from django import forms

from gpupaas.formats import cores, gpus_phrase
from instances.models import instance_name_validator
from instances.selectors import allotment


class DeployForm(forms.Form):
    name = forms.CharField(
        max_length=40, validators=[instance_name_validator],
        help_text="Lowercase letters, digits and hyphens; at most 40 characters.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "explore-data"}),
    )
    description = forms.CharField(
        max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    profile = forms.ModelChoiceField(
        queryset=None, empty_label=None,
        error_messages={"invalid_choice": "This profile is not available. Pick one shown."},
    )
    instance = forms.ModelChoiceField(
        queryset=None, empty_label=None,
        error_messages={"invalid_choice": "Pick one of your running instances."},
    )
    cpu = forms.DecimalField(label="CPU", required=False, min_value=Decimal("0.1"), max_digits=6,
                             decimal_places=1, help_text="Empty: the profile's default.")
    memory_gib = forms.IntegerField(label="Memory (GiB)", required=False, min_value=1,
                                    help_text="Empty: the profile's default.")
    gpus = forms.IntegerField(
        label="GPUs", required=False, min_value=0,
        help_text="Empty: the profile's count, else every GPU of the instance no other "
        "notebook holds. 0: none.")
    model = forms.CharField(
        max_length=200, required=False,
        help_text="Services that serve a model: one from its list. Empty: the first.")

    def __init__(self, *args, profiles, instances, unavailable=None, what: str = "notebook",
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if what == "service":
            self.fields["profile"].label = "Service"
            self.fields["profile"].error_messages["invalid_choice"] = (
                "This service is not available. Pick one shown.")
            self.fields["gpus"].help_text = "Empty: the service's default."
            # Only where a service offers models to choose from.
            choices = sorted({m for p in profiles for m in p.model_choices})
            if choices:
                self.fields["model"].widget = forms.Select(
                    choices=[("", "The service's first"), *((m, m) for m in choices)])
            else:
                del self.fields["model"]
        else:
            del self.fields["model"]
        # Only what the user may use is a valid choice: a forged id fails validation.
        self.fields["profile"].queryset = profiles
        self.fields["instance"].queryset = instances
        self.fields["instance"].label_from_instance = lambda i: (
            f"{i.name} ({gpus_phrase(i.gpus)}, {allotment(i).words()})")
        unavailable = unavailable or {}
        self.fields["profile"].label_from_instance = lambda p: (
            f"{p.display_name}: unavailable on this machine, {unavailable[p.pk]}"
            if unavailable.get(p.pk) else
            f"{p.display_name} ({cores(p.default_cpu)} CPU, {p.default_memory_gib} GiB"
            + (f", {gpus_phrase(p.default_gpus)}" if p.default_gpus else "") + " by default)")
