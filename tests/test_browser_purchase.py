"""The whole purchase in a real browser, against localstripe: as a newcomer does it after `make run`.

The buyer opens the pack page, pays with 4242 4242 4242 4242 through Stripe.js (localstripe's, extended
by marketplace.commerce.localstripe_server), localstripe sends its signed webhook to the live server,
the licence appears, the download's files match the manifest, and the creators' balances move by
exactly the expected cents (localstripe charges Stripe's 2.9 % + 30 cents fee here).
"""

import hashlib
import io
import json
import tarfile

import pytest
import requests

from marketplace.commerce.models import Order, PackLicence
from marketplace.packs import services as packs
from marketplace.royalties.selectors import available_cents
from tests.commerce_helpers import WEBHOOK_SECRET, LocalStripe
from tests.test_browser import browser, expect, log_in, page, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def localstripe():
    fake = LocalStripe()
    yield fake
    fake.stop()


@pytest.fixture
def stripe_on_localstripe(settings, localstripe, server):
    settings.STRIPE_API_BASE = localstripe.url
    settings.STRIPE_JS_URL = f"{localstripe.url}/js.stripe.com/v3/"
    settings.STRIPE_SECRET_KEY, settings.STRIPE_PUBLISHABLE_KEY = "sk_test_browser", "pk_test_browser"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.PLATFORM_SHARE_PERCENT = 15
    localstripe.register_webhook(f"{server.url}/stripe/webhook/")
    return localstripe


def pay(page, expect, card="4242424242424242"):
    page.get_by_label("I accept the licence terms").check()
    card_box = page.locator("#card-element")
    card_box.get_by_placeholder("number").fill(card)
    card_box.get_by_placeholder("exp_month").fill("12")
    card_box.get_by_placeholder("exp_year").fill("34")
    card_box.get_by_placeholder("cvc").fill("123")
    card_box.get_by_placeholder("postal_code").fill("10001")
    page.locator("#pay-button").click()


def test_a_buyer_pays_with_a_test_card_and_downloads_the_licensed_files(
    stripe_on_localstripe, server, page, expect, alice, bob, carol, staff, make_eligible_asset
):
    make_eligible_asset(alice, "astronaut")
    make_eligible_asset(alice, "coffee")
    make_eligible_asset(bob, "rocket")
    pack = packs.save_pack(actor=staff, title="Everyday things", slug="everyday", price_cents=5000, use="commercial")
    version = packs.publish_version(pack, actor=staff)
    before = available_cents(alice), available_cents(bob)

    log_in(page, server, expect, username="carol", next_path=f"/packs/{pack.slug}/v1/")
    expect(page.locator("body")).to_contain_text(version.manifest_sha256)
    page.get_by_role("link", name="Buy").first.click()
    expect(page.locator("#price")).to_have_text("$50.00")
    pay(page, expect)

    # The order page waits for Stripe's webhook, then links the licence.
    expect(page.locator("#order-status")).to_have_text("Paid", timeout=30_000)
    order = Order.objects.get(buyer=carol)
    assert (order.status, order.amount_cents, order.fee_cents) == ("paid", 5000, 175)
    page.get_by_role("link", name="Your licence and downloads").click()
    licence = PackLicence.objects.get(order=order)
    expect(page.locator("h1")).to_contain_text("Downloads")

    # The WebDataset shards: every image matches the manifest byte for byte.
    manifest = version.manifest
    expected = {item["key"]: item for item in manifest["items"]}
    tar_links = page.locator("section[data-kind=webdataset] a[href*='/downloads/']").filter(has_text=".tar")
    expect(tar_links.first).to_be_visible(timeout=30_000)
    seen = {}
    for href in tar_links.evaluate_all("links => links.map(a => a.href)"):
        response = requests.get(href, timeout=30)
        assert response.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(response.content)) as shard:
            for member in shard.getmembers():
                key, _, extension = member.name.partition(".")
                data = shard.extractfile(member).read()
                if extension in ("jpg", "png", "webp"):
                    seen[key] = hashlib.sha256(data).hexdigest()
                elif extension == "txt":
                    assert data.decode() == expected[key]["caption"]
    assert seen == {key: item["sha256"] for key, item in expected.items()}
    manifest_link = page.locator("section[data-kind=webdataset] a", has_text="manifest.json")
    manifest_bytes = requests.get(manifest_link.evaluate("a => a.href"), timeout=30).content
    assert hashlib.sha256(manifest_bytes).hexdigest() == licence.manifest_sha256 == version.manifest_sha256
    assert json.loads(manifest_bytes) == manifest

    # Royalties: net 4825, platform 723, pool 4102 split 2:1 -> alice 2735, bob 1367, to the cent.
    assert (available_cents(alice) - before[0], available_cents(bob) - before[1]) == (2735, 1367)

    # The dashboard lists the licence; the certificate verifies publicly.
    page.goto(f"{server.url}/my/licences/")
    expect(page.locator("#licences")).to_contain_text("Everyday things")
    page.goto(f"{server.url}/certificates/{licence.pk}/")
    expect(page.locator("#manifest-sha256")).to_have_text(version.manifest_sha256)
    assert page.js_errors == []


def test_a_declined_card_is_shown_and_grants_nothing(stripe_on_localstripe, server, page, expect, alice, carol, staff,
                                                     make_eligible_asset):  # fmt: skip
    make_eligible_asset(alice, "astronaut")
    pack = packs.save_pack(actor=staff, title="One photo", slug="one", price_cents=1500, use="commercial")
    packs.publish_version(pack, actor=staff)
    log_in(page, server, expect, username="carol", next_path="/packs/one/v1/")
    page.get_by_role("link", name="Buy").first.click()
    pay(page, expect, card="4000000000000341")  # Stripe's "charge declined" test card
    expect(page.locator("#pay-error")).to_contain_text("declined")
    assert not PackLicence.objects.exists()
    assert Order.objects.get(buyer=carol).status in ("pending", "failed")
