"""The royalty ledger: how a sale is split (property tests), and sales and refunds posted to the database."""

import random
import uuid
from collections import Counter

import pytest
from django.core.exceptions import ValidationError
from django.db.models import Sum
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from marketplace.commerce.models import Order
from marketplace.packs import services as packs
from marketplace.packs.models import Pack, PackVersion, Revocation
from marketplace.royalties import selectors, services
from marketplace.royalties.allocation import allocate_sale, largest_remainder
from marketplace.royalties.models import Account, AllocationLine, Entry, Transaction

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble", "retina"]


# --- helpers shared by the royalty tests -------------------------------------------------------


def publish_version(assets, *, price_cents=1000, title="Everyday photos", number=1) -> PackVersion:
    """A published version holding `assets`, frozen by the packs service (with a small datasheet stand-in)."""
    pack = Pack.objects.create(title=title, slug=f"pack-{uuid.uuid4().hex[:10]}", price_cents=price_cents)
    items = packs.items_for(assets)
    return packs.freeze_version(
        pack,
        number=number,
        published_at=timezone.now().replace(microsecond=0),
        items=items,
        actor=None,
        terms=packs.licence_terms(pack.use, items),
        datasheet={"title": title},
    )


def paid_order(version, buyer, *, amount_cents=None, fee_cents=59) -> Order:
    return Order.objects.create(
        buyer=buyer,
        version=version,
        amount_cents=amount_cents or version.price_cents,
        currency="usd",
        status=Order.Status.PAID,
        fee_cents=fee_cents,
        paid_at=timezone.now(),
    )


def account_total(kind) -> int:
    return Entry.objects.filter(account__kind=kind).aggregate(total=Sum("amount_cents"))["total"] or 0


def publish_two_creator_version(alice, bob, make_eligible_asset) -> PackVersion:
    """Two images by Alice and one by Bob, at $10.00."""
    assets = [make_eligible_asset(alice, "astronaut"), make_eligible_asset(alice, "coffee")]
    assets.append(make_eligible_asset(bob, "chelsea"))
    return publish_version(assets, price_cents=1000)


@pytest.fixture
def two_creator_version(alice, bob, make_eligible_asset):
    return publish_two_creator_version(alice, bob, make_eligible_asset)


# --- the split, as pure arithmetic ----------------------------------------------------------------


@st.composite
def sales(draw):
    amount = draw(st.integers(min_value=1, max_value=10**9))
    fee = draw(st.integers(min_value=0, max_value=amount))
    share = draw(st.integers(min_value=0, max_value=100))
    images_per_creator = draw(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=50))
    creator_ids = draw(st.lists(st.integers(1, 10**6), min_size=len(images_per_creator),
                                max_size=len(images_per_creator), unique=True))  # fmt: skip
    items, next_asset = [], 1
    for creator_id, count in zip(creator_ids, images_per_creator, strict=True):
        for _ in range(count):
            items.append((creator_id, next_asset))
            next_asset += draw(st.integers(min_value=1, max_value=5))
    draw(st.randoms(use_true_random=False)).shuffle(items)
    return amount, fee, share, items


@hypothesis_settings(max_examples=300, deadline=None)
@given(sales())
def test_every_sale_splits_exactly_to_the_cent(sale):
    amount, fee, share, items = sale
    split = allocate_sale(amount, fee, share, items)

    # The postings of a sale balance: clearing +net, fees +fee, platform -(amount - pool), creators -allocation.
    postings = [split.net_cents, split.fee_cents, -split.platform_revenue_cents]
    postings += [-cents for cents in split.creator_cents.values()]
    assert sum(postings) == 0
    assert split.net_cents == amount - fee
    assert split.platform_share_cents == (amount - fee) * share // 100
    assert sum(split.creator_cents.values()) == split.pool_cents == split.net_cents - split.platform_share_cents

    counts = Counter(creator_id for creator_id, _ in items)
    total_items = len(items)
    for creator_id, cents in split.creator_cents.items():
        assert cents >= 0
        # Within one cent of the exact pro-rata share pool * n / N (compared in integers).
        assert abs(cents * total_items - split.pool_cents * counts[creator_id]) < total_items
        own = [split.asset_cents[asset_id] for owner, asset_id in items if owner == creator_id]
        assert sum(own) == cents
        assert max(own) - min(own) <= 1
    assert set(split.asset_cents) == {asset_id for _, asset_id in items}
    assert all(cents >= 0 for cents in split.asset_cents.values())


