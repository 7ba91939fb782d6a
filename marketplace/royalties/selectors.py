"""Reads of the royalty ledger: balances, earnings, statements, payouts."""

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, F, FilteredRelation, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, NullIf, TruncMonth
from django.utils import timezone

from marketplace.royalties.models import Account, AllocationLine, ConnectedAccount, Entry, Payout, Transaction


@dataclass(frozen=True)
class Balance:
    available_cents: int  # earned and not yet sent
    in_transit_cents: int  # sent to Stripe, not yet confirmed
    paid_out_cents: int
    currency: str


@dataclass(frozen=True)
class StatementRow:
    at: dt.datetime
    kind: str
    order_id: int | None
    pack: str
    version: int | None
    asset_id: int | None
    title: str  # an image's title as it was sold: the one frozen in the pack version the buyer licensed
    amount_cents: int

    @property
    def date(self) -> dt.date:
        return timezone.localtime(self.at).date()


@dataclass(frozen=True)
class Statement:
    month: dt.date  # the first day of the month
    opening_cents: int
    rows: list[StatementRow]
    closing_cents: int
    currency: str

    @property
    def total_cents(self) -> int:
        return sum(row.amount_cents for row in self.rows)

    @property
    def closing_date(self) -> dt.date:
        return _next_month(self.month) - dt.timedelta(days=1)


def payable_account(creator) -> Account | None:
    return Account.objects.filter(creator=creator, kind=Account.Kind.CREATOR_PAYABLE).first()


def available_cents(creator) -> int:
    """What the platform owes the creator now: the payable account is a liability, so its balance is
    the negated sum of its entries."""
    total = Entry.objects.filter(account__creator=creator).aggregate(total=Sum("amount_cents"))["total"]
    return -(total or 0)


def balance(creator) -> Balance:
    account = payable_account(creator)
    payouts = Payout.objects.filter(creator=creator)
    sums = payouts.aggregate(
        in_transit=Sum("amount_cents", filter=Q(status=Payout.Status.PENDING)),
        paid=Sum("amount_cents", filter=Q(status=Payout.Status.PAID)),
    )
    return Balance(
        available_cents=available_cents(creator),
        in_transit_cents=sums["in_transit"] or 0,
        paid_out_cents=sums["paid"] or 0,
        currency=account.currency if account else "usd",
    )


def _lines_with_sold_title(lines: QuerySet[AllocationLine]) -> QuerySet[AllocationLine]:
    """Each line with `sold_title`: the image's title in the pack version that was sold (its PackItem,
    frozen at publication), not its title now. Creators rename images; what a buyer licensed keeps the
    name it had, and so does every statement of that sale. An untitled image shows its file name, as on
    its own page. One join on the item's unique (version, asset), not a subquery per line."""
    sold_item = FilteredRelation("asset__pack_items", condition=Q(asset__pack_items__version=F("version")))
    return lines.annotate(sold_item=sold_item).annotate(
        sold_title=Coalesce(NullIf(F("sold_item__title"), Value("")), F("asset__original_filename")),
        current_title=Coalesce(NullIf(F("asset__title"), Value("")), F("asset__original_filename")),
    )


def earnings_by_version(creator) -> list[dict]:
    """Per pack version: net earnings, sales and refunds, best first."""
    rows = (
        AllocationLine.objects.filter(creator=creator)
        .values("version_id", "version__title", "version__number", "version__pack__slug")
        .annotate(
            cents=Sum("amount_cents"),
            sales=Count("transaction", distinct=True, filter=Q(transaction__kind=Transaction.Kind.SALE)),
            refunds=Count("transaction", distinct=True, filter=Q(transaction__kind=Transaction.Kind.REFUND)),
        )
        .order_by("-cents", "version_id")
    )
    return list(rows)


def earnings_by_asset(creator, limit: int = 200) -> list[dict]:
    """Per image and the title it was sold under: net earnings and how many sales paid it, best first.
    An image renamed between two versions that both sold has a row for each title; `current_title` is
    its title now."""
    rows = (
        _lines_with_sold_title(AllocationLine.objects.filter(creator=creator))
        .values("asset_id", "sold_title", "current_title")
        .annotate(
            cents=Sum("amount_cents"),
            sales=Count("transaction", distinct=True, filter=Q(transaction__kind=Transaction.Kind.SALE)),
        )
        .order_by("-cents", "asset_id")
    )
    return list(rows[:limit])


