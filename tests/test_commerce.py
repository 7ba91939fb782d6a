"""Buying a pack: checkout, Stripe's signed webhooks (the only thing that makes an order paid),
licences, certificates, signed downloads, and what a refund undoes.

Stripe's API is replaced by a fake gateway here (the fee lookup and PaymentIntent creation); events
are signed exactly as Stripe signs them. The real calls against localstripe are exercised by
test_localstripe.py and the browser test.
"""

import threading
from unittest import mock

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.catalog import services as catalog
from marketplace.commerce import services, stripe_gateway
from marketplace.commerce.models import Order, PackLicence, StripeEvent
from marketplace.commerce.signals import licence_revoked
from marketplace.packs import services as packs
from marketplace.royalties.models import Transaction
from marketplace.royalties.selectors import available_cents as creator_balance
from tests.commerce_helpers import (  # noqa: F401 (fixtures, used by name)
    FEE,
    WEBHOOK_SECRET,
    fake_stripe_fixture,
    intent_event,
    refund_event,
    signed,
    stripe_settings_fixture,
)


@pytest.fixture
def version(alice, bob, staff, make_eligible_asset, django_capture_on_commit_callbacks):
    """A published version (its downloads built): two images by alice, one by bob, $50."""
    make_eligible_asset(alice, "astronaut")
    make_eligible_asset(alice, "coffee")
    make_eligible_asset(bob, "rocket")
    pack = packs.save_pack(actor=staff, title="Everyday things", slug="everyday", price_cents=5000, use="commercial")
    with django_capture_on_commit_callbacks(execute=True):
        return packs.publish_version(pack, actor=staff)


def post_event(client, event, secret=WEBHOOK_SECRET):
    payload, header = signed(event, secret)
    return client.post(
        reverse("commerce:stripe-webhook"), payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )


@pytest.fixture
def deliver(django_capture_on_commit_callbacks):
    """Stripe delivering an event; the after-commit work (emails) runs as a real commit would."""

    def post(client, event, secret=WEBHOOK_SECRET):
        with django_capture_on_commit_callbacks(execute=True):
            return post_event(client, event, secret)

    return post


def checkout(client, user, version, **data):
    client.force_login(user)
    return client.post(reverse("commerce:checkout", args=[version.pk]), {"agree": "yes", **data})


@pytest.fixture
def order(client, carol, version, fake_stripe):
    response = checkout(client, carol, version)
    assert response.status_code == 200, response.content
    return Order.objects.get(buyer=carol)


# --- checkout -------------------------------------------------------------------------------------


def test_checkout_creates_one_order_and_payment_intent_priced_by_the_version(client, carol, version, fake_stripe):
    response = checkout(client, carol, version, amount_cents="1")  # the browser never sets the price
    body = response.json()
    order = Order.objects.get(buyer=carol)
    assert body["client_secret"] == f"pi_test_{order.pk}_secret_x"
    assert body["order_url"] == reverse("commerce:order", args=[order.pk])
    assert (order.amount_cents, order.status, order.payment_intent_id) == (5000, "pending", f"pi_test_{order.pk}")
    assert fake_stripe == [
        {
            "amount_cents": 5000,
            "currency": "usd",
            "order_id": order.pk,
            "transfer_group": f"order_{order.pk}",
            "description": f"Licence: {version}",
            "buyer_email": "carol@example.com",
        }
    ]
    # Paying again (say, after a declined card) resumes the same order and intent.
    assert checkout(client, carol, version).json()["client_secret"] == body["client_secret"]
    assert Order.objects.count() == 1 and len(fake_stripe) == 1


def test_checkout_needs_the_terms_accepted(client, carol, version, fake_stripe):
    response = checkout(client, carol, version, agree="")
    assert response.status_code == 400
    assert "Accept the licence terms" in response.json()["error"]
    assert not Order.objects.exists()


def test_only_buyers_can_check_out(client, alice, version, fake_stripe):
    response = checkout(client, alice, version)
    assert response.status_code == 409
    assert "not a buyer account" in response.json()["error"]
    page = client.get(reverse("commerce:checkout", args=[version.pk]))
    assert b"not a buyer account" in page.content and b"pay-form" not in page.content
    assert not Order.objects.exists()


def test_anonymous_visitors_are_sent_to_log_in(client, version):
    response = client.get(reverse("commerce:checkout", args=[version.pk]))
    assert response.status_code == 302 and reverse("accounts:login") in response["Location"]
    assert client.post(reverse("commerce:checkout", args=[version.pk]), {"agree": "yes"}).status_code == 401


