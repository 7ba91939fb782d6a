"""A creator's earnings page and monthly CSV statements: own figures only, exact to the cent."""

import csv
import datetime as dt
import io
from unittest.mock import patch

import pytest
from django.urls import reverse
from django.utils import timezone

from marketplace.royalties import services
from tests.test_ledger import paid_order, publish_version

PAGES = [
    reverse("royalties:earnings"),
    reverse("royalties:statement", args=[2026, 3]),
    reverse("royalties:payouts"),
]


def at(year, month, day):
    """Record what happens inside as if on that day (the ledger stamps rows with timezone.now())."""
    return patch("django.utils.timezone.now", return_value=dt.datetime(year, month, day, 12, tzinfo=dt.UTC))


def statement_rows(client, year, month) -> list[list[str]]:
    response = client.get(reverse("royalties:statement", args=[year, month]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert f"statement-{year:04d}-{month:02d}.csv" in response["Content-Disposition"]
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.fixture
def history(alice, bob, carol, make_eligible_asset):
    """March 2026: a $10 sale (Alice 5.33 over two images, Bob 2.67). April: a second sale, and the
    first is refunded."""
    portrait = make_eligible_asset(alice, "astronaut", title="Astronaut portrait")
    cup = make_eligible_asset(alice, "coffee", title='=HYPERLINK("http://evil.example")')
    cat = make_eligible_asset(bob, "chelsea", title="Bob's cat")
    version = publish_version([portrait, cup, cat], price_cents=1000, title="Everyday photos")
    first, second = paid_order(version, carol, fee_cents=59), paid_order(version, carol, fee_cents=59)
    with at(2026, 3, 14):
        services.record_sale(first)
    with at(2026, 4, 2):
        services.record_sale(second)
    with at(2026, 4, 20):
        services.record_refund(first)
    return {"version": version, "portrait": portrait, "cup": cup, "cat": cat, "first": first, "second": second}


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_visitors_are_sent_to_log_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))


@pytest.mark.parametrize("path", PAGES)
def test_buyers_are_refused(client, carol, path):
    client.force_login(carol)
    response = client.get(path)
    assert response.status_code == 403
    assert b"Creators only" in response.content


def test_a_creator_sees_their_own_balance_and_earnings_only(client, alice, history):
    client.force_login(alice)
    page = client.get(reverse("royalties:earnings")).content.decode()

    assert 'id="available">$5.33' in page  # the second sale; the first was refunded
    assert 'id="in-transit">$0.00' in page and 'id="paid-out">$0.00' in page
    assert "Everyday photos" in page and "v1" in page
    assert "Astronaut portrait" in page
    assert "$2.67" in page  # the portrait's share of the remaining sale
    assert "Bob&#x27;s cat" not in page and "Bob's cat" not in page


def test_another_creator_sees_only_their_share(client, bob, history):
    client.force_login(bob)
    page = client.get(reverse("royalties:earnings")).content.decode()
    assert 'id="available">$2.67' in page
    assert "Bob&#x27;s cat" in page
    assert "Astronaut portrait" not in page


def test_the_chart_has_a_bar_per_month_with_this_months_earnings(client, alice, carol, make_eligible_asset):
    version = publish_version([make_eligible_asset(alice)], price_cents=2000)
    services.record_sale(paid_order(version, carol, fee_cents=0))  # today: 85 % of 20.00
    client.force_login(alice)
    page = client.get(reverse("royalties:earnings")).content.decode()

    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<rect") == 12
    assert f"{timezone.localdate():%B %Y}: $17.00" in svg
    assert "<script" not in page


def test_the_monthly_statement_lists_each_line_with_opening_and_closing_balances(client, alice, history):
    client.force_login(alice)
    rows = statement_rows(client, 2026, 4)

    assert rows[0] == ["date", "transaction", "order", "pack", "version", "asset_id", "title", "amount_cents",
                       "amount_usd"]  # fmt: skip
    assert rows[1] == ["2026-04-01", "opening balance", "", "", "", "", "", "533", "5.33"]
    body = rows[2:-2]
    portrait, cup = history["portrait"].pk, history["cup"].pk
    second, first = history["second"].pk, history["first"].pk
    assert body == [
        ["2026-04-02", "Sale", str(second), "Everyday photos", "1", str(portrait), "Astronaut portrait", "267", "2.67"],
        ["2026-04-02", "Sale", str(second), "Everyday photos", "1", str(cup), '\'=HYPERLINK("http://evil.example")',
         "266", "2.66"],
        ["2026-04-20", "Refund", str(first), "Everyday photos", "1", str(portrait), "Astronaut portrait", "-267",
         "-2.67"],
        ["2026-04-20", "Refund", str(first), "Everyday photos", "1", str(cup), '\'=HYPERLINK("http://evil.example")',
         "-266", "-2.66"],
    ]  # fmt: skip
    assert rows[-2] == ["2026-04-30", "total", "", "", "", "", "", "0", "0.00"]
    assert rows[-1] == ["2026-04-30", "closing balance", "", "", "", "", "", "533", "5.33"]


def test_a_statement_shows_only_the_creators_own_lines(client, bob, history):
    client.force_login(bob)
    rows = statement_rows(client, 2026, 3)
    assert [row[5] for row in rows[2:-2]] == [str(history["cat"].pk)]
    assert rows[1][1:] == ["opening balance", "", "", "", "", "", "0", "0.00"]
    assert rows[-1][-2:] == ["267", "2.67"]


@pytest.mark.parametrize(("year", "month"), [(2026, 2), (2026, 5), (2019, 12)])
def test_a_month_without_activity_still_gives_a_valid_statement(client, alice, history, year, month):
    client.force_login(alice)
    rows = statement_rows(client, year, month)
    assert len(rows) == 4  # header, opening, total, closing
    expected = "0" if (year, month) < (2026, 3) else "533"
    assert [rows[1][7], rows[2][7], rows[3][7]] == [expected, "0", expected]


def test_a_creator_without_any_sale_gets_an_empty_statement(client, alice):
    client.force_login(alice)
    rows = statement_rows(client, 2026, 1)
    assert [row[1] for row in rows[1:]] == ["opening balance", "total", "closing balance"]
    assert [row[7] for row in rows[1:]] == ["0", "0", "0"]


@pytest.mark.parametrize("path", ["/my/earnings/statements/2026-13.csv", "/my/earnings/statements/0-5.csv",
                                  "/my/earnings/statements/2026-0.csv"])  # fmt: skip
def test_an_impossible_month_is_not_found(client, alice, path):
    client.force_login(alice)
    assert client.get(path).status_code == 404


def test_statements_are_listed_from_the_first_sale_to_this_month(client, alice, history):
    client.force_login(alice)
    page = client.get(reverse("royalties:earnings")).content.decode()
    assert reverse("royalties:statement", args=[2026, 3]) in page
    assert reverse("royalties:statement", args=[2026, 4]) in page
    this_month = timezone.localdate()
    assert reverse("royalties:statement", args=[this_month.year, this_month.month]) in page
    assert reverse("royalties:statement", args=[2026, 2]) not in page
