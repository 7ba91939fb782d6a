"""Writes of commerce: checkout, Stripe webhooks (the only thing that makes an order paid), licences.

Lock order, everywhere: the StripeEvent row, then the Order row. Royalties are posted inside the
same transaction as the licence, so a sale is recorded whole or not at all.
"""

import logging
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from marketplace.commerce import signals, stripe_gateway
from marketplace.commerce.models import Order, PackLicence, StripeEvent
from marketplace.core import metrics
from marketplace.packs import selectors as pack_selectors
from marketplace.packs.models import PackVersion

logger = logging.getLogger(__name__)

HANDLED_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")


class CheckoutRefused(Exception):
    """The buyer cannot buy this version now; the message says why, and `current` is the version on sale
    instead (when the version itself is no longer sold and a newer one is)."""

    def __init__(self, message: str, *, current: PackVersion | None = None):
        super().__init__(message)
        self.current = current


class InvalidWebhook(Exception):
    """Not a genuine Stripe event for us: bad signature or malformed body."""


# --- checkout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    order: Order
    client_secret: str
    payment_status: str


def active_licence(buyer, version: PackVersion) -> PackLicence | None:
    return PackLicence.objects.filter(buyer=buyer, version=version, revoked_at__isnull=True).first()


def check_can_buy(buyer, version: PackVersion) -> None:
    if not buyer.is_authenticated:
        raise CheckoutRefused("Log in with a buyer account to license this pack.")
    if not buyer.is_buyer:
        raise CheckoutRefused("Your account is not a buyer account. Turn on buying in your account settings.")
    status = pack_selectors.sale_status(version)
    if not status.on_sale:
        raise CheckoutRefused(status.reason, current=status.current)
    if active_licence(buyer, version):
        raise CheckoutRefused("You already hold a licence for this version.")


def start_checkout(*, buyer, version: PackVersion) -> Checkout:
    """The buyer's open order for this version (or a new one) and its PaymentIntent.

    The amount always comes from the version, never from the browser. Paying again after a failed
    attempt reuses the same order and PaymentIntent.
    """
    check_can_buy(buyer, version)
    with transaction.atomic():
        order = (
            Order.objects.select_for_update()
            .filter(buyer=buyer, version=version, status__in=[Order.Status.PENDING, Order.Status.FAILED])
            .order_by("-created_at")
            .first()
        )
        if order is None:
            order = Order.objects.create(
                buyer=buyer, version=version, amount_cents=version.price_cents, currency=version.currency
            )
    # Stripe is called outside the transaction: no row lock is held across the network.
    if order.payment_intent_id:
        intent = stripe_gateway.retrieve_payment_intent(order.payment_intent_id)
    else:
        intent = stripe_gateway.create_payment_intent(
            amount_cents=order.amount_cents,
            currency=order.currency,
            order_id=order.pk,
            transfer_group=order.transfer_group,
            description=f"Licence: {version}",
            buyer_email=buyer.email,
        )
        # The idempotency key makes a concurrent second call return the same intent.
        Order.objects.filter(pk=order.pk, payment_intent_id__isnull=True).update(payment_intent_id=intent.id)
        order.refresh_from_db()
    return Checkout(order=order, client_secret=intent.client_secret, payment_status=intent.status)


def refund_order(order: Order) -> str:
    """Ask Stripe to refund a paid order. The licence is revoked when Stripe's charge.refunded arrives."""
    if order.status != Order.Status.PAID or not order.payment_intent_id:
        raise CheckoutRefused("Only a paid order can be refunded.")
    return stripe_gateway.refund_payment(intent_id=order.payment_intent_id, order_id=order.pk)


# --- webhooks ---------------------------------------------------------------------------------------