def _month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _next_month(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def _aware(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=timezone.get_current_timezone())


def monthly_earnings(creator, months: int = 12, today: dt.date | None = None) -> list[tuple[dt.date, int]]:
    """Net earnings (sales less refunds) per month, the last `months` months up to this one, empty months included."""
    this_month = _month_start(today or timezone.localdate())
    first = this_month
    for _ in range(months - 1):
        first = _month_start(first - dt.timedelta(days=1))
    sums = (
        AllocationLine.objects.filter(creator=creator, transaction__created_at__gte=_aware(first))
        .annotate(month=TruncMonth("transaction__created_at"))
        .values("month")
        .annotate(cents=Sum("amount_cents"))
    )
    by_month = {_month_start(_as_date(row["month"])): row["cents"] for row in sums}
    series, month = [], first
    while month <= this_month:
        series.append((month, by_month.get(month, 0)))
        month = _next_month(month)
    return series


def _as_date(value) -> dt.date:
    return timezone.localtime(value).date() if isinstance(value, dt.datetime) else value


def statement_months(creator, today: dt.date | None = None) -> list[dt.date]:
    """Every month from the creator's first ledger activity to this one, newest first."""
    this_month = _month_start(today or timezone.localdate())
    first_entry = Entry.objects.filter(account__creator=creator).order_by("transaction__created_at").first()
    if first_entry is None:
        return [this_month]
    month = _month_start(timezone.localtime(first_entry.transaction.created_at).date())
    months = []
    while month <= this_month:
        months.append(month)
        month = _next_month(month)
    return months[::-1]


def _balance_before(creator, moment: dt.datetime) -> int:
    total = Entry.objects.filter(account__creator=creator, transaction__created_at__lt=moment).aggregate(
        total=Sum("amount_cents")
    )["total"]
    return -(total or 0)


def statement(creator, year: int, month: int) -> Statement:
    """A month of the creator's ledger: one row per allocation line (what each image earned or gave back)
    and one per payout movement, so that opening + total = closing. Raises ValueError for a bad month."""
    first_day = dt.date(year, month, 1)
    start, end = _aware(first_day), _aware(_next_month(first_day))
    in_month = Q(transaction__created_at__gte=start, transaction__created_at__lt=end)
    rows = [
        StatementRow(
            at=line.transaction.created_at,
            kind=line.transaction.get_kind_display(),
            order_id=line.transaction.order_id,
            pack=line.version.title,
            version=line.version.number,
            asset_id=line.asset_id,
            title=line.sold_title,
            amount_cents=line.amount_cents,
        )
        for line in _lines_with_sold_title(AllocationLine.objects.filter(in_month, creator=creator))
        .select_related("transaction", "version")
        .order_by("transaction__created_at", "id")
    ]
    # Payouts (and their reversals) move the balance without allocation lines.
    payout_entries = (
        Entry.objects.filter(in_month, account__creator=creator, transaction__allocation_lines__isnull=True)
        .select_related("transaction")
        .order_by("transaction__created_at", "id")
    )
    rows += [
        StatementRow(
            at=entry.transaction.created_at,
            kind=entry.transaction.get_kind_display(),
            order_id=entry.transaction.order_id,
            pack="",
            version=None,
            asset_id=None,
            title=entry.transaction.description,
            amount_cents=-entry.amount_cents,
        )
        for entry in payout_entries
    ]
    rows.sort(key=lambda row: row.at)  # stable: a sale's lines stay in order
    account = payable_account(creator)
    return Statement(
        month=first_day,
        opening_cents=_balance_before(creator, start),
        rows=rows,
        closing_cents=_balance_before(creator, end),
        currency=account.currency if account else "usd",
    )


def connected_account(creator) -> ConnectedAccount | None:
    return ConnectedAccount.objects.filter(creator=creator).first()


def payouts_of(creator) -> QuerySet[Payout]:
    return Payout.objects.filter(creator=creator)


def pending_payout_ids() -> list[int]:
    return list(Payout.objects.filter(status=Payout.Status.PENDING).order_by("id").values_list("id", flat=True))


def creators_due_payout() -> QuerySet:
    """Creators whose balance reached the minimum and whose Stripe account can receive payouts."""
    minimum = max(settings.PAYOUT_MINIMUM_CENTS, 1)
    due = (
        Account.objects.filter(kind=Account.Kind.CREATOR_PAYABLE, creator__connected_account__payouts_enabled=True)
        .annotate(total=Sum("entries__amount_cents"))
        .filter(total__lte=-minimum)
        .values("creator_id")
    )
    return get_user_model().objects.filter(pk__in=due).order_by("pk")
