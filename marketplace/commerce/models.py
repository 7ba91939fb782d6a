"""Orders, Stripe events and the licences they grant."""

import uuid

from django.conf import settings
from django.db import models

from marketplace.packs.models import PackVersion


class Order(models.Model):
    """A buyer's attempt to license one pack version. Paid only when Stripe's signed event says so."""

    class Status(models.TextChoices):
        PENDING = "pending", "Awaiting payment"
        PAID = "paid", "Paid"
        REFUNDED = "refunded", "Refunded"
        FAILED = "failed", "Payment failed"

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    version = models.ForeignKey(PackVersion, on_delete=models.PROTECT, related_name="orders")
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    payment_intent_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    charge_id = models.CharField(max_length=100, blank=True)
    fee_cents = models.PositiveIntegerField(
        null=True, blank=True, help_text="Stripe's fee, from the balance transaction."
    )
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount_cents__gt=0), name="commerce_order_amount_positive")
        ]

    def __str__(self):
        return f"order {self.pk}"

    @property
    def transfer_group(self) -> str:
        """Ties the sale's charge to the royalty transfers it funds (Stripe Connect)."""
        return f"order_{self.pk}"


class StripeEvent(models.Model):
    """Every verified webhook event, once: Stripe delivers at least once and in any order."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self):
        return f"{self.type} {self.event_id}"


class PackLicence(models.Model):
    """The licence a paid order grants: who may use which pack version, on which terms, since when.

    Its UUID is public: anyone who has it can verify the certificate.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="licence")  # one fulfillment per order
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pack_licences")
    version = models.ForeignKey(PackVersion, on_delete=models.PROTECT, related_name="licences")
    terms = models.JSONField(help_text="The version's licence terms, as agreed.")
    manifest_sha256 = models.CharField(max_length=64)
    granted_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-granted_at"]

    def __str__(self):
        return f"licence {self.id}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
