"""Helpers for tests of buying: the Stripe settings and fake gateway fixtures, signed Stripe events, and a
running localstripe. A test module takes the fixtures by importing them (`from tests.commerce_helpers import
fake_stripe_fixture, stripe_settings_fixture`; each is registered under its `name`, so that a test's
`fake_stripe` argument does not shadow the import): stripe_settings is autouse there, and only there."""

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from marketplace.commerce import stripe_gateway

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_SECRET = "whsec_test_marketplace"
FEE = 175  # what the fake gateway says Stripe charged, in cents, on every charge


@pytest.fixture(name="stripe_settings", autouse=True)
def stripe_settings_fixture(settings):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.PLATFORM_SHARE_PERCENT = 15


@pytest.fixture(name="fake_stripe")
def fake_stripe_fixture(monkeypatch) -> list[dict]:
    """Stripe's API as the tests need it: intents are created (their arguments recorded in the list it
    returns) and retrieved, every charge costs FEE."""
    created = []

    def create_payment_intent(**kwargs):
        created.append(kwargs)
        return stripe_gateway.Intent(
            f"pi_test_{kwargs['order_id']}", f"pi_test_{kwargs['order_id']}_secret_x", "requires_payment_method",
            kwargs["amount_cents"], kwargs["currency"],
        )  # fmt: skip

    def retrieve_payment_intent(intent_id):
        return stripe_gateway.Intent(intent_id, f"{intent_id}_secret_x", "requires_payment_method", 0, "usd")

    monkeypatch.setattr(stripe_gateway, "create_payment_intent", create_payment_intent)
    monkeypatch.setattr(stripe_gateway, "retrieve_payment_intent", retrieve_payment_intent)
    monkeypatch.setattr(stripe_gateway, "charge_fee_cents", lambda charge_id: FEE)
    return created


def signed(event: dict, secret: str = WEBHOOK_SECRET, *, timestamp: int | None = None) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send for this event."""
    payload = json.dumps(event).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={timestamp},v1={signature}"


def intent_event(kind: str, order, *, event_id: str, amount: int | None = None, error: str = "") -> dict:
    intent = {
        "id": order.payment_intent_id,
        "object": "payment_intent",
        "amount": order.amount_cents if amount is None else amount,
        "currency": order.currency,
        "metadata": {"order_id": str(order.pk)},
        "latest_charge": f"ch_for_{order.pk}",
        "status": "succeeded" if kind.endswith("succeeded") else "requires_payment_method",
    }
    if error:
        intent["last_payment_error"] = {"code": "card_declined", "message": error}
    return {"id": event_id, "object": "event", "type": kind, "data": {"object": intent}}


def refund_event(order, *, event_id: str, refunded: int | None = None) -> dict:
    charge = {
        "id": f"ch_for_{order.pk}",
        "object": "charge",
        "amount": order.amount_cents,
        "amount_refunded": order.amount_cents if refunded is None else refunded,
        "payment_intent": order.payment_intent_id,
        "refunded": refunded is None,
    }
    return {"id": event_id, "object": "event", "type": "charge.refunded", "data": {"object": charge}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalStripe:
    """Our extended localstripe in a subprocess on a free port, with nothing kept between runs."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "marketplace.commerce.localstripe_server", "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/js.stripe.com/v3/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("localstripe did not start")

    def register_webhook(self, url: str, secret: str = WEBHOOK_SECRET) -> None:
        response = requests.post(f"{self.url}/_config/webhooks/marketplace", data={"url": url, "secret": secret})
        response.raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def paid_licence(version, buyer):
    """What a paid Stripe event leaves behind: a paid order and its licence (the payment flow itself is
    tests/test_commerce.py's)."""
    from django.utils import timezone

    from marketplace.commerce.models import Order, PackLicence

    order = Order.objects.create(
        buyer=buyer,
        version=version,
        amount_cents=version.price_cents,
        currency="usd",
        status=Order.Status.PAID,
        paid_at=timezone.now(),
    )
    return PackLicence.objects.create(
        order=order, buyer=buyer, version=version, terms=version.licence_terms, manifest_sha256=version.manifest_sha256
    )
