"""The ledger under real concurrency, and the database's own guards (PostgreSQL triggers)."""

import threading
from collections import defaultdict
from contextlib import nullcontext

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from marketplace.royalties import selectors, services
from marketplace.royalties.allocation import allocate_sale
from marketplace.royalties.models import Account, AllocationLine, ConnectedAccount, Entry, Payout, Transaction
from tests.test_ledger import paid_order, publish_two_creator_version, publish_version
from tests.test_payouts import ACCOUNT_ID, install_recorded_stripe

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="runs on PostgreSQL (set DATABASE_URL)"),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def two_creator_version(alice, bob, make_eligible_asset):
    return publish_two_creator_version(alice, bob, make_eligible_asset)


@pytest.fixture
def fake_stripe(monkeypatch, settings):
    return install_recorded_stripe(monkeypatch, settings)


def run_together(calls, *, atomic=True) -> list:
    """Run each call in its own thread and database connection, all released at once; return the errors."""
    start = threading.Barrier(len(calls))
    errors = []

    def run(call):
        try:
            start.wait()
            # As commerce's webhook does: the sale commits with the fulfillment.
            with transaction.atomic() if atomic else nullcontext():
                call()
        except Exception as error:  # noqa: BLE001 - reported to the test
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_purchases_sharing_creators_all_post_exactly(alice, bob, carol, make_eligible_asset):
    a1, a2, a3 = (make_eligible_asset(alice, photo) for photo in ("astronaut", "coffee", "rocket"))
    b1, b2 = (make_eligible_asset(bob, photo) for photo in ("chelsea", "hubble"))
    versions = [
        publish_version([a1, a2, b1], price_cents=1000, title="Mixed"),
        publish_version([a3, b2], price_cents=2999, title="Pair"),
        publish_version([b1, b2, a1], price_cents=499, title="Bob heavy"),
    ]
    orders = [paid_order(versions[i % 3], carol, fee_cents=30 + i) for i in range(9)]
    expected = defaultdict(int)
    for order in orders:
        items = list(order.version.items.values_list("creator_id", "asset_id"))
        for creator_id, cents in allocate_sale(order.amount_cents, order.fee_cents, 15, items).creator_cents.items():
            expected[creator_id] += cents

    # No account exists yet: every thread also races to create the shared and creator accounts.
    errors = run_together([lambda order=order: services.record_sale(order) for order in orders])

    assert errors == []
    assert Transaction.objects.filter(kind=Transaction.Kind.SALE).count() == len(orders)
    assert selectors.available_cents(alice) == expected[alice.pk]
    assert selectors.available_cents(bob) == expected[bob.pk]
    assert Entry.objects.aggregate(total=Sum("amount_cents"))["total"] == 0
    assert Account.objects.filter(kind=Account.Kind.STRIPE_CLEARING).count() == 1
    assert Account.objects.filter(kind=Account.Kind.CREATOR_PAYABLE).count() == 2


def test_concurrent_duplicate_deliveries_of_one_sale_post_it_once(alice, bob, carol, make_eligible_asset):
    version = publish_version([make_eligible_asset(alice), make_eligible_asset(bob, "coffee")])
    order = paid_order(version, carol)

    errors = run_together([lambda: services.record_sale(order) for _ in range(6)])

    assert errors == []
    assert Transaction.objects.count() == 1
    assert Entry.objects.count() == 5 and AllocationLine.objects.count() == 2
    assert selectors.available_cents(alice) + selectors.available_cents(bob) == 800  # 941 net less 141


def _accounts(creator):
    return services.shared_account(Account.Kind.STRIPE_CLEARING, "usd"), services.creator_account(creator.pk, "usd")


def test_the_database_refuses_to_commit_an_unbalanced_transaction(alice):
    clearing, payable = _accounts(alice)
    # Bypassing post_transaction's own check: the deferred constraint trigger fires at commit.
    with pytest.raises(IntegrityError, match="does not balance"):
        with transaction.atomic():
            posted = Transaction.objects.create(kind="sale", idempotency_key="test:unbalanced", description="bad")
            Entry.objects.create(transaction=posted, account=clearing, amount_cents=100)
            Entry.objects.create(transaction=posted, account=payable, amount_cents=-99)
    assert not Transaction.objects.filter(idempotency_key="test:unbalanced").exists()

    # Balanced entries inserted one at a time are fine: the check waits for the commit.
    with transaction.atomic():
        posted = Transaction.objects.create(kind="sale", idempotency_key="test:balanced", description="ok")
        Entry.objects.create(transaction=posted, account=clearing, amount_cents=100)
        Entry.objects.create(transaction=posted, account=payable, amount_cents=-100)
    assert selectors.available_cents(alice) == 100


def test_the_database_refuses_updates_and_deletes_of_ledger_rows(two_creator_version, carol):
    sale = services.record_sale(paid_order(two_creator_version, carol))
    entry = sale.entries.first()

    with pytest.raises(IntegrityError, match="immutable"):
        Entry.objects.filter(pk=entry.pk).update(amount_cents=entry.amount_cents + 1)
    with pytest.raises(IntegrityError, match="immutable"):
        Entry.objects.filter(pk=entry.pk).delete()
    with pytest.raises(IntegrityError, match="immutable"):
        Transaction.objects.filter(pk=sale.pk).update(description="edited")
    with pytest.raises(IntegrityError, match="immutable"):
        AllocationLine.objects.filter(transaction=sale).update(amount_cents=0)
    with pytest.raises(IntegrityError, match="immutable"):
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM royalties_allocationline")

    entry.refresh_from_db()
    assert sale.entries.aggregate(total=Sum("amount_cents"))["total"] == 0
    assert AllocationLine.objects.filter(transaction=sale).count() == 3


def test_concurrent_payout_requests_send_one_payout(fake_stripe, two_creator_version, alice, carol, settings):
    settings.PAYOUT_MINIMUM_CENTS = 100
    fake_stripe.add("POST", "/v1/transfers", "transfer.json")
    services.record_sale(paid_order(two_creator_version, carol))
    ConnectedAccount.objects.create(creator=alice, stripe_account_id=ACCOUNT_ID, payouts_enabled=True)

    errors = run_together([lambda: services.pay_out(alice) for _ in range(4)], atomic=False)

    assert len(errors) == 3 and all(isinstance(error, ValidationError) for error in errors)
    payout = Payout.objects.get()
    assert payout.amount_cents == 533 and payout.status == Payout.Status.PAID
    assert len(fake_stripe.sent) == 1
    assert selectors.available_cents(alice) == 0
