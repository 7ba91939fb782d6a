"""The few Stripe calls commerce makes, through one configured client.

With real keys in the environment it talks to Stripe; in the embedded set-up STRIPE_API_BASE points
it at localstripe. Tests replace `client()` with a fake.
"""

import json
from dataclasses import dataclass

import stripe
from django.conf import settings


class PaymentProviderError(Exception):
    """Stripe could not be reached or refused a request; the message is safe to show."""


def client() -> stripe.StripeClient:
    """The platform account's client, for payments and Connect payouts alike. An empty STRIPE_API_BASE means
    api.stripe.com. Requests go through `stripe.default_http_client` when one is set (tests plug recorded
    responses in there). Retries are safe: every POST we make carries an idempotency key."""
    base = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY, base_addresses=base, http_client=stripe.default_http_client, max_network_retries=2
    )


def _call(what: str, function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except stripe.StripeError as error:
        message = getattr(error, "user_message", None) or str(error) or error.__class__.__name__
        raise PaymentProviderError(f"{what}: {message}") from error


@dataclass(frozen=True)
class Intent:
    id: str
    client_secret: str
    status: str
    amount: int
    currency: str


def create_payment_intent(*, amount_cents: int, currency: str, order_id: int, transfer_group: str,
                          description: str, buyer_email: str) -> Intent:  # fmt: skip
    intent = _call(
        "Could not start the payment",
        client().v1.payment_intents.create,
        params={
            "amount": amount_cents,
            "currency": currency,
            "payment_method_types": ["card"],
            "metadata": {"order_id": str(order_id)},
            "transfer_group": transfer_group,
            "description": description,
            "receipt_email": buyer_email or None,
        },
        # One PaymentIntent per order, whatever the retries.
        options={"idempotency_key": f"order-{order_id}-payment-intent"},
    )
    return _intent(intent)


def retrieve_payment_intent(intent_id: str) -> Intent:
    return _intent(_call("Could not load the payment", client().v1.payment_intents.retrieve, intent_id))


def _intent(intent) -> Intent:
    return Intent(intent.id, intent.client_secret, intent.status, intent.amount, intent.currency)


def charge_fee_cents(charge_id: str) -> int:
    """Stripe's fee on a charge, from its balance transaction."""
    api = client().v1
    charge = _call("Could not load the charge", api.charges.retrieve, charge_id)
    balance_transaction = charge.balance_transaction
    if not balance_transaction:
        raise PaymentProviderError(f"Charge {charge_id} has no balance transaction yet.")
    if isinstance(balance_transaction, str):
        balance_transaction = _call(
            "Could not load the balance transaction", api.balance_transactions.retrieve, balance_transaction
        )
    return int(balance_transaction.fee)


def refund_payment(*, intent_id: str, order_id: int) -> str:
    refund = _call(
        "Could not refund the payment",
        client().v1.refunds.create,
        params={"payment_intent": intent_id, "metadata": {"order_id": str(order_id)}},
        options={"idempotency_key": f"order-{order_id}-refund"},
    )
    return refund.id


def verify_event(payload: bytes, signature_header: str) -> dict:
    """The event, if Stripe signed this exact body with our webhook secret; else SignatureVerificationError."""
    stripe.Webhook.construct_event(payload, signature_header, settings.STRIPE_WEBHOOK_SECRET)
    return json.loads(payload)
