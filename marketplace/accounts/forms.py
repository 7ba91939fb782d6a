from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from marketplace.accounts import ratelimit
from marketplace.accounts.models import User


class RateLimitedAuthenticationForm(AuthenticationForm):
    def clean(self):
        username = self.data.get("username", "")
        address = ratelimit.client_address(self.request)
        if ratelimit.is_locked_out(username, address):
            raise ValidationError(ratelimit.lockout_message(), code="rate_limited")
        try:
            cleaned = super().clean()
        except ValidationError:
            ratelimit.record_failure(username, address)
            raise
        ratelimit.record_success(username, address)
        return cleaned

    @property
    def rate_limited(self) -> bool:
        return any(e.code == "rate_limited" for e in self.errors.as_data().get("__all__", []))


class SignupForm(forms.Form):
    username = forms.RegexField(
        regex=r"^[\w.@+-]+\Z",
        max_length=150,
        error_messages={"invalid": "Use letters, digits and @ . + - _ only."},
    )
    email = forms.EmailField()
    display_name = forms.CharField(max_length=100, required=False, help_text="Shown to buyers on your work.")
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput, strip=False)
    password2 = forms.CharField(label="Password again", widget=forms.PasswordInput, strip=False)
    is_creator = forms.BooleanField(required=False, label="I am a creator: I want to license my images")
    is_buyer = forms.BooleanField(required=False, label="I am a buyer: I want to license datasets")

    def clean_username(self):
        username = self.cleaned_data["username"]
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError("That username is taken.")
        return username

    def clean_email(self):
        email = self.cleaned_data["email"].lower()
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError("An account with that email exists. Log in or reset your password.")
        return email

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("is_creator") and not cleaned.get("is_buyer"):
            raise ValidationError("Choose at least one: creator, buyer, or both.")
        p1, p2 = cleaned.get("password1"), cleaned.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", "The two passwords differ.")
        elif p1:
            candidate = User(username=cleaned.get("username", ""), email=cleaned.get("email", ""))
            try:
                password_validation.validate_password(p1, candidate)
            except ValidationError as error:
                self.add_error("password1", error)
        return cleaned


class AccountForm(forms.Form):
    is_creator = forms.BooleanField(required=False, label="Creator")
    is_buyer = forms.BooleanField(required=False, label="Buyer")
    display_name = forms.CharField(max_length=100, required=False)
    bio = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=2000, required=False)
    payout_email = forms.EmailField(required=False)

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("is_creator") and not cleaned.get("is_buyer"):
            raise ValidationError("Choose at least one: creator, buyer, or both.")
        return cleaned
