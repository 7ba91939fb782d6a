from django.contrib import admin, messages

from marketplace.commerce import services
from marketplace.commerce.models import Order, PackLicence, StripeEvent
from marketplace.commerce.stripe_gateway import PaymentProviderError
from marketplace.core.admin import ReadOnlyAdmin


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ["pk", "buyer", "version", "amount_cents", "fee_cents", "status", "created_at", "paid_at"]
    list_filter = ["status"]
    search_fields = ["buyer__username", "payment_intent_id"]
    actions = ["refund"]

    @admin.action(description="Refund through Stripe (the licence is revoked when Stripe confirms)")
    def refund(self, request, queryset):
        for order in queryset:
            try:
                refund_id = services.refund_order(order)
            except (services.CheckoutRefused, PaymentProviderError) as error:
                self.message_user(request, f"Order {order.pk}: {error}", messages.ERROR)
            else:
                self.message_user(request, f"Order {order.pk}: refund {refund_id} requested.")


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "order", "received_at", "processed_at", "outcome"]
    list_filter = ["type"]
    search_fields = ["event_id"]


@admin.register(PackLicence)
class PackLicenceAdmin(ReadOnlyAdmin):
    list_display = ["id", "buyer", "version", "granted_at", "revoked_at"]
    search_fields = ["id", "buyer__username"]
