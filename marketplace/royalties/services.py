"""Writes of the royalty ledger: sales, refunds, and payouts to creators through Stripe Connect.

Every movement of money is one balanced transaction posted by `post_transaction`, identified by an
idempotency key so that the same business event can never be posted twice.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass

import stripe
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef

from marketplace.commerce import stripe_gateway
from marketplace.core.money import format_cents
from marketplace.packs.models import Revocation
from marketplace.royalties import selectors
from marketplace.royalties.allocation import allocate_sale
from marketplace.royalties.models import Account, AllocationLine, ConnectedAccount, Entry, Payout, Transaction

logger = logging.getLogger(__name__)

Kind = Account.Kind


@dataclass(frozen=True)
class Line:
    """What one image earns (positive) or gives back (negative) in a transaction."""

    creator_id: int
    asset_id: int
    version_id: int
    amount_cents: int


# --- accounts ---------------------------------------------------------------------------------


def shared_account(kind: str, currency: str) -> Account:
    """The platform's account of this kind; made on first use (get_or_create survives a concurrent insert)."""
    account, _ = Account.objects.get_or_create(kind=kind, currency=currency, creator=None)
    return account


def creator_account(creator_id: int, currency: str) -> Account:
    account, _ = Account.objects.get_or_create(
        creator_id=creator_id, defaults={"kind": Kind.CREATOR_PAYABLE, "currency": currency}
    )
    if account.currency != currency:
        raise ValidationError(
            f"Creator {creator_id} is paid in {account.currency.upper()}; a sale in {currency.upper()} cannot be "
            "credited to them."
        )
    return account


# --- posting ------------------------------------------------------------------------------------


def _check_balanced(entries: list[tuple[Account, int]], lines: list[Line]) -> None:
    if len(entries) < 2:
        raise ValidationError("A transaction moves money between at least two accounts.")
    for _, cents in entries:
        if type(cents) is not int or cents == 0:
            raise ValidationError(f"An entry must be a non-zero whole number of cents, not {cents!r}.")
    if sum(cents for _, cents in entries) != 0:
        raise ValidationError(f"The entries do not balance: they sum to {sum(c for _, c in entries)} cents.")
    if len({account.currency for account, _ in entries}) != 1:
        raise ValidationError("A transaction's accounts must all be in one currency.")
    if not lines:
        return
    # Allocation lines explain the creators' entries to the cent: each creator's lines sum to what
    # their payable account was credited.
    credited: dict[int, int] = defaultdict(int)
    for account, cents in entries:
        if account.kind == Kind.CREATOR_PAYABLE:
            credited[account.creator_id] -= cents
    explained: dict[int, int] = defaultdict(int)
    for line in lines:
        if type(line.amount_cents) is not int:
            raise ValidationError(f"An allocation line must be a whole number of cents, not {line.amount_cents!r}.")
        explained[line.creator_id] += line.amount_cents
    if dict(credited) != dict(explained):
        raise ValidationError("The allocation lines do not add up to what each creator is credited.")


def post_transaction(
    kind: str,
    idempotency_key: str,
    entries: list[tuple[Account, int]],
    lines: list[Line] = (),
    *,
    description: str,
    order=None,
    payout: Payout | None = None,
    reverses: Transaction | None = None,
) -> Transaction:
    """Validate and write one balanced transaction with its entries and allocation lines, all or nothing.

    Posting a key that exists returns the existing transaction and writes nothing, also when two
    processes post it at once: the second insert waits for the first, hits the unique key and reads it.
    """
    lines = list(lines)
    with transaction.atomic():
        existing = Transaction.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
        _check_balanced(entries, lines)
        try:
            with transaction.atomic():
                posted = Transaction.objects.create(
                    kind=kind,
                    idempotency_key=idempotency_key,
                    order=order,
                    payout=payout,
                    reverses=reverses,
                    description=description[:300],
                )
        except IntegrityError:
            existing = Transaction.objects.filter(idempotency_key=idempotency_key).first()
            if existing is None:
                raise
            return existing
        Entry.objects.bulk_create(
            Entry(transaction=posted, account=account, amount_cents=cents) for account, cents in entries
        )
        AllocationLine.objects.bulk_create(
            AllocationLine(
                transaction=posted,
                creator_id=line.creator_id,
                asset_id=line.asset_id,
                version_id=line.version_id,
                amount_cents=line.amount_cents,
            )
            for line in lines
        )
    return posted


