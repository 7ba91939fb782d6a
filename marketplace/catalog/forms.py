from django import forms

from marketplace.catalog import licences
from marketplace.catalog.services import TAKEDOWN_REASON_MAX


class ServiceErrorsMixin:
    def add_service_errors(self, error) -> None:
        """A service's ValidationError on the form: under its field where the form has one."""
        errors = error.message_dict if hasattr(error, "error_dict") else {None: error.messages}
        for field, messages in errors.items():
            for message in messages:
                self.add_error(field if field in self.fields else None, message)


class AssetModerationForm(ServiceErrorsMixin, forms.Form):
    """What staff may correct on someone else's image: its public text, never its rights."""

    title = forms.CharField(max_length=200, required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=5000, required=False)
    tags = forms.CharField(required=False, help_text="Separate tags with commas.", max_length=2000)

    RELEASES = ()

    def split(self) -> tuple[dict, dict]:
        data = dict(self.cleaned_data)
        releases = {name: data.pop(name) for name in self.RELEASES if data.get(name)}
        for name in self.RELEASES:
            data.pop(name, None)
        return data, releases


class AssetMetadataForm(AssetModerationForm):
    """The creator's form: the text, and the rights that are theirs alone."""

    licence = forms.ChoiceField(choices=[("", "Choose a licence…"), *licences.CHOICES], required=False)
    ai_training_consent = forms.BooleanField(
        required=False, label="I consent to this image being used to train AI models under its licence"
    )
    rights_override_confirmed = forms.BooleanField(
        required=False,
        label="I hold the rights to this image and override the AI-training prohibition in its embedded metadata",
    )
    people_identifiable = forms.BooleanField(required=False, label="People are identifiable in this image")
    model_release = forms.FileField(
        required=False, help_text="PDF, JPEG or PNG; required when people are identifiable."
    )
    property_release = forms.FileField(required=False, help_text="Optional. PDF, JPEG or PNG.")

    RELEASES = ("model_release", "property_release")


class TakedownForm(ServiceErrorsMixin, forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        max_length=TAKEDOWN_REASON_MAX,
        label="Reason",
        help_text="Required. The creator is shown it; public revocation lists say only that the platform took it down.",
    )
