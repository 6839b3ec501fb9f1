from django import forms
from django.conf import settings

from .models import ApiToken


class TokenForm(forms.Form):
    # Only types here: the rules (and their messages) are the service's.
    name = forms.CharField(
        required=False, help_text="What it is for, e.g. ci-runner or laptop.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "ci-runner",
                                      "maxlength": 100}),
    )
    days = forms.IntegerField(
        label="Expires after (days)", error_messages={"invalid": "Enter a whole number of days."},
        widget=forms.NumberInput(attrs={"min": 1, "class": "hours"}),
    )
    scope = forms.ChoiceField(
        choices=ApiToken.Scope.choices, initial=ApiToken.Scope.READ, widget=forms.RadioSelect,
        help_text="Read only: look, never change. Read and write: also launch and delete.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        maximum = settings.API_TOKEN_MAX_DAYS
        self.fields["days"].initial = min(settings.API_TOKEN_DEFAULT_DAYS, maximum)
        self.fields["days"].widget.attrs["max"] = maximum
        self.fields["days"].help_text = f"At most {maximum} days (set by the administrator)."
