"""The Stripe client that sends creators' payouts (Connect), configured from settings."""

import stripe
from django.conf import settings


def client() -> stripe.StripeClient:
    """A client of the platform account. An empty STRIPE_API_BASE means api.stripe.com.

    Requests go through `stripe.default_http_client` when one is set (tests plug recorded responses in
    there); otherwise stripe-python makes its own. Retries are safe: every POST carries an idempotency key.
    """
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None,
        http_client=stripe.default_http_client,
        max_network_retries=2,
    )
