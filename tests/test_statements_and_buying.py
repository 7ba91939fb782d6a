"""Issue 12, items 9 and 10: what a creator's statement calls a sold image, what a pack page offers when its
version is no longer sold, and who may use a signed download link and for how long.

Everything is bought the way a buyer buys: checkout, then Stripe's signed webhook (Stripe's API itself is
faked, as in test_commerce.py); everything is observed through pages, CSV and the API.
"""

import csv
import io
import re
import time

import pytest
from django.core import signing
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from marketplace.commerce.models import Order, PackLicence
from marketplace.packs import exports
from marketplace.packs import services as packs
from marketplace.packs.models import PackExport
from tests.commerce_helpers import (  # noqa: F401 (fixtures, used by name)
    WEBHOOK_SECRET,
    fake_stripe_fixture,
    intent_event,
    refund_event,
    signed,
    stripe_settings_fixture,
)


def api_for(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return api


@pytest.fixture
def withdraw(django_capture_on_commit_callbacks):
    """The creator withdraws an image through the API; its revocations are made after commit, as in production."""

    def creator_withdraws(creator, asset) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            response = api_for(creator).post(f"/api/assets/{asset.pk}/withdraw/")
        assert response.status_code == 200, response.content

    return creator_withdraws


def buy_links(page: str) -> list[str]:
    """Every checkout address the page links to."""
    return re.findall(r'href="(/buy/[^"]*)"', page)


def version_url(version) -> str:
    return reverse("packs:version", args=[version.pack.slug, version.number])


def checkout_url(version) -> str:
    return reverse("commerce:checkout", args=[version.pk])


@pytest.fixture
def deliver(client, django_capture_on_commit_callbacks):
    """Stripe delivering a signed event to the webhook."""

    def post(event):
        payload, header = signed(event)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                reverse("commerce:stripe-webhook"),
                payload,
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=header,
            )
        assert response.status_code == 200, response.content
        return response

    return post


@pytest.fixture
def buy(client, fake_stripe, deliver):
    """`buyer` checks out `version` and Stripe reports the payment: the paid order."""

    def purchase(buyer, version) -> Order:
        client.force_login(buyer)
        response = client.post(checkout_url(version), {"agree": "yes"})
        assert response.status_code == 200, response.content
        order = Order.objects.filter(buyer=buyer, version=version).latest("created_at")
        deliver(intent_event("payment_intent.succeeded", order, event_id=f"evt_paid_{order.pk}"))
        client.logout()
        order.refresh_from_db()
        assert order.status == Order.Status.PAID
        return order

    return purchase


@pytest.fixture
def publish(staff, django_capture_on_commit_callbacks):
    """Staff publish the pack's current selection; its downloads are built as a worker would."""

    def publish_version(pack):
        with django_capture_on_commit_callbacks(execute=True):
            return packs.publish_version(pack, actor=staff)

    return publish_version


@pytest.fixture
def everyday(alice, bob, staff, make_eligible_asset, publish):
    """A listed $50 pack, version 1: two images by Alice (one titled "Moonwalk"), one by Bob."""
    moonwalk = make_eligible_asset(alice, "astronaut", title="Moonwalk")
    make_eligible_asset(alice, "coffee", title="Morning cup")
    make_eligible_asset(bob, "rocket", title="Launch")
    pack = packs.save_pack(actor=staff, title="Everyday things", slug="everyday", price_cents=5000, use="commercial")
    return {"pack": pack, "v1": publish(pack), "moonwalk": moonwalk}


def this_months_statement(client, creator) -> list[list[str]]:
    client.force_login(creator)
    today = timezone.localdate()
    response = client.get(reverse("royalties:statement", args=[today.year, today.month]))
    assert response.status_code == 200
    return list(csv.reader(io.StringIO(response.content.decode())))[2:-2]  # the lines, without the balances


def statement_titles(rows, asset_id) -> list[tuple[str, str]]:
    """(transaction, title) of each statement line for this image, in order."""
    return [(row[1], row[6]) for row in rows if row[5] == str(asset_id)]


# --- 9a: statements name an image as it was sold -----------------------------------------------------