def handle_webhook(payload: bytes, signature_header: str) -> StripeEvent:
    """Verify, record once, and apply a Stripe event. Safe to deliver twice, concurrently, in any order."""
    try:
        event = stripe_gateway.verify_event(payload, signature_header or "")
    except Exception as error:  # SignatureVerificationError, ValueError for a malformed body
        raise InvalidWebhook(str(error) or error.__class__.__name__) from error
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise InvalidWebhook("The body is not a Stripe event.")

    record = _record_event(event)
    if record.processed_at:
        return record
    facts = _facts_from_stripe(event)  # network calls, before any lock
    with transaction.atomic():
        record = StripeEvent.objects.select_for_update().get(pk=record.pk)
        if record.processed_at:  # a concurrent delivery got here first
            return record
        outcome, order = _apply(event, facts)
        record.outcome, record.order, record.processed_at = outcome[:200], order, timezone.now()
        record.save(update_fields=["outcome", "order", "processed_at"])
    return record


def _record_event(event: dict) -> StripeEvent:
    try:
        with transaction.atomic():
            record, _ = StripeEvent.objects.get_or_create(
                event_id=event["id"], defaults={"type": event["type"], "payload": event}
            )
    except IntegrityError:  # created by a concurrent delivery between our read and insert
        record = StripeEvent.objects.get(event_id=event["id"])
    return record


def _object(event: dict) -> dict:
    return (event.get("data") or {}).get("object") or {}


def _order_for_intent(intent_id: str, *, lock: bool) -> Order | None:
    if not intent_id:
        return None
    orders = Order.objects.select_for_update() if lock else Order.objects
    return orders.select_related("version", "buyer").filter(payment_intent_id=intent_id).first()


def _charge_id(intent: dict) -> str:
    charge = intent.get("latest_charge")
    if isinstance(charge, dict):
        return charge.get("id", "")
    return charge or ""


def _facts_from_stripe(event: dict) -> dict:
    """What an event needs from Stripe's API: the fee of a successful payment."""
    if event["type"] != "payment_intent.succeeded":
        return {}
    order = _order_for_intent(_object(event).get("id", ""), lock=False)
    if order is None or order.status in (Order.Status.PAID, Order.Status.REFUNDED):
        return {}
    charge_id = _charge_id(_object(event))
    return {"charge_id": charge_id, "fee_cents": stripe_gateway.charge_fee_cents(charge_id)}


def _apply(event: dict, facts: dict) -> tuple[str, Order | None]:
    kind = event["type"]
    if kind not in HANDLED_EVENTS:
        return "ignored: not an event we act on", None
    obj = _object(event)
    intent_id = obj.get("id") if kind.startswith("payment_intent.") else obj.get("payment_intent")
    order = _order_for_intent(intent_id or "", lock=True)
    if order is None:
        return f"ignored: no order for payment {intent_id}", None
    if kind == "payment_intent.succeeded":
        return _payment_succeeded(order, obj, facts), order
    if kind == "payment_intent.payment_failed":
        return _payment_failed(order, obj), order
    return _charge_refunded(order, obj), order


def _payment_succeeded(order: Order, intent: dict, facts: dict) -> str:
    if order.status == Order.Status.PAID:
        return "duplicate: already fulfilled"
    if order.status == Order.Status.REFUNDED:
        return "ignored: refunded before fulfilment"
    if intent.get("amount") != order.amount_cents or (intent.get("currency") or "").lower() != order.currency:
        order.failure_reason = (
            f"Stripe reported {intent.get('amount')} {intent.get('currency')}, "
            f"the order is for {order.amount_cents} {order.currency}."
        )
        order.save(update_fields=["failure_reason"])
        logger.error("Order %s: amount mismatch, not fulfilled: %s", order.pk, order.failure_reason)
        return "refused: amount mismatch"
    if "fee_cents" not in facts:  # the order changed state between the fee lookup and the lock
        facts = {"charge_id": _charge_id(intent), "fee_cents": stripe_gateway.charge_fee_cents(_charge_id(intent))}
    order.status = Order.Status.PAID
    order.paid_at = timezone.now()
    order.charge_id = facts["charge_id"]
    order.fee_cents = facts["fee_cents"]
    order.failure_reason = ""
    order.save(update_fields=["status", "paid_at", "charge_id", "fee_cents", "failure_reason"])
    version = order.version
    licence = PackLicence.objects.create(
        order=order,
        buyer=order.buyer,
        version=version,
        terms=version.licence_terms,
        manifest_sha256=version.manifest_sha256,
    )
    from marketplace.royalties import services as royalties

    royalties.record_sale(order)
    transaction.on_commit(lambda: _send_licence_email(licence.pk))
    transaction.on_commit(partial(metrics.record_sale, order.currency, order.amount_cents))
    return f"fulfilled: licence {licence.pk}"