@hypothesis_settings(max_examples=100, deadline=None)
@given(sales(), st.randoms(use_true_random=False))
def test_the_split_does_not_depend_on_item_order(sale, rng):
    amount, fee, share, items = sale
    shuffled = list(items)
    rng.shuffle(shuffled)
    assert allocate_sale(amount, fee, share, items) == allocate_sale(amount, fee, share, shuffled)


def test_left_over_cents_go_to_the_largest_remainders_then_the_smaller_id():
    # 100 cents over three equal weights: 33.33 each, the left-over cent goes to the smallest id.
    assert largest_remainder(100, {7: 1, 3: 1, 5: 1}) == {3: 34, 5: 33, 7: 33}
    # 800 over 2:1 -> 533.33 and 266.67: the larger remainder (Bob's .67) gets the cent.
    assert largest_remainder(800, {1: 2, 2: 1}) == {1: 533, 2: 267}


@pytest.mark.parametrize(
    ("amount", "fee", "share", "items", "message"),
    [
        (0, 0, 15, [(1, 1)], "positive"),
        (1000, 1001, 15, [(1, 1)], "fee"),
        (1000, -1, 15, [(1, 1)], "fee"),
        (1000, 0, 101, [(1, 1)], "percentage"),
        (1000, 0, 15, [], "at least one image"),
        (1000, 0, 15, [(1, 1), (2, 1)], "twice"),
        (10.5, 0, 15, [(1, 1)], "positive"),
    ],
)
def test_impossible_sales_are_refused(amount, fee, share, items, message):
    with pytest.raises(ValueError, match=message):
        allocate_sale(amount, fee, share, items)


# --- sales and refunds on the database ------------------------------------------------------------


def test_a_sale_credits_each_creator_pro_rata_and_balances(two_creator_version, alice, bob, carol):
    order = paid_order(two_creator_version, carol, fee_cents=59)

    sale = services.record_sale(order)

    # net 941; platform 15 % = 141; pool 800 split 2:1 -> 533.33 / 266.67 -> Alice 533, Bob 267.
    assert sale.kind == Transaction.Kind.SALE and sale.order == order
    assert sale.entries.aggregate(total=Sum("amount_cents"))["total"] == 0
    assert selectors.available_cents(alice) == 533
    assert selectors.available_cents(bob) == 267
    assert account_total(Account.Kind.STRIPE_CLEARING) == 941
    assert account_total(Account.Kind.STRIPE_FEES) == 59
    assert account_total(Account.Kind.PLATFORM_REVENUE) == -200
    alice_lines = sorted(sale.allocation_lines.filter(creator=alice).values_list("amount_cents", flat=True))
    assert alice_lines == [266, 267]
    assert list(sale.allocation_lines.filter(creator=bob).values_list("amount_cents", flat=True)) == [267]
    assert set(sale.allocation_lines.values_list("version", flat=True)) == {two_creator_version.pk}


def test_recording_a_sale_twice_posts_it_once(two_creator_version, alice, carol):
    order = paid_order(two_creator_version, carol)
    first = services.record_sale(order)
    again = services.record_sale(order)
    assert again.pk == first.pk
    assert Transaction.objects.count() == 1
    assert Entry.objects.count() == 5 and AllocationLine.objects.count() == 3
    assert selectors.available_cents(alice) == 533


