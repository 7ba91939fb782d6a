"""A buyer who opens a pack version that is no longer sold, in a real browser: the page says why, offers no
Buy for it, and leads to the current version, which they buy with a test card (localstripe, as in
test_browser_purchase.py)."""

import pytest

from marketplace.catalog import services as catalog
from marketplace.commerce.models import Order, PackLicence
from marketplace.packs import services as packs
from tests.test_browser import browser, expect, log_in, page, server  # noqa: F401  (shared fixtures)
from tests.test_browser_purchase import localstripe, pay, stripe_on_localstripe  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser


def test_a_buyer_on_a_version_no_longer_sold_sees_why_and_buys_the_current_one(
    stripe_on_localstripe, server, page, expect, alice, bob, carol, staff, make_eligible_asset
):
    moonwalk = make_eligible_asset(alice, "astronaut", title="Moonwalk")
    make_eligible_asset(alice, "coffee", title="Morning cup")
    make_eligible_asset(bob, "rocket", title="Launch")
    pack = packs.save_pack(actor=staff, title="Everyday things", slug="everyday", price_cents=5000, use="commercial")
    v1 = packs.publish_version(pack, actor=staff)
    catalog.withdraw_asset(moonwalk, actor=alice)  # v1 stops being sold; nothing replaces it yet

    log_in(page, server, expect, username="carol", next_path="/packs/everyday/v1/")
    notice = page.locator("#not-for-sale")
    expect(notice).to_contain_text("Creators withdrew images from this version, so it is no longer sold")
    expect(page.get_by_role("link", name="Buy")).to_have_count(0)

    v2 = packs.publish_version(pack, actor=staff)  # staff publish the replacement, without the withdrawn image
    page.reload()
    expect(notice).to_contain_text("Version 1 has been superseded; version 2 is for sale.")
    expect(page.get_by_role("link", name="Buy a licence")).to_have_count(0)
    page.get_by_role("link", name="Buy version 2").click()

    expect(page.locator("h1")).to_contain_text("version 2")
    expect(page.locator("#price")).to_have_text("$50.00")
    pay(page, expect)
    expect(page.locator("#order-status")).to_have_text("Paid", timeout=30_000)
    order = Order.objects.get(buyer=carol)
    assert order.version == v2 and order.amount_cents == 5000
    assert PackLicence.objects.get(order=order).version == v2
    assert not Order.objects.filter(version=v1).exists()
    assert page.js_errors == []