def test_a_superseded_version_is_not_sold(client, carol, alice, staff, version, make_eligible_asset, fake_stripe):
    make_eligible_asset(alice, "chelsea")
    newer = packs.publish_version(version.pack, actor=staff)
    assert newer.number == 2
    response = checkout(client, carol, version)
    assert response.status_code == 409 and "superseded" in response.json()["error"]
    page = client.get(reverse("commerce:checkout", args=[version.pk]))
    assert reverse("commerce:checkout", args=[newer.pk]).encode() in page.content


def test_a_version_with_withdrawn_images_is_no_longer_sold(
    client, carol, alice, version, fake_stripe, django_capture_on_commit_callbacks
):
    asset = version.items.filter(creator=alice).first().asset
    with django_capture_on_commit_callbacks(execute=True):
        catalog.withdraw_asset(asset, actor=alice)
    response = checkout(client, carol, version)
    assert response.status_code == 409 and "withdrew" in response.json()["error"]
    assert not Order.objects.exists()


def test_stripe_being_down_is_reported_and_nothing_is_half_made(client, carol, version, monkeypatch):
    def down(**kwargs):
        raise stripe_gateway.PaymentProviderError("Could not start the payment: connection refused")

    monkeypatch.setattr(stripe_gateway, "create_payment_intent", down)
    response = checkout(client, carol, version)
    assert response.status_code == 502 and "try again" in response.json()["error"]
    assert Order.objects.get().payment_intent_id is None  # the next attempt creates the intent


# --- webhooks -----------------------------------------------------------------------------------------


def test_a_bad_signature_is_refused_and_nothing_is_recorded(client, order, deliver):
    response = deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_1"), secret="whsec_wrong")
    assert response.status_code == 400
    unsigned = client.post(reverse("commerce:stripe-webhook"), b"{}", content_type="application/json")
    assert unsigned.status_code == 400
    assert not StripeEvent.objects.exists()
    order.refresh_from_db()
    assert order.status == "pending" and not PackLicence.objects.exists() and not Transaction.objects.exists()


def test_a_tampered_body_is_refused(client, order):
    payload, header = signed(intent_event("payment_intent.succeeded", order, event_id="evt_1"))
    tampered = payload.replace(b'"amount": 5000', b'"amount": 1')
    response = client.post(
        reverse("commerce:stripe-webhook"), tampered, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )
    assert response.status_code == 400 and not StripeEvent.objects.exists()


def test_payment_succeeded_grants_the_licence_and_pays_the_creators(client, order, alice, bob, carol, deliver):
    response = deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_paid"))
    assert response.status_code == 200
    order.refresh_from_db()
    assert (order.status, order.fee_cents, order.charge_id) == ("paid", FEE, f"ch_for_{order.pk}")
    licence = PackLicence.objects.get(order=order)
    assert (licence.buyer, licence.version, licence.manifest_sha256) == (
        carol,
        order.version,
        order.version.manifest_sha256,
    )
    assert licence.terms == order.version.licence_terms
    # net 4825; the platform's 15 % is 723 (rounded down: in the creators' favour); the pool of 4102 is
    # split 2:1 by item count, the odd cent to the larger remainder.
    assert (creator_balance(alice), creator_balance(bob)) == (2735, 1367)
    sale = Transaction.objects.get(kind="sale", order=order)
    assert sum(e.amount_cents for e in sale.entries.all()) == 0
    # Alice's 2735 are split over her two images, to the cent.
    assert sorted(sale.allocation_lines.filter(creator=alice).values_list("amount_cents", flat=True)) == [1367, 1368]
    assert [m.to for m in mail.outbox] == [["carol@example.com"]]
    assert str(licence.pk) in mail.outbox[0].body


