"""Staff review in a real browser: a possibly stolen image, side by side, released with a note."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.catalog import services as catalog
from marketplace.core.photos import load_photo
from marketplace.curation import selectors
from marketplace.curation.models import Flag, FlagDecision
from tests.test_browser import browser, expect, log_in, page, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser


def jpeg(image, quality=90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_staff_review_a_cross_creator_duplicate_and_release_the_hold(
    server, tiny_clip, alice, bob, staff, page, expect, django_capture_on_commit_callbacks
):
    photo = load_photo("motorcycle", min_short_side=720)
    with django_capture_on_commit_callbacks(execute=True):
        catalog.upload_asset(owner=alice, uploaded_file=SimpleUploadedFile("mine.jpg", jpeg(photo)))
    with django_capture_on_commit_callbacks(execute=True):
        copy = catalog.upload_asset(owner=bob, uploaded_file=SimpleUploadedFile("copy.jpg", jpeg(photo, 50)))
    flag = Flag.objects.get(kind=Flag.Kind.CROSS_CREATOR)
    assert selectors.active_holds(copy).exists()

    log_in(page, server, expect, username="sam", next_path="/curation/review/")
    row = page.locator(f'tr[data-flag-id="{flag.pk}"]')
    expect(row).to_contain_text("Possibly stolen")
    expect(row).to_contain_text("hamming")
    row.get_by_role("link").first.click()
    previews = page.locator(".side-by-side img")
    expect(previews).to_have_count(2)
    for index in range(2):  # both images really load
        previews.nth(index).evaluate("img => img.decode()")
        assert previews.nth(index).evaluate("img => img.naturalWidth") > 0
    page.select_option("select[name=action]", "keep")
    page.fill("textarea[name=note]", "Same photographer, second account.")
    page.get_by_role("button", name="Record decision").click()
    expect(page.locator(".messages")).to_contain_text("Decision recorded: keep.")
    expect(page.locator(f'tr[data-flag-id="{flag.pk}"]')).to_have_count(0)
    decision = FlagDecision.objects.get(flag=flag)
    assert (decision.actor, decision.action, decision.note) == (staff, "keep", "Same photographer, second account.")
    assert not selectors.active_holds(copy).exists()
    assert page.js_errors == []