def reverse_transaction(original: Transaction, *, kind: str, idempotency_key: str, description: str, payout=None):
    """Post the exact negation of `original`: its entries and allocation lines with the signs flipped."""
    with transaction.atomic():
        existing = Transaction.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
        if Transaction.objects.filter(reverses=original).exists():
            raise ValidationError(f"Transaction {original.pk} ({original.idempotency_key}) was already reversed.")
        entries = [(entry.account, -entry.amount_cents) for entry in original.entries.select_related("account")]
        lines = [
            Line(line.creator_id, line.asset_id, line.version_id, -line.amount_cents)
            for line in original.allocation_lines.all()
        ]
        return post_transaction(
            kind,
            idempotency_key,
            entries,
            lines,
            description=description,
            order=original.order,
            payout=payout or original.payout,
            reverses=original,
        )


# --- sales and refunds (called by commerce inside its webhook transaction) ---------------------


def sale_key(order) -> str:
    return f"sale:order:{order.pk}"


def record_sale(order) -> Transaction:
    """Post the sale of `order` and credit each creator their royalties. Idempotent per order."""
    with transaction.atomic():
        existing = Transaction.objects.filter(idempotency_key=sale_key(order)).first()
        if existing is not None:
            return existing
        # An image revoked from the version (withdrawn, or taken down) is not delivered to new buyers,
        # so it earns nothing from sales recorded after its revocation.
        revoked = Revocation.objects.filter(item=OuterRef("pk"))
        live_items = order.version.items.exclude(Exists(revoked)).order_by("asset_id")
        items = list(live_items.values_list("creator_id", "asset_id"))
        try:
            split = allocate_sale(order.amount_cents, order.fee_cents or 0, settings.PLATFORM_SHARE_PERCENT, items)
        except ValueError as error:
            raise ValidationError(f"Order {order.pk} cannot be recorded: {error}") from error
        currency = order.currency.lower()
        # Accounts are made in one fixed order (shared kinds, then creators by id) so that concurrent
        # sales creating the same accounts wait for each other instead of deadlocking.
        clearing = shared_account(Kind.STRIPE_CLEARING, currency)
        fees = shared_account(Kind.STRIPE_FEES, currency)
        revenue = shared_account(Kind.PLATFORM_REVENUE, currency)
        entries = [(clearing, split.net_cents), (fees, split.fee_cents), (revenue, -split.platform_revenue_cents)]
        for creator_id in sorted(split.creator_cents):
            entries.append((creator_account(creator_id, currency), -split.creator_cents[creator_id]))
        lines = [
            Line(split.asset_creator[asset_id], asset_id, order.version_id, cents)
            for asset_id, cents in sorted(split.asset_cents.items())
            if cents
        ]
        return post_transaction(
            Transaction.Kind.SALE,
            sale_key(order),
            [(account, cents) for account, cents in entries if cents],
            lines,
            description=f"Sale of {order.version} (order {order.pk})",
            order=order,
        )


def record_refund(order) -> Transaction:
    """Reverse the sale of `order`: the creators give back exactly what it credited them, the platform its
    revenue, and the whole amount leaves the Stripe balance. Stripe keeps its fee on a refund, so the fee
    stays booked: the platform bears it. Idempotent per order."""
    with transaction.atomic():
        key = f"refund:order:{order.pk}"
        existing = Transaction.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return existing
        sale = Transaction.objects.filter(idempotency_key=sale_key(order)).first()
        if sale is None:
            raise ValidationError(f"Order {order.pk} has no recorded sale to refund.")
        if Transaction.objects.filter(reverses=sale).exists():
            raise ValidationError(f"The sale of order {order.pk} was already reversed.")
        entries = []
        for entry in sale.entries.select_related("account"):
            if entry.account.kind == Kind.STRIPE_FEES:
                continue
            cents = -order.amount_cents if entry.account.kind == Kind.STRIPE_CLEARING else -entry.amount_cents
            entries.append((entry.account, cents))
        lines = [
            Line(line.creator_id, line.asset_id, line.version_id, -line.amount_cents)
            for line in sale.allocation_lines.all()
        ]
        return post_transaction(
            Transaction.Kind.REFUND,
            key,
            entries,
            lines,
            description=f"Refund of {order.version} (order {order.pk}); Stripe kept its fee",
            order=order,
            reverses=sale,
        )


# --- payouts to creators through Stripe Connect Express -------------------------------------------