def _payment_failed(order: Order, intent: dict) -> str:
    if order.status != Order.Status.PENDING:
        return f"ignored: order is {order.status}"  # e.g. a failed attempt reported after a later success
    error = intent.get("last_payment_error") or {}
    order.status = Order.Status.FAILED
    order.failure_reason = error.get("message") or "The payment failed."
    order.save(update_fields=["status", "failure_reason"])
    return "payment failed"


def _charge_refunded(order: Order, charge: dict) -> str:
    refunded = int(charge.get("amount_refunded") or 0)
    if refunded < order.amount_cents:
        logger.warning("Order %s: partial refund of %s cents; the licence stands.", order.pk, refunded)
        return f"partial refund of {refunded} cents: licence kept"
    if order.status == Order.Status.REFUNDED:
        return "duplicate: already refunded"
    was_paid = order.status == Order.Status.PAID
    order.status = Order.Status.REFUNDED
    order.refunded_at = timezone.now()
    order.save(update_fields=["status", "refunded_at"])
    if not was_paid:
        return "refunded before fulfilment: nothing granted"
    revoked = list(PackLicence.objects.filter(order=order, revoked_at__isnull=True).values_list("pk", flat=True))
    PackLicence.objects.filter(pk__in=revoked).update(
        revoked_at=order.refunded_at, revoked_reason="The payment was refunded."
    )
    for licence_id in revoked:
        transaction.on_commit(partial(signals.licence_revoked.send, sender=PackLicence, licence_id=licence_id))
    from marketplace.royalties import services as royalties

    royalties.record_refund(order)
    return "refunded: licence revoked, royalties reversed"


# --- notices ------------------------------------------------------------------------------------------


def _send_licence_email(licence_pk) -> None:
    licence = PackLicence.objects.select_related("buyer", "version").get(pk=licence_pk)
    if not licence.buyer.email:
        return
    url = settings.SITE_URL + reverse("commerce:certificate", args=[licence.pk])
    send_mail(
        f"Your licence for {licence.version}",
        f"Thank you. Your licence {licence.pk} for {licence.version} is active.\n\n"
        f"Certificate and downloads: {url}\nManifest SHA-256: {licence.manifest_sha256}\n",
        settings.DEFAULT_FROM_EMAIL,
        [licence.buyer.email],
    )


def notify_licensees_of_revocations(revocation_ids: list[int]) -> int:
    """Tell every licensee of the affected versions which items were revoked, and why. Returns emails sent."""
    from marketplace.packs.models import Revocation

    revocations = list(
        Revocation.objects.filter(pk__in=revocation_ids).select_related(
            "version", "version__pack", "item", "item__creator"
        )
    )
    sent = 0
    by_version: dict[int, list] = {}
    for revocation in revocations:
        by_version.setdefault(revocation.version_id, []).append(revocation)
    for version_id, items in by_version.items():
        version = items[0].version
        lines = "\n".join(f"- {r.item.key} {r.item.title or ''} ({r.get_reason_display()})" for r in items)
        url = settings.SITE_URL + reverse("packs:revocations", args=[version.pack.slug, version.number])
        licences = PackLicence.objects.filter(version_id=version_id, revoked_at__isnull=True).select_related("buyer")
        for licence in licences:
            if not licence.buyer.email:
                continue
            send_mail(
                f"Items revoked from {version}",
                f"These items were taken out of {version}, which you license (each line says why):\n{lines}\n\n"
                f"Please remove them from your copies and future training runs. Revocation list: {url}\n",
                settings.DEFAULT_FROM_EMAIL,
                [licence.buyer.email],
            )
            sent += 1
    return sent
