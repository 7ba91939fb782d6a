from django.contrib.auth.models import AbstractUser
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
