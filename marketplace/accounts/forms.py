from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from marketplace.accounts import lockout
from marketplace.accounts.models import User


class RateLimitedAuthenticationForm(AuthenticationForm):
    """The log-in form; django-axes (accounts/lockout.py) refuses locked-out attempts before the password is read."""

    def clean(self):
        try:
            return super().clean()
        except ValidationError:
            if lockout.is_locked_out(self.request):
                raise ValidationError(lockout.lockout_message(), code="rate_limited") from None
            raise

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
    is_creator = forms.BooleanField(required=False, label="I am a creator: I want to license my images")
    is_buyer = forms.BooleanField(required=False, label="I am a buyer: I want to license datasets")

    def clean_username(self):
        username = self.cleaned_data["username"]
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError("That username is taken.")
        return username

    def clean_email(self):
        # Whether an account already has this address is not said here (that would tell anyone who has an
        # account): both cases answer alike and the address's owner learns by email (accounts/services.py).
        return User.objects.normalize_email(self.cleaned_data["email"]).lower()

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("is_creator") and not cleaned.get("is_buyer"):
            raise ValidationError("Choose at least one: creator, buyer, or both.")
        return cleaned


class SignupPasswordForm(forms.Form):
    """The password of a new account, chosen on the page the mailed link opens (accounts/views.signup_confirm).

    It is asked there, not on the sign-up form, so that whoever reads the mail is the only one who knows it: a
    password typed into the sign-up form could be a stranger's, who signed up with someone else's address and
    would know the password of the account its owner then made. Asking instead for the sign-up's password again on
    this page would also close that, but the user would type it three times, remember it across days, and the page
    would be a password to guess, needing a lock-out; here there is nothing to guess but the link's long token."""

    password1 = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    password2 = forms.CharField(
        label="Password again", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def __init__(self, *args, username: str, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.candidate = User(username=username, email=email)  # for "too similar to the username/email"

    def clean(self):
        cleaned = super().clean()
        p1, p2 = cleaned.get("password1"), cleaned.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", "The two passwords differ.")
        elif p1:
            try:
                password_validation.validate_password(p1, self.candidate)
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