def _require_connect() -> None:
    if not settings.STRIPE_CONNECT_ENABLED:
        raise ValidationError(
            "Payouts are not configured on this site yet. Your earnings keep accruing and will be paid once they are."
        )


def connect_account(creator) -> ConnectedAccount:
    """The creator's Express account, opened at Stripe on first use. The idempotency key makes a repeated or
    concurrent call get the same Stripe account back, never a second one."""
    _require_connect()
    existing = selectors.connected_account(creator)
    if existing is not None:
        return existing
    profile = getattr(creator, "creator_profile", None)
    email = (profile.payout_email if profile is not None else "") or creator.email
    account = stripe_gateway.client().v1.accounts.create(
        params={
            "type": "express",
            "email": email,
            "capabilities": {"transfers": {"requested": True}},
            "metadata": {"creator_id": str(creator.pk)},
        },
        options={"idempotency_key": f"connect-account-{creator.pk}"},
    )
    connected, _ = ConnectedAccount.objects.get_or_create(
        creator=creator,
        defaults={
            "stripe_account_id": account.id,
            "details_submitted": bool(account.details_submitted),
            "payouts_enabled": bool(account.payouts_enabled),
        },
    )
    return connected


def onboarding_url(connected: ConnectedAccount, *, refresh_url: str, return_url: str) -> str:
    """A fresh, single-use link to Stripe's onboarding for the account (links expire, so no fixed key)."""
    _require_connect()
    link = stripe_gateway.client().v1.account_links.create(
        params={
            "account": connected.stripe_account_id,
            "type": "account_onboarding",
            "refresh_url": refresh_url,
            "return_url": return_url,
        }
    )
    return link.url


def refresh_connected_account(connected: ConnectedAccount) -> ConnectedAccount:
    """Read the account's state from Stripe: whether onboarding is done and payouts can be sent to it."""
    _require_connect()
    account = stripe_gateway.client().v1.accounts.retrieve(connected.stripe_account_id)
    connected.details_submitted = bool(account.details_submitted)
    connected.payouts_enabled = bool(account.payouts_enabled)
    connected.save(update_fields=["details_submitted", "payouts_enabled", "updated_at"])
    return connected


def _payout_key(payout_id: int) -> str:
    return f"payout:{payout_id}"


def _start_payout(creator) -> Payout:
    """Create the payout of the creator's whole balance and post it as money in transit, all or nothing.

    The row lock on the creator's payable account makes concurrent requests for one creator wait for each
    other: the second then sees the first's pending payout (or the balance it left), so never pays twice.
    """
    connected = selectors.connected_account(creator)
    if connected is None or not connected.payouts_enabled:
        raise ValidationError("Finish setting up your Stripe account before requesting a payout.")
    with transaction.atomic():
        payable = Account.objects.select_for_update().filter(creator=creator, kind=Kind.CREATOR_PAYABLE).first()
        if Payout.objects.filter(creator=creator, status=Payout.Status.PENDING).exists():
            raise ValidationError(
                "A payout is already on its way to your Stripe account; a new one can follow once it has arrived."
            )
        currency = payable.currency if payable else "usd"
        available = selectors.available_cents(creator) if payable else 0
        minimum = max(settings.PAYOUT_MINIMUM_CENTS, 1)
        if available < minimum:
            raise ValidationError(
                f"Your balance of {format_cents(available, currency)} is below the payout minimum of "
                f"{format_cents(minimum, currency)}."
            )
        payout = Payout.objects.create(creator=creator, amount_cents=available, currency=currency)
        post_transaction(
            Transaction.Kind.PAYOUT,
            _payout_key(payout.pk),
            [(payable, available), (shared_account(Kind.PAYOUTS, currency), -available)],
            description=f"Payout {payout.pk} to Stripe account {connected.stripe_account_id}",
            payout=payout,
        )
    return payout


def pay_out(creator) -> Payout:
    """Pay the creator's whole balance to their Stripe account. Raises ValidationError when they cannot be
    paid now (with a message for them). Returns the payout: paid, failed (and reversed), or still pending
    when Stripe's answer was lost (the periodic task resends it)."""
    _require_connect()
    api = stripe_gateway.client()  # a configuration error (no key...) surfaces here, before any money moves
    payout = _start_payout(creator)
    # Committed: from here on the payout exists, and it is sent (or resent) with its idempotency key.
    return send_payout(payout.pk, api=api)


