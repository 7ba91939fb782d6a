"""A double-entry ledger in integer cents, with per-asset allocation lines and creator payouts.

Sign convention: an entry's amount is positive for a debit and negative for a credit, so every
transaction's entries sum to zero. Creator payable accounts are liabilities: a creator's balance
is the negated sum of their account's entries.
"""

from django.conf import settings
from django.db import models

from marketplace.catalog.models import Asset
from marketplace.core.models import WriteOnceModel


class Account(models.Model):
    class Kind(models.TextChoices):
        STRIPE_CLEARING = "stripe_clearing", "Stripe clearing"
        STRIPE_FEES = "stripe_fees", "Stripe fees"
        PLATFORM_REVENUE = "platform_revenue", "Platform revenue"
        CREATOR_PAYABLE = "creator_payable", "Creator payable"
        PAYOUTS = "payouts", "Payouts in transit"

    kind = models.CharField(max_length=30, choices=Kind.choices)
    creator = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="payable_account"
    )
    currency = models.CharField(max_length=3, default="usd")

    class Meta:
        constraints = [
            # One account of each shared kind, one payable account per creator.
            models.UniqueConstraint(
                fields=["kind", "currency"],
                condition=models.Q(creator__isnull=True),
                name="royalties_account_unique_kind",
            ),
            models.CheckConstraint(
                condition=models.Q(kind="creator_payable", creator__isnull=False)
                | (~models.Q(kind="creator_payable") & models.Q(creator__isnull=True)),
                name="royalties_account_creator_iff_payable",
            ),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.creator_id or ''}".strip()


class ImmutableModel(WriteOnceModel):
    """Ledger rows are written once: corrections are new reversing transactions."""

    change_refused = "Ledger rows are immutable; post a reversing transaction instead."

    class Meta:
        abstract = True


class Transaction(ImmutableModel):
    class Kind(models.TextChoices):
        SALE = "sale", "Sale"
        REFUND = "refund", "Refund"
        PAYOUT = "payout", "Payout sent"
        PAYOUT_SETTLED = "payout_settled", "Payout settled"
        PAYOUT_FAILED = "payout_failed", "Payout failed (reversed)"

    kind = models.CharField(max_length=30, choices=Kind.choices)
    # Posting the same business event twice is impossible: e.g. "sale:order:42", "refund:order:42".
    idempotency_key = models.CharField(max_length=200, unique=True)
    order = models.ForeignKey(
        "commerce.Order", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_transactions"
    )
    payout = models.ForeignKey(
        "Payout", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_transactions"
    )
    reverses = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by"
    )  # a transaction is reversed at most once
    description = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.kind} {self.idempotency_key}"


class Entry(ImmutableModel):
    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount_cents = models.BigIntegerField(help_text="Debit positive, credit negative.")

    class Meta:
        ordering = ["transaction", "id"]
        constraints = [models.CheckConstraint(condition=~models.Q(amount_cents=0), name="royalties_entry_nonzero")]
        verbose_name_plural = "entries"


class AllocationLine(ImmutableModel):
    """What one asset earned (or gave back) in one transaction: a creator sees which image earned what."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="allocation_lines")
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="allocation_lines")
    version = models.ForeignKey("packs.PackVersion", on_delete=models.PROTECT, related_name="+")
    amount_cents = models.BigIntegerField(
        help_text="Credited to the creator: positive on a sale, negative on a refund."
    )

    class Meta:
        ordering = ["transaction", "id"]
        constraints = [
            models.UniqueConstraint(fields=["transaction", "asset"], name="royalties_line_unique_asset"),
        ]


class ConnectedAccount(models.Model):
    """A creator's Stripe Connect Express account, where payouts go."""

    creator = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="connected_account")
    stripe_account_id = models.CharField(max_length=100, unique=True)
    details_submitted = models.BooleanField(default=False)
    payouts_enabled = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)


class Payout(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Sending"
        PAID = "paid", "Sent"
        FAILED = "failed", "Failed"

    creator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payouts")
    amount_cents = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    stripe_transfer_id = models.CharField(max_length=100, blank=True)
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.CheckConstraint(condition=models.Q(amount_cents__gt=0), name="royalties_payout_positive")]