def test_a_refund_reverses_the_creators_and_the_platform_and_stripe_keeps_its_fee(
    two_creator_version, alice, bob, carol
):
    order = paid_order(two_creator_version, carol, fee_cents=59)
    sale = services.record_sale(order)
    services.record_sale(paid_order(two_creator_version, carol, fee_cents=59))  # another buyer's sale stays

    refund = services.record_refund(order)

    assert refund.kind == Transaction.Kind.REFUND and refund.reverses == sale and refund.order == order
    assert refund.entries.aggregate(total=Sum("amount_cents"))["total"] == 0
    kinds = dict(refund.entries.values_list("account__kind", "amount_cents").exclude(account__kind="creator_payable"))
    # The whole price leaves the Stripe balance; the fee is not returned: it stays booked as the platform's cost.
    assert kinds == {Account.Kind.STRIPE_CLEARING: -1000, Account.Kind.PLATFORM_REVENUE: 200}
    assert account_total(Account.Kind.STRIPE_FEES) == 2 * 59
    assert account_total(Account.Kind.STRIPE_CLEARING) == 941 + 941 - 1000
    sale_creators = sorted(
        sale.entries.filter(account__kind="creator_payable").values_list("account_id", "amount_cents")
    )
    refund_creators = refund.entries.filter(account__kind="creator_payable").values_list("account_id", "amount_cents")
    assert sorted(refund_creators) == [(a, -c) for a, c in sale_creators]
    sale_lines = sorted(sale.allocation_lines.values_list("asset_id", "amount_cents"))
    assert sorted(refund.allocation_lines.values_list("asset_id", "amount_cents")) == [(a, -c) for a, c in sale_lines]
    assert selectors.available_cents(alice) == 533 and selectors.available_cents(bob) == 267
    assert services.record_refund(order).pk == refund.pk  # idempotent
    assert Transaction.objects.filter(kind=Transaction.Kind.REFUND).count() == 1


def test_refunding_an_order_without_a_recorded_sale_is_refused(two_creator_version, carol):
    with pytest.raises(ValidationError, match="no recorded sale"):
        services.record_refund(paid_order(two_creator_version, carol))
    assert not Transaction.objects.exists()


def test_ledger_rows_cannot_be_changed_or_deleted(two_creator_version, carol):
    sale = services.record_sale(paid_order(two_creator_version, carol))
    entry, line = sale.entries.first(), sale.allocation_lines.first()
    for row in (sale, entry, line):
        with pytest.raises(ValidationError, match="immutable"):
            row.save()
        with pytest.raises(ValidationError, match="immutable"):
            row.delete()
    assert Entry.objects.filter(pk=entry.pk, amount_cents=entry.amount_cents).exists()


def test_an_unbalanced_transaction_is_refused_and_nothing_is_written(alice):
    clearing = services.shared_account(Account.Kind.STRIPE_CLEARING, "usd")
    payable = services.creator_account(alice.pk, "usd")
    with pytest.raises(ValidationError, match="do not balance"):
        services.post_transaction("sale", "test:unbalanced", [(clearing, 100), (payable, -99)], description="bad")
    with pytest.raises(ValidationError, match="non-zero whole number"):
        services.post_transaction("sale", "test:zero", [(clearing, 0), (payable, 0)], description="bad")
    with pytest.raises(ValidationError, match="non-zero whole number"):
        services.post_transaction("sale", "test:float", [(clearing, 1.5), (payable, -1.5)], description="bad")
    with pytest.raises(ValidationError, match="at least two accounts"):
        services.post_transaction("sale", "test:single", [(clearing, 100)], description="bad")
    assert not Transaction.objects.exists() and not Entry.objects.exists()


def test_allocation_lines_must_explain_the_creator_entries(alice, make_eligible_asset):
    asset = make_eligible_asset(alice)
    version = publish_version([asset])
    clearing = services.shared_account(Account.Kind.STRIPE_CLEARING, "usd")
    payable = services.creator_account(alice.pk, "usd")
    wrong = [services.Line(alice.pk, asset.pk, version.pk, 90)]
    with pytest.raises(ValidationError, match="allocation lines do not add up"):
        services.post_transaction("sale", "test:lines", [(clearing, 100), (payable, -100)], wrong, description="x")
    assert not Transaction.objects.exists()


