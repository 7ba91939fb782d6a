from dataclasses import asdict, dataclass
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core import signing
from django.db import models


class User(AbstractUser):
    """A person on the marketplace: a creator, a buyer, or both. Staff are the admins."""

    email = models.EmailField("email address", unique=True)
    is_creator = models.BooleanField(default=False, help_text="Uploads and licenses images.")
    is_buyer = models.BooleanField(default=False, help_text="Licenses dataset packs.")

    def __str__(self):
        return self.username


class CreatorProfile(models.Model):
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="creator_profile")
    display_name = models.CharField(max_length=100)
    bio = models.TextField(blank=True, max_length=2000)
    payout_email = models.EmailField(blank=True, help_text="Where payout notices go.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.display_name


@dataclass(frozen=True)
class PendingSignup:
    """A sign-up waiting for its email address to be confirmed. It is stored nowhere: the mailed link's token is
    the sign-up itself, signed (django.core.signing) and dated, so it cannot be made up or changed and it expires
    after SIGNUP_CONFIRM_SECONDS. The account is made from it when the link is followed and a password chosen there;
    until then nothing is reserved, so whoever owns the address decides, and a sign-up with an address that has an
    account looks the same as one without (see services.request_signup). It holds no password: the password is
    chosen by whoever reads the mail (forms.SignupPasswordForm)."""

    username: str
    email: str
    is_creator: bool
    is_buyer: bool
    display_name: str = ""

    SALT: ClassVar[str] = "marketplace.accounts.signup"

    def __str__(self):
        return f"{self.username} <{self.email}>"

    def token(self) -> str:
        return signing.dumps(asdict(self), salt=self.SALT, compress=True)

    @classmethod
    def from_token(cls, token: str) -> "PendingSignup | None":
        """The sign-up a token carries, or None when the token was not made by us or is older than
        SIGNUP_CONFIRM_SECONDS."""
        try:
            return cls(**signing.loads(token, salt=cls.SALT, max_age=settings.SIGNUP_CONFIRM_SECONDS))
        except signing.BadSignature:  # SignatureExpired too
            return None
