import hashlib
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone


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


class PendingSignup(models.Model):
    """A sign-up waiting for its email address to be confirmed; the account is made from it when the mailed link
    is followed and a password chosen there. Until then nothing is reserved, so whoever owns the address decides,
    and a sign-up with an address that has an account looks the same as one without (see services.request_signup).
    It holds no password: the password is chosen by whoever reads the mail (forms.SignupPasswordForm)."""

    token_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the mailed token.")
    username = models.CharField(max_length=150)
    email = models.EmailField()
    is_creator = models.BooleanField(default=False)
    is_buyer = models.BooleanField(default=False)
    display_name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self):
        return f"{self.username} <{self.email}>"

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @staticmethod
    def oldest_valid():
        return timezone.now() - timedelta(seconds=settings.SIGNUP_CONFIRM_SECONDS)