def test_the_same_event_delivered_twice_fulfils_once(client, order, alice, deliver):
    event = intent_event("payment_intent.succeeded", order, event_id="evt_paid")
    assert deliver(client, event).status_code == 200
    balance = creator_balance(alice)
    assert deliver(client, event).status_code == 200
    # Stripe may also send a second, distinct event for the same payment.
    assert deliver(client, {**event, "id": "evt_paid_again"}).status_code == 200
    assert PackLicence.objects.count() == 1
    assert Transaction.objects.filter(kind="sale").count() == 1
    assert creator_balance(alice) == balance
    assert StripeEvent.objects.get(event_id="evt_paid_again").outcome == "duplicate: already fulfilled"


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_deliveries_fulfil_once(carol, version, fake_stripe):
    """Stripe retries while the first delivery is still running: several threads, one licence."""
    from django.test import Client

    client = Client()
    checkout(client, carol, version)
    order = Order.objects.get()
    event = intent_event("payment_intent.succeeded", order, event_id="evt_race")
    barrier = threading.Barrier(4)
    statuses = []

    def deliver_in_thread():
        try:
            barrier.wait()
            statuses.append(post_event(Client(), event).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver_in_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4
    assert PackLicence.objects.count() == 1
    assert StripeEvent.objects.count() == 1
    assert Transaction.objects.filter(kind="sale").count() == 1


def test_a_failure_reported_after_success_does_not_undo_the_sale(client, order, deliver):
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_ok"))
    deliver(client, intent_event("payment_intent.payment_failed", order, event_id="evt_old_fail", error="Declined"))
    order.refresh_from_db()
    assert order.status == "paid" and PackLicence.objects.get(order=order).is_active


def test_a_declined_payment_is_shown_and_a_later_success_still_fulfils(client, order, deliver):
    deliver(
        client,
        intent_event("payment_intent.payment_failed", order, event_id="evt_fail", error="Your card was declined."),
    )
    order.refresh_from_db()
    assert order.status == "failed" and order.failure_reason == "Your card was declined."
    page = client.get(reverse("commerce:order", args=[order.pk]))
    assert b"Your card was declined." in page.content and b"Try another card" in page.content
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_ok"))
    order.refresh_from_db()
    assert order.status == "paid" and order.failure_reason == ""


def test_a_refund_arriving_before_the_payment_grants_nothing(client, order, deliver):
    deliver(client, refund_event(order, event_id="evt_refund"))
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_ok"))
    order.refresh_from_db()
    assert order.status == "refunded"
    assert not PackLicence.objects.exists() and not Transaction.objects.exists()


def test_an_amount_mismatch_is_not_fulfilled(client, order, deliver):
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_odd", amount=100))
    order.refresh_from_db()
    assert order.status == "pending" and "100" in order.failure_reason
    assert not PackLicence.objects.exists()


def test_events_for_unknown_payments_and_other_types_are_acknowledged(client, order, deliver):
    other = intent_event("payment_intent.succeeded", order, event_id="evt_other")
    other["data"]["object"]["id"] = "pi_someone_else"
    assert deliver(client, other).status_code == 200
    assert deliver(client, {"id": "evt_cust", "type": "customer.created", "data": {"object": {}}}).status_code == 200
    assert not PackLicence.objects.exists()
    assert StripeEvent.objects.get(event_id="evt_other").outcome.startswith("ignored")


def test_stripe_unreachable_for_the_fee_makes_stripe_retry(client, order, monkeypatch, deliver):
    def down(charge_id):
        raise stripe_gateway.PaymentProviderError("Could not load the charge: timeout")

    monkeypatch.setattr(stripe_gateway, "charge_fee_cents", down)
    event = intent_event("payment_intent.succeeded", order, event_id="evt_later")
    assert deliver(client, event).status_code == 503
    assert not PackLicence.objects.exists()
    monkeypatch.setattr(stripe_gateway, "charge_fee_cents", lambda charge_id: FEE)
    assert deliver(client, event).status_code == 200  # Stripe's retry
    assert PackLicence.objects.count() == 1


def test_a_refund_revokes_the_licence_and_reverses_the_royalties(client, order, alice, bob, carol, deliver):
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_ok"))
    licence = PackLicence.objects.get()
    assert creator_balance(alice) > 0
    told = []
    licence_revoked.connect(lambda sender, licence_id, **kw: told.append(licence_id), weak=False, dispatch_uid="t")
    try:
        deliver(client, refund_event(order, event_id="evt_refund"))
        deliver(client, refund_event(order, event_id="evt_refund"))  # replayed
    finally:
        licence_revoked.disconnect(dispatch_uid="t")
    assert told == [licence.pk]  # training stops the licence's runs
    order.refresh_from_db()
    licence.refresh_from_db()
    assert order.status == "refunded" and not licence.is_active
    assert creator_balance(alice) == 0 and creator_balance(bob) == 0
    assert Transaction.objects.filter(kind="refund").count() == 1
    client.force_login(carol)
    certificate = client.get(reverse("commerce:certificate", args=[licence.pk]))
    assert b"revoked" in certificate.content
    assert client.get(reverse("commerce:downloads", args=[licence.pk])).status_code == 403


def test_a_partial_refund_keeps_the_licence(client, order, deliver):
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_ok"))
    deliver(client, refund_event(order, event_id="evt_part", refunded=1000))
    assert PackLicence.objects.get().is_active
    assert not Transaction.objects.filter(kind="refund").exists()


def test_staff_refund_asks_stripe_and_waits_for_its_event(order, client, monkeypatch, deliver):
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_ok"))
    order.refresh_from_db()
    with mock.patch.object(stripe_gateway, "refund_payment", return_value="re_1") as refund:
        assert services.refund_order(order) == "re_1"
    refund.assert_called_once_with(intent_id=order.payment_intent_id, order_id=order.pk)
    assert PackLicence.objects.get().is_active  # until charge.refunded arrives


# --- licence, certificate, downloads -------------------------------------------------------------------


@pytest.fixture
def licence(client, order, deliver):
    deliver(client, intent_event("payment_intent.succeeded", order, event_id="evt_ok"))
    return PackLicence.objects.get(order=order)


def test_the_certificate_is_public_and_verifiable(client, licence):
    client.logout()
    page = client.get(reverse("commerce:certificate", args=[licence.pk]))
    assert page.status_code == 200
    assert licence.manifest_sha256.encode() in page.content and b"valid" in page.content
    data = client.get(reverse("commerce:certificate", args=[licence.pk]), {"format": "json"}).json()
    assert data["status"] == "active" and data["manifest_sha256"] == licence.version.manifest_sha256
    assert data["licensee"] == "carol" and data["version"] == 1


def test_the_dashboard_lists_licences_receipts_and_revocation_notices(
    client, licence, carol, alice, django_capture_on_commit_callbacks
):
    asset = licence.version.items.filter(creator=alice).first().asset
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        catalog.withdraw_asset(asset, actor=alice)
    assert [m.to for m in mail.outbox] == [["carol@example.com"]]  # the licensee is told
    assert asset.pack_items.get().key in mail.outbox[0].body
    client.force_login(carol)
    page = client.get(reverse("commerce:dashboard")).content.decode()
    assert str(licence.version) in page and reverse("commerce:downloads", args=[licence.pk]) in page
    assert reverse("commerce:order", args=[licence.order_id]) in page
    assert "revocation-notices" in page and "The creator withdrew the image" in page
    receipt = client.get(reverse("commerce:order", args=[licence.order_id])).content.decode()
    assert "$50.00" in receipt and licence.order.payment_intent_id in receipt


def test_someone_elses_order_and_licence_are_not_found(client, licence, bob):
    client.force_login(bob)
    assert client.get(reverse("commerce:order", args=[licence.order_id])).status_code == 404
    assert client.get(reverse("commerce:downloads", args=[licence.pk])).status_code == 404


def _links(client, licence) -> dict[str, str]:
    exports = client.get(reverse("pack-licence-downloads", args=[licence.pk])).json()
    return {f["name"]: f["url"] for export in exports for f in export["files"]}


def test_buyers_scripts_list_their_licences_and_links_through_the_api(client, licence, carol, bob, order, deliver):
    from rest_framework.authtoken.models import Token

    api = APIClient()
    assert api.get("/api/pack-licences/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=carol).key}")
    [listed] = api.get("/api/pack-licences/").json()["results"]
    assert (listed["id"], listed["pack"], listed["version"]) == (str(licence.pk), "everyday", 1)
    assert listed["manifest_sha256"] == licence.manifest_sha256 and listed["active"] is True
    exports = api.get(listed["downloads_url"]).json()
    assert {e["kind"]: e["status"] for e in exports} == {"webdataset": "ready", "imagefolder": "ready"}
    zip_file = next(f for e in exports for f in e["files"] if f["name"].endswith(".zip"))
    assert zip_file["url"].startswith("http://testserver/downloads/")
    assert client.get(zip_file["url"]).status_code == 200  # the link alone downloads (curl)

    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=bob).key}")
    assert api.get("/api/pack-licences/").json()["results"] == []
    assert api.get(listed["downloads_url"]).status_code == 404

    deliver(client, refund_event(order, event_id="evt_refund"))
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=carol).key}")
    assert api.get(listed["downloads_url"]).status_code == 403


def test_signed_links_download_for_their_buyer_only_until_they_expire(client, licence, carol, bob, settings):
    client.force_login(carol)
    links = _links(client, licence)
    assert any(name.endswith(".tar") for name in links) and any(name.endswith(".zip") for name in links)
    name, url = next((n, u) for n, u in links.items() if n.endswith(".tar"))
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment")
    assert b"".join(response.streaming_content)[257:262] == b"ustar"
    client.logout()
    assert client.get(url).status_code == 200  # the link is the credential (curl, wget)...
    client.force_login(bob)
    assert client.get(url).status_code == 403  # ...but only its buyer's
    client.force_login(carol)
    assert client.get(url[:-3] + "xyz/").status_code == 403  # tampered
    settings.DOWNLOAD_LINK_SECONDS = -1
    expired = client.get(url)
    assert expired.status_code == 403 and b"expired" in expired.content


def test_a_revoked_licence_stops_its_links(client, licence, carol, order, deliver):
    client.force_login(carol)
    url = next(iter(_links(client, licence).values()))
    deliver(client, refund_event(order, event_id="evt_refund"))
    response = client.get(url)
    assert response.status_code == 403 and b"not active" in response.content
