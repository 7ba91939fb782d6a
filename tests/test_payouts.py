"""Payouts to creators through Stripe Connect Express, against recorded Stripe responses (localstripe has no
Connect). The fake HTTP client plugged into stripe-python serves the recordings and keeps every request we send."""

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe
from django.core.exceptions import ValidationError
from django.db.models import Sum
from django.urls import reverse

from marketplace.royalties import selectors, services, tasks
from marketplace.royalties.models import Account, ConnectedAccount, Entry, Payout, Transaction
from tests.test_ledger import paid_order, publish_version

RECORDED = Path(__file__).parent / "stripe_recorded"
ACCOUNT_ID = "acct_1QxCreatorAlice01"


@dataclass
class SentRequest:
    method: str
    url: str
    path: str
    headers: dict
    params: dict  # form parameters, each with its single value

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


class RecordedStripe(stripe.HTTPClient):
    """Answers each (method, path) with recorded response bodies, in order; an unexpected request fails the test."""

    name = "recorded"

    def __init__(self):
        super().__init__()
        self.routes: dict[tuple[str, str], list[tuple[int, str]]] = {}
        self.sent: list[SentRequest] = []

    def add(self, method: str, path: str, recording: str, status: int = 200) -> None:
        body = (RECORDED / recording).read_text()
        json.loads(body)  # a recording is valid JSON
        self.routes.setdefault((method, path), []).append((status, body))

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        parts = urlsplit(url)
        params = {key: values[0] for key, values in parse_qs(post_data or parts.query).items()}
        self.sent.append(SentRequest(method.upper(), url, parts.path, dict(headers or {}), params))
        answers = self.routes.get((method.upper(), parts.path))
        if not answers:
            raise AssertionError(f"unexpected Stripe request {method} {parts.path}")
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        # Stripe's own headers; "false" tells stripe-python not to retry a 5xx here.
        return body, status, {"request-id": "req_recorded", "stripe-should-retry": "false"}

    def close(self):
        pass


def install_recorded_stripe(monkeypatch, settings) -> RecordedStripe:
    """Connect on, and every Stripe request of this test answered from recordings."""
    settings.STRIPE_CONNECT_ENABLED = True
    settings.STRIPE_SECRET_KEY = "sk_test_platform"
    settings.STRIPE_API_BASE = "https://api.stripe.com"
    client = RecordedStripe()
    monkeypatch.setattr(stripe, "default_http_client", client)
    return client


@pytest.fixture
def fake_stripe(monkeypatch, settings) -> RecordedStripe:
    return install_recorded_stripe(monkeypatch, settings)


@pytest.fixture
def earning_alice(alice, carol, make_eligible_asset):
    """Alice alone in a $40 pack sold once: 85 % of (4000 - 120) = 3298 cents available."""
    version = publish_version([make_eligible_asset(alice)], price_cents=4000)
    services.record_sale(paid_order(version, carol, fee_cents=120))
    assert selectors.available_cents(alice) == 3298
    return alice


@pytest.fixture
def onboarded(earning_alice) -> ConnectedAccount:
    return ConnectedAccount.objects.create(
        creator=earning_alice, stripe_account_id=ACCOUNT_ID, details_submitted=True, payouts_enabled=True
    )


def test_without_connect_payouts_are_not_configured_and_balances_still_accrue(client, earning_alice, settings):
    settings.STRIPE_CONNECT_ENABLED = False
    client.force_login(earning_alice)
    page = client.get(reverse("royalties:payouts")).content.decode()
    assert "Payouts are not configured" in page
    assert 'id="available">$32.98' in page

    response = client.post(reverse("royalties:payouts"), follow=True)
    assert "Payouts are not configured" in response.content.decode()
    response = client.post(reverse("royalties:connect"), follow=True)
    assert "Payouts are not configured" in response.content.decode()
    assert not Payout.objects.exists() and not ConnectedAccount.objects.exists()
    assert selectors.available_cents(earning_alice) == 3298


