from django import forms

from marketplace.catalog import licences
from marketplace.curation.models import FlagDecision


class SearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=300, label="Describe the images")
    quality_ok = forms.BooleanField(required=False, label="Passing quality only")
    tag = forms.CharField(required=False, max_length=50)
    licence = forms.ChoiceField(choices=[("", "Any licence"), *licences.CHOICES], required=False)
    consent = forms.BooleanField(required=False, label="Consented to AI training")
    creator = forms.CharField(required=False, max_length=150)
    min_short_side = forms.IntegerField(required=False, min_value=0, max_value=20000, label="Min. short side (px)")


class DecisionForm(forms.Form):
    action = forms.ChoiceField(choices=FlagDecision.Action.choices)
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


class CaptionForm(forms.Form):
    caption = forms.CharField(required=False, max_length=1000, widget=forms.Textarea(attrs={"rows": 3}))