def _outcome_unknown(error: stripe.StripeError) -> bool:
    """Whether the transfer may have been made despite the error: the request or its answer was lost
    (connection error), Stripe failed (5xx), or it did not process the request yet (429 rate limit, 409 the
    same idempotency key in flight). Any other answer (4xx) is a refusal: no money moved."""
    if isinstance(error, stripe.APIConnectionError):
        return True
    status = error.http_status
    return status is None or status >= 500 or status in (409, 429)


def send_payout(payout_id: int, *, api: stripe.StripeClient | None = None) -> Payout:
    """Send a pending payout to Stripe as a transfer to the creator's account, then settle or fail it.
    Sending again is safe: the idempotency key makes Stripe answer with the transfer it already made."""
    payout = Payout.objects.get(pk=payout_id)
    if payout.status != Payout.Status.PENDING:
        return payout
    connected = ConnectedAccount.objects.get(creator_id=payout.creator_id)
    try:
        transfer = (api or stripe_gateway.client()).v1.transfers.create(
            # No transfer_group: a payout draws on the balance of many sales, so no single order's group fits.
            params={
                "amount": payout.amount_cents,
                "currency": payout.currency,
                "destination": connected.stripe_account_id,
                "description": f"Royalties payout {payout.pk}",
                "metadata": {"payout_id": str(payout.pk), "creator_id": str(payout.creator_id)},
            },
            options={"idempotency_key": f"payout-{payout.pk}"},
        )
    except stripe.StripeError as error:
        if _outcome_unknown(error):
            logger.warning("Payout %s: Stripe's answer was lost (%s); it stays pending to be resent", payout.pk, error)
            return payout
        logger.warning("Payout %s was refused by Stripe: %s", payout.pk, error)
        return _fail_payout(payout.pk, error.user_message or str(error))
    return _settle_payout(payout.pk, transfer.id)


def _settle_payout(payout_id: int, transfer_id: str) -> Payout:
    """Stripe made the transfer: the money has left the platform's Stripe balance."""
    with transaction.atomic():
        payout = Payout.objects.select_for_update().get(pk=payout_id)
        if payout.status != Payout.Status.PENDING:
            return payout
        payout.status = Payout.Status.PAID
        payout.stripe_transfer_id = transfer_id
        payout.save(update_fields=["status", "stripe_transfer_id", "updated_at"])
        post_transaction(
            Transaction.Kind.PAYOUT_SETTLED,
            f"payout-settled:{payout.pk}",
            [
                (shared_account(Kind.PAYOUTS, payout.currency), payout.amount_cents),
                (shared_account(Kind.STRIPE_CLEARING, payout.currency), -payout.amount_cents),
            ],
            description=f"Payout {payout.pk} settled by Stripe transfer {transfer_id}",
            payout=payout,
        )
    return payout


def _fail_payout(payout_id: int, reason: str) -> Payout:
    """Stripe refused the transfer: the payout is reversed and the amount is back in the creator's balance."""
    with transaction.atomic():
        payout = Payout.objects.select_for_update().get(pk=payout_id)
        if payout.status != Payout.Status.PENDING:
            return payout
        payout.status = Payout.Status.FAILED
        payout.failure_reason = reason
        payout.save(update_fields=["status", "failure_reason", "updated_at"])
        sent = Transaction.objects.get(idempotency_key=_payout_key(payout.pk))
        reverse_transaction(
            sent,
            kind=Transaction.Kind.PAYOUT_FAILED,
            idempotency_key=f"payout-failed:{payout.pk}",
            description=f"Payout {payout.pk} failed and was reversed",
            payout=payout,
        )
    return payout


def pay_out_all() -> dict:
    """Resend the payouts whose outcome is unknown, then pay every creator who is due. Returns, by payout id
    (resent) or creator id (paid, refused), each payout's status or the reason it was refused. A creator is
    never paid twice: their pending payout refuses a new one, and a resent payout keeps its idempotency key."""
    result = {"resent": {}, "paid": {}, "refused": {}}
    if not settings.STRIPE_CONNECT_ENABLED:
        return result
    api = stripe_gateway.client()
    for payout_id in selectors.pending_payout_ids():
        result["resent"][payout_id] = send_payout(payout_id, api=api).status
    for creator in selectors.creators_due_payout():
        try:
            payout = _start_payout(creator)
        except ValidationError as error:
            result["refused"][creator.pk] = error.messages[0]
            continue
        result["paid"][creator.pk] = send_payout(payout.pk, api=api).status
    return result