def test_a_renamed_image_keeps_its_sold_title_on_the_statement_and_the_earnings_page(
    client, everyday, alice, carol, buy, deliver, publish, make_eligible_asset
):
    moonwalk = everyday["moonwalk"]
    first = buy(carol, everyday["v1"])
    renamed = api_for(alice).patch(f"/api/assets/{moonwalk.pk}/", {"title": "First steps"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["title"] == "First steps"

    # The sale of version 1 (and its refund, made after the rename) still says "Moonwalk": that is the
    # title frozen in the version the buyer licensed. A sale of a version published after the rename says
    # "First steps".
    deliver(refund_event(first, event_id="evt_refund_first"))
    v2 = publish(everyday["pack"])
    assert v2.number == 2
    buy(carol, v2)

    rows = this_months_statement(client, alice)
    assert statement_titles(rows, moonwalk.pk) == [
        ("Sale", "Moonwalk"),
        ("Refund", "Moonwalk"),
        ("Sale", "First steps"),
    ]

    page = client.get(reverse("royalties:earnings")).content.decode()
    by_image = page[page.index('id="by-image"') :]
    assert "Moonwalk</a> <span" in by_image and "(now: First steps)" in by_image  # the first sale, netted to 0
    assert "First steps</a></td>" in by_image  # the second sale, under the title it was sold with


def test_an_untitled_image_is_named_by_its_file_on_the_statement(client, alice, carol, staff, make_eligible_asset,
                                                                 buy, publish):  # fmt: skip
    untitled = make_eligible_asset(alice, "chelsea", title="")
    pack = packs.save_pack(actor=staff, title="Cats", slug="cats", price_cents=1000, use="commercial")
    buy(carol, publish(pack))
    api_for(alice).patch(f"/api/assets/{untitled.pk}/", {"title": "Chelsea the cat"}, format="json")
    assert statement_titles(this_months_statement(client, alice), untitled.pk) == [("Sale", "chelsea.jpg")]


def test_a_statement_costs_the_same_queries_however_many_lines_it_has(everyday, alice, carol, buy, deliver):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from marketplace.royalties import selectors as royalties

    today = timezone.localdate()

    def queries_and_lines() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            lines = royalties.statement(alice, today.year, today.month).rows
        return len(queries), len(lines)

    order = buy(carol, everyday["v1"])
    sale = queries_and_lines()
    deliver(refund_event(order, event_id="evt_refund_for_count"))  # a line more for each of alice's two images
    sale_and_refund = queries_and_lines()
    assert sale_and_refund[1] == sale[1] + 2
    assert sale_and_refund[0] == sale[0]  # the sold titles come with the lines, not one lookup per line


# --- 9b: a version that is no longer sold says why, and offers the one that is -----------------------------


def test_a_superseded_version_says_so_and_offers_the_current_version(client, everyday, alice, carol, publish,
                                                                     make_eligible_asset, fake_stripe):  # fmt: skip
    v1 = everyday["v1"]
    make_eligible_asset(alice, "chelsea", title="Chelsea")
    v2 = publish(everyday["pack"])
    reason = "Version 1 has been superseded; version 2 is for sale."

    for viewer in (None, carol):  # what anyone sees, logged in or not
        client.logout()
        if viewer:
            client.force_login(viewer)
        page = client.get(version_url(v1)).content.decode()
        assert reason in page and "Not for sale" in page
        assert f'href="{checkout_url(v1)}"' not in page  # no Buy that checkout would refuse
        assert f'href="{checkout_url(v2)}"' in page and "Buy version 2 · $50.00" in page
        current = client.get(version_url(v2)).content.decode()
        assert f'href="{checkout_url(v2)}"' in current and "Not for sale" not in current

    # Checkout, its page and its answer to the page's script, give the same reason and the same way on.
    page = client.get(checkout_url(v1)).content.decode()
    assert reason in page and f'href="{checkout_url(v2)}"' in page and "pay-form" not in page
    refused = client.post(checkout_url(v1), {"agree": "yes"})
    assert refused.status_code == 409
    assert refused.json() == {"error": reason, "current_version": 2, "current_checkout_url": checkout_url(v2)}
    assert not Order.objects.filter(version=v1).exists()
    assert client.post(checkout_url(v2), {"agree": "yes"}).status_code == 200


def test_a_version_creators_withdrew_images_from_is_not_offered_until_a_new_one_is_published(
    client, everyday, alice, carol, publish, withdraw, fake_stripe
):
    v1 = everyday["v1"]
    withdraw(alice, everyday["moonwalk"])
    reason = "Creators withdrew images from this version, so it is no longer sold; a new version will replace it."

    client.force_login(carol)
    page = client.get(reverse("packs:detail", args=["everyday"]), follow=True).content.decode()  # the pack's page
    assert reason in page and buy_links(page) == []  # nothing to buy yet: no newer version
    refused = client.post(checkout_url(v1), {"agree": "yes"})
    assert refused.status_code == 409 and refused.json() == {"error": reason}
    assert reason in client.get(checkout_url(v1)).content.decode()

    v2 = publish(everyday["pack"])  # staff replace it: v2 without the withdrawn image
    page = client.get(version_url(v1)).content.decode()
    assert "superseded" in page and f'href="{checkout_url(v2)}"' in page
    assert (
        f'href="{checkout_url(v2)}"'
        in client.get(reverse("packs:detail", args=["everyday"]), follow=True).content.decode()
    )


def test_a_version_an_image_was_taken_down_from_is_not_sold_and_says_so(
    client, everyday, carol, staff, django_capture_on_commit_callbacks, fake_stripe
):
    v1 = everyday["v1"]
    with django_capture_on_commit_callbacks(execute=True):  # its revocations are made after commit
        url = f"/api/assets/{everyday['moonwalk'].pk}/takedown/"
        taken_down = api_for(staff).post(url, {"reason": "Not the uploader's own work."}, format="json")
    assert taken_down.status_code == 200, taken_down.content
    reason = (
        "Images were taken out of this version after it was published (see its revocation list), so it is no "
        "longer sold; a new version will replace it."
    )  # not "Creators withdrew": the platform did
    client.force_login(carol)
    page = client.get(version_url(v1)).content.decode()
    assert reason in page and buy_links(page) == []
    assert client.post(checkout_url(v1), {"agree": "yes"}).json() == {"error": reason}


def test_a_pack_taken_off_sale_offers_nothing(client, everyday, staff, carol, fake_stripe):
    v1 = everyday["v1"]
    packs.save_pack(actor=staff, pack=everyday["pack"], is_listed=False)
    client.force_login(carol)
    page = client.get(version_url(v1)).content.decode()
    assert "This pack is not for sale." in page and buy_links(page) == []
    assert client.post(checkout_url(v1), {"agree": "yes"}).json() == {"error": "This pack is not for sale."}


def test_a_version_superseded_by_one_that_is_not_sold_either_offers_nothing(
    client, everyday, alice, carol, publish, withdraw, make_eligible_asset
):
    v1 = everyday["v1"]
    cat = make_eligible_asset(alice, "chelsea", title="Chelsea")
    v2 = publish(everyday["pack"])
    withdraw(alice, cat)  # v2 stops being sold
    client.force_login(carol)
    page = client.get(version_url(v1)).content.decode()
    assert "superseded by version 2, which is not sold either" in page
    assert buy_links(page) == []
    assert "which is not sold either" in client.post(checkout_url(v1), {"agree": "yes"}).json()["error"]
    assert v2.number == 2


# --- 10: signed download links are short-lived bearer links ------------------------------------------------


@pytest.fixture
def licence(everyday, carol, buy) -> PackLicence:
    return PackLicence.objects.get(order=buy(carol, everyday["v1"]))


def fresh_links(buyer, licence) -> dict[str, str]:
    """What a buyer's script gets: the API's downloads_url with the buyer's token."""
    [listed] = api_for(buyer).get("/api/pack-licences/").json()["results"]
    exports_listed = api_for(buyer).get(listed["downloads_url"]).json()
    return {f["name"]: f["url"] for export in exports_listed for f in export["files"]}


def zip_link(links: dict[str, str]) -> str:
    return next(url for name, url in links.items() if name.endswith(".zip"))


@pytest.fixture
def clock(monkeypatch):
    """Move the signing clock forward (links carry the time they were signed, checked against time.time())."""
    real_time = time.time

    def advance(seconds: float) -> None:
        monkeypatch.setattr(signing.time, "time", lambda: real_time() + seconds)

    return advance


def test_a_link_works_without_a_session_for_15_minutes_then_says_it_expired(client, licence, carol, clock):
    url = zip_link(fresh_links(carol, licence))
    client.logout()
    response = client.get(url)  # a script: no session, just the link
    assert response.status_code == 200 and b"".join(response.streaming_content)[:2] == b"PK"

    clock(14 * 60)
    assert client.get(url).status_code == 200
    clock(15 * 60 + 1)
    expired = client.get(url)  # curl: the reason, as text
    assert expired.status_code == 403 and expired["Content-Type"].startswith("text/plain")
    assert b"expired" in expired.content and b"15 minutes" in expired.content

    # A person in a browser gets a page that says why and leads to fresh links.
    page = client.get(url, HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")
    assert "has expired" in page.content.decode()
    downloads_page = reverse("commerce:downloads", args=[licence.pk])
    assert f'href="{downloads_page}"' in page.content.decode()
    client.force_login(carol)
    assert client.get(downloads_page).status_code == 200
    assert client.get(zip_link(fresh_links(carol, licence))).status_code == 200  # a fresh link works


def test_a_link_is_refused_in_another_accounts_session(client, licence, carol, bob, staff):
    url = zip_link(fresh_links(carol, licence))
    for other in (bob, staff):
        client.force_login(other)
        refused = client.get(url)
        assert refused.status_code == 403 and b"another buyer" in refused.content


def test_a_refund_stops_links_already_handed_out(client, licence, carol, deliver):
    url = zip_link(fresh_links(carol, licence))
    deliver(refund_event(licence.order, event_id="evt_refund"))
    client.logout()
    refused = client.get(url, HTTP_ACCEPT="text/html")
    assert refused.status_code == 403 and "not active" in refused.content.decode()
    [listed] = api_for(carol).get("/api/pack-licences/").json()["results"]
    assert api_for(carol).get(listed["downloads_url"]).status_code == 403  # and no fresh ones


def test_a_rebuilt_download_stops_the_links_to_the_previous_build(client, licence, carol):
    url = zip_link(fresh_links(carol, licence))
    export = licence.version.exports.get(kind=PackExport.Kind.IMAGEFOLDER)
    # An operator has the download built again (say, after its stored files were lost).
    PackExport.objects.filter(pk=export.pk).update(status=PackExport.Status.PENDING)
    client.logout()
    assert client.get(url).status_code == 403  # not ready meanwhile
    assert exports.build_export(export.pk) == exports.Outcome.BUILT
    refused = client.get(url)
    assert refused.status_code == 403 and b"built again" in refused.content
    assert client.get(zip_link(fresh_links(carol, licence))).status_code == 200