def test_an_impossible_order_is_refused_with_the_reason(two_creator_version, carol, alice, make_eligible_asset):
    with pytest.raises(ValidationError, match="fee must be between"):
        services.record_sale(paid_order(two_creator_version, carol, amount_cents=100, fee_cents=101))
    empty = publish_version([], title="Empty")
    with pytest.raises(ValidationError, match="at least one image"):
        services.record_sale(paid_order(empty, carol))
    assert not Transaction.objects.exists()
    assert selectors.available_cents(alice) == 0


def test_a_missing_stripe_fee_counts_as_zero_and_platform_share_follows_the_setting(
    two_creator_version, alice, bob, carol, settings
):
    settings.PLATFORM_SHARE_PERCENT = 40
    services.record_sale(paid_order(two_creator_version, carol, fee_cents=None))
    # net 1000; platform 400; pool 600 split 2:1 -> 400 / 200.
    assert selectors.available_cents(alice) == 400 and selectors.available_cents(bob) == 200
    assert account_total(Account.Kind.STRIPE_FEES) == 0


def test_when_the_platform_keeps_everything_creators_get_no_entries(two_creator_version, alice, carol, settings):
    settings.PLATFORM_SHARE_PERCENT = 100
    sale = services.record_sale(paid_order(two_creator_version, carol))
    assert not sale.allocation_lines.exists()
    assert sale.entries.aggregate(total=Sum("amount_cents"))["total"] == 0
    assert selectors.available_cents(alice) == 0


def test_many_sales_keep_every_account_exact(two_creator_version, alice, bob, carol):
    rng = random.Random(7)
    expected_alice = expected_bob = 0
    for _ in range(12):
        amount, fee = rng.randint(100, 50_000), rng.randint(0, 99)
        split = allocate_sale(amount, fee, 15, [(alice.pk, 1), (alice.pk, 2), (bob.pk, 3)])
        expected_alice += split.creator_cents[alice.pk]
        expected_bob += split.creator_cents[bob.pk]
        services.record_sale(paid_order(two_creator_version, carol, amount_cents=amount, fee_cents=fee))
    assert selectors.available_cents(alice) == expected_alice
    assert selectors.available_cents(bob) == expected_bob
    assert Entry.objects.aggregate(total=Sum("amount_cents"))["total"] == 0
    for sale in Transaction.objects.all():
        assert sale.entries.aggregate(total=Sum("amount_cents"))["total"] == 0


def test_an_image_revoked_from_the_version_earns_nothing_from_later_sales(two_creator_version, alice, bob, carol):
    services.record_sale(paid_order(two_creator_version, carol, fee_cents=0))  # before: Alice 567, Bob 283
    cat = two_creator_version.items.get(creator=bob)
    Revocation.objects.create(version=two_creator_version, item=cat, reason=Revocation.Reason.WITHDRAWN)

    later = services.record_sale(paid_order(two_creator_version, carol, fee_cents=0))

    assert not later.allocation_lines.filter(creator=bob).exists()
    assert selectors.available_cents(bob) == 283  # kept from the earlier sale
    assert selectors.available_cents(alice) == 567 + 850


def test_staff_read_the_ledger_in_the_admin_but_cannot_change_it(client, staff, two_creator_version, carol):
    sale = services.record_sale(paid_order(two_creator_version, carol))
    staff.is_superuser = True  # even a superuser
    staff.save()
    client.force_login(staff)
    page = client.get(f"/admin/royalties/transaction/{sale.pk}/change/")
    assert page.status_code == 200 and sale.idempotency_key in page.content.decode()
    assert client.post(f"/admin/royalties/transaction/{sale.pk}/delete/").status_code == 403
    assert client.get("/admin/royalties/payout/").status_code == 200
    assert Transaction.objects.filter(pk=sale.pk).exists()