def test_setting_up_payouts_creates_an_express_account_and_sends_the_creator_to_onboarding(
    client, fake_stripe, earning_alice
):
    fake_stripe.add("POST", "/v1/accounts", "account_express_created.json")
    fake_stripe.add("POST", "/v1/account_links", "account_link.json")
    client.force_login(earning_alice)

    response = client.post(reverse("royalties:connect"))

    assert response.status_code == 302
    assert response["Location"] == "https://connect.stripe.com/setup/e/acct_1QxCreatorAlice01/Gx7bY0qLkJ2m"
    create, link = fake_stripe.sent
    assert (create.method, create.url) == ("POST", "https://api.stripe.com/v1/accounts")
    assert create.params == {
        "type": "express",
        "email": "alice@example.com",
        "capabilities[transfers][requested]": "true",
        "metadata[creator_id]": str(earning_alice.pk),
    }
    assert create.idempotency_key == f"connect-account-{earning_alice.pk}"
    assert create.headers["Authorization"] == "Bearer sk_test_platform"
    assert (link.method, link.path) == ("POST", "/v1/account_links")
    assert link.params == {
        "account": ACCOUNT_ID,
        "type": "account_onboarding",
        "refresh_url": "http://testserver" + reverse("royalties:connect"),
        "return_url": "http://testserver" + reverse("royalties:connect-return"),
    }
    connected = ConnectedAccount.objects.get(creator=earning_alice)
    assert connected.stripe_account_id == ACCOUNT_ID and not connected.payouts_enabled

    # Again (a second click, or Stripe's refresh_url): a new link, never a second account.
    assert client.post(reverse("royalties:connect")).status_code == 302
    assert client.get(reverse("royalties:connect")).status_code == 302
    assert [request.path for request in fake_stripe.sent[2:]] == ["/v1/account_links", "/v1/account_links"]
    assert ConnectedAccount.objects.count() == 1


def test_returning_from_onboarding_reads_the_account_state(client, fake_stripe, earning_alice):
    ConnectedAccount.objects.create(creator=earning_alice, stripe_account_id=ACCOUNT_ID)
    fake_stripe.add("GET", f"/v1/accounts/{ACCOUNT_ID}", "account_express_onboarded.json")
    client.force_login(earning_alice)

    response = client.get(reverse("royalties:connect-return"), follow=True)

    assert "ready to receive payouts" in response.content.decode()
    connected = ConnectedAccount.objects.get(creator=earning_alice)
    assert connected.details_submitted and connected.payouts_enabled
    assert [(request.method, request.path) for request in fake_stripe.sent] == [("GET", f"/v1/accounts/{ACCOUNT_ID}")]


def test_a_stripe_error_while_setting_up_is_shown_not_raised(client, fake_stripe, earning_alice):
    fake_stripe.add("POST", "/v1/accounts", "error_api_500.json", status=500)
    client.force_login(earning_alice)
    response = client.post(reverse("royalties:connect"), follow=True)
    assert "Stripe could not set up your account" in response.content.decode()
    assert not ConnectedAccount.objects.exists()


def test_a_payout_below_the_minimum_is_refused_with_a_clear_message(client, fake_stripe, onboarded, settings):
    settings.PAYOUT_MINIMUM_CENTS = 5000
    client.force_login(onboarded.creator)

    response = client.post(reverse("royalties:payouts"), follow=True)

    assert "Your balance of $32.98 is below the payout minimum of $50.00." in response.content.decode()
    assert not Payout.objects.exists() and fake_stripe.sent == []
    assert selectors.available_cents(onboarded.creator) == 3298


def test_a_payout_needs_a_finished_stripe_account(fake_stripe, earning_alice):
    with pytest.raises(ValidationError, match="Finish setting up your Stripe account"):
        services.pay_out(earning_alice)
    ConnectedAccount.objects.create(creator=earning_alice, stripe_account_id=ACCOUNT_ID, payouts_enabled=False)
    with pytest.raises(ValidationError, match="Finish setting up your Stripe account"):
        services.pay_out(earning_alice)
    assert fake_stripe.sent == [] and not Payout.objects.exists()


def test_a_payout_transfers_the_balance_and_settles_the_ledger(client, fake_stripe, onboarded):
    fake_stripe.add("POST", "/v1/transfers", "transfer.json")
    alice = onboarded.creator
    client.force_login(alice)

    response = client.post(reverse("royalties:payouts"), follow=True)

    assert "$32.98 is on its way to your Stripe account." in response.content.decode()
    payout = Payout.objects.get()
    assert payout.status == Payout.Status.PAID and payout.stripe_transfer_id == "tr_1QxPayoutAlice0001"
    (transfer,) = fake_stripe.sent
    assert (transfer.method, transfer.url) == ("POST", "https://api.stripe.com/v1/transfers")
    assert transfer.params == {
        "amount": "3298",
        "currency": "usd",
        "destination": ACCOUNT_ID,
        "description": f"Royalties payout {payout.pk}",
        "metadata[payout_id]": str(payout.pk),
        "metadata[creator_id]": str(alice.pk),
    }
    assert transfer.idempotency_key == f"payout-{payout.pk}"
    balance = selectors.balance(alice)
    assert (balance.available_cents, balance.in_transit_cents, balance.paid_out_cents) == (0, 0, 3298)
    kinds = list(Transaction.objects.filter(payout=payout).values_list("kind", flat=True))
    assert kinds == [Transaction.Kind.PAYOUT, Transaction.Kind.PAYOUT_SETTLED]
    payouts_account = Entry.objects.filter(account__kind=Account.Kind.PAYOUTS).aggregate(total=Sum("amount_cents"))
    assert payouts_account["total"] == 0  # nothing left in transit
    assert Entry.objects.aggregate(total=Sum("amount_cents"))["total"] == 0

    page = client.get(reverse("royalties:payouts")).content.decode()
    assert "tr_1QxPayoutAlice0001" in page and "Sent" in page


