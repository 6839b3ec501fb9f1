from django import forms

from .models import INSTANCE_NAME_MAX, ComputeProfile, instance_name_validator


class LaunchForm(forms.Form):
    name = forms.CharField(
        max_length=INSTANCE_NAME_MAX,
        validators=[instance_name_validator],
        help_text=f"Lowercase letters, digits and hyphens; at most {INSTANCE_NAME_MAX} characters.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "train-llama"}),
    )
    description = forms.CharField(
        max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    profile = forms.ModelChoiceField(
        label="Size",
        queryset=ComputeProfile.objects.none(),
        error_messages={
            "invalid_choice": "This size is not available to you. Pick one of the sizes shown.",
            "required": "Pick a size.",
        },
    )

    def __init__(self, *args, profiles, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only what the user may launch is a valid choice: a forged id fails validation.
        self.fields["profile"].queryset = profiles

    def clean_name(self) -> str:
        return self.cleaned_data["name"].strip()


class InviteForm(forms.Form):
    emails = forms.CharField(
        label="Invite by email", max_length=5000,
        help_text="One or more addresses, separated by commas or new lines.",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "carol@example.com"}),
        error_messages={"required": "Enter at least one email address."},
    )
    access = forms.ChoiceField(
        label="They", initial="manage", widget=forms.RadioSelect, required=False,
        choices=[("manage", "Can manage: the owner's access (delete it, share it further)"),
                 ("use", "Can use: open, deploy, stop and start, but not delete or share")],
    )

    def clean_access(self) -> str:
        return self.cleaned_data["access"] or "manage"  # the brief's "same level of access"
