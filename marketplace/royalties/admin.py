"""Staff can read the ledger and payouts here; nothing in it can be edited (corrections are reversing transactions)."""

from django.contrib import admin

from marketplace.core.admin import ReadOnlyAdmin
from marketplace.royalties.models import AllocationLine, ConnectedAccount, Entry, Payout, Transaction


class EntryInline(admin.TabularInline):
    model = Entry
    fields = ("account", "amount_cents")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class AllocationLineInline(EntryInline):
    model = AllocationLine
    fields = ("creator", "asset", "version", "amount_cents")
    readonly_fields = fields


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "idempotency_key", "order", "payout", "reverses", "created_at")
    list_filter = ("kind",)
    search_fields = ("idempotency_key", "description")
    inlines = [EntryInline, AllocationLineInline]


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = ("id", "creator", "amount_cents", "currency", "status", "stripe_transfer_id", "created_at")
    list_filter = ("status",)
    search_fields = ("creator__username", "stripe_transfer_id")


@admin.register(ConnectedAccount)
class ConnectedAccountAdmin(ReadOnlyAdmin):
    list_display = ("creator", "stripe_account_id", "details_submitted", "payouts_enabled", "updated_at")