def test_a_failed_transfer_is_reversed_and_its_reason_shown(client, fake_stripe, onboarded):
    fake_stripe.add("POST", "/v1/transfers", "transfer_error_balance_insufficient.json", status=400)
    alice = onboarded.creator
    client.force_login(alice)

    response = client.post(reverse("royalties:payouts"), follow=True)

    page = response.content.decode()
    assert "The payout of $32.98 failed" in page
    assert "You have insufficient available funds in your Stripe account." in page
    assert "The amount is back in your balance." in page
    payout = Payout.objects.get()
    assert payout.status == Payout.Status.FAILED and "insufficient available funds" in payout.failure_reason
    sent, reversed_ = Transaction.objects.filter(payout=payout).order_by("id")
    assert (sent.kind, reversed_.kind, reversed_.reverses) == (Transaction.Kind.PAYOUT, Transaction.Kind.PAYOUT_FAILED,
                                                               sent)  # fmt: skip
    balance = selectors.balance(alice)
    assert (balance.available_cents, balance.in_transit_cents, balance.paid_out_cents) == (3298, 0, 0)

    # The statement shows the payout and its reversal, and still adds up.
    rows = client.get(reverse("royalties:statement", args=[payout.created_at.year, payout.created_at.month]))
    lines = rows.content.decode().splitlines()
    assert any(",Payout sent," in line and line.endswith(",-3298,-32.98") for line in lines)
    assert any(",Payout failed (reversed)," in line and line.endswith(",3298,32.98") for line in lines)


def test_a_lost_answer_leaves_the_payout_pending_and_the_task_resends_it_with_the_same_key(
    client, fake_stripe, onboarded
):
    fake_stripe.add("POST", "/v1/transfers", "error_api_500.json", status=500)
    fake_stripe.add("POST", "/v1/transfers", "transfer.json")
    alice = onboarded.creator
    client.force_login(alice)

    response = client.post(reverse("royalties:payouts"), follow=True)

    assert "Stripe did not answer about your payout of $32.98" in response.content.decode()
    payout = Payout.objects.get()
    assert payout.status == Payout.Status.PENDING
    assert selectors.balance(alice).in_transit_cents == 3298 and selectors.available_cents(alice) == 0
    response = client.post(reverse("royalties:payouts"), follow=True)
    assert "A payout is already on its way" in response.content.decode()

    result = tasks.pay_out_all.delay().get()

    payout.refresh_from_db()
    assert payout.status == Payout.Status.PAID and result["resent"] == {payout.pk: "paid"}
    assert [request.idempotency_key for request in fake_stripe.sent] == [f"payout-{payout.pk}"] * 2
    assert Payout.objects.count() == 1
    assert selectors.balance(alice).paid_out_cents == 3298


def test_the_periodic_task_pays_creators_who_are_due_and_skips_the_rest(
    fake_stripe, onboarded, bob, carol, make_eligible_asset
):
    fake_stripe.add("POST", "/v1/transfers", "transfer.json")
    ConnectedAccount.objects.create(creator=bob, stripe_account_id="acct_1QxCreatorBob0001", payouts_enabled=True)
    small = publish_version([make_eligible_asset(bob, "chelsea")], price_cents=500)
    services.record_sale(paid_order(small, carol, fee_cents=0))  # Bob: 425 cents, under the 25.00 minimum

    result = tasks.pay_out_all.delay().get()

    assert result["paid"] == {onboarded.creator.pk: "paid"}
    assert [request.params["destination"] for request in fake_stripe.sent] == [ACCOUNT_ID]
    assert selectors.available_cents(bob) == 425 and not Payout.objects.filter(creator=bob).exists()
    assert tasks.pay_out_all.delay().get() == {"resent": {}, "paid": {}, "refused": {}}  # nothing twice


def test_a_refund_after_a_payout_leaves_a_debt_that_blocks_the_next_payout(fake_stripe, onboarded, carol, settings):
    fake_stripe.add("POST", "/v1/transfers", "transfer.json")
    settings.PAYOUT_MINIMUM_CENTS = 1
    alice = onboarded.creator
    services.pay_out(alice)
    order = Transaction.objects.get(kind=Transaction.Kind.SALE).order

    services.record_refund(order)

    assert selectors.available_cents(alice) == -3298
    with pytest.raises(ValidationError, match="below the payout minimum"):
        services.pay_out(alice)
    assert len(fake_stripe.sent) == 1


@pytest.mark.parametrize("name", ["payouts", "connect", "connect-return"])
def test_buyers_cannot_reach_payouts(client, carol, fake_stripe, name):
    client.force_login(carol)
    assert client.post(reverse(f"royalties:{name}")).status_code == 403
    assert fake_stripe.sent == []
