"""Pack pages: the public catalogue and version pages (thumbnails only), revocation lists, staff building."""

import re

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from marketplace.catalog import services as catalog
from marketplace.packs import services
from marketplace.packs.models import Pack, PackVersion
from tests.test_packs import exports_queued, licensees_told, new_pack  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("exports_queued", "licensees_told")


def client_for(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def version_url(version: PackVersion) -> str:
    return reverse("packs:version", args=[version.pack.slug, version.number])


def thumbnail_url(item) -> str:
    return reverse("packs:thumbnail", args=[item.version.pack.slug, item.version.number, item.pk])


@pytest.fixture
def published(make_eligible_asset, alice, bob, staff):
    """A listed pack with one version of two images by two creators."""
    first = make_eligible_asset(alice, "astronaut", title="Moonwalk", licence="cc-by-4.0")
    second = make_eligible_asset(bob, "coffee", title="Morning cup")
    pack = new_pack(staff, description="Everyday scenes.")
    version = services.publish_version(pack, actor=staff)
    return version, first, second


# --- public pages ------------------------------------------------------------------------------------


def test_the_catalogue_lists_published_listed_packs_with_their_latest_version(published, staff):
    version, _, _ = published
    new_pack(staff, title="Not yet published", slug="draft")
    hidden = new_pack(staff, title="Private pack", slug="private", is_listed=False)
    services.publish_version(hidden, actor=staff)
    services.save_pack(actor=staff, pack=version.pack, price_cents=12345)
    services.publish_version(version.pack, actor=staff)

    page = client_for().get(reverse("packs:list")).content.decode()
    assert "Street life" in page and "v2" in page and "$123.45" in page
    assert "Not yet published" not in page and "Private pack" not in page
    # Unlisted packs stay reachable by their address.
    assert client_for().get(reverse("packs:detail", args=["private"])).status_code == 302


def test_a_pack_address_leads_to_its_latest_version(published, staff):
    version, _, _ = published
    services.save_pack(actor=staff, pack=version.pack, price_cents=9900)
    v2 = services.publish_version(version.pack, actor=staff)
    response = client_for().get(reverse("packs:detail", args=["street-life"]))
    assert response.status_code == 302 and response["Location"] == version_url(v2)
    new_pack(staff, slug="draft")
    assert client_for().get(reverse("packs:detail", args=["draft"])).status_code == 404
    assert client_for().get(reverse("packs:detail", args=["nothing"])).status_code == 404
    assert client_for().get(reverse("packs:version", args=["street-life", 9])).status_code == 404


@pytest.mark.parametrize("who", [None, "carol"])
def test_the_version_page_shows_thumbnails_only_and_what_a_buyer_gets(published, who, request):
    version, first, second = published
    response = client_for(request.getfixturevalue(who) if who else None).get(version_url(version))
    assert response.status_code == 200
    page = response.content.decode()
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert sorted(images) == sorted(thumbnail_url(item) for item in version.items.all())
    assert "/assets/" not in page  # no link to a preview, original or delivery file
    assert f'href="{reverse("commerce:checkout", args=[version.pk])}"' in page and "$49.00" in page
    assert version.manifest_sha256 in page
    assert reverse("packs:revocations", args=["street-life", 1]) in page
    for text in ("Datasheet", "Collection and consent", "Everyday scenes.", "Creative Commons Attribution 4.0"):
        assert text in page
    assert "Moonwalk" in page and "Alice Photo" in page  # the credit an attribution licence requires


def test_the_thumbnail_view_serves_only_the_thumbnail_of_an_item_of_that_version(published, make_eligible_asset, staff):
    version, first, _ = published
    item = version.items.get(asset=first)
    response = client_for().get(thumbnail_url(item))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == default_storage.open(first.thumbnail.name, "rb").read()
    assert response["Content-Security-Policy"].startswith("default-src 'none'")

    other_pack = new_pack(staff, slug="other", picks=[first.pk])
    other_item = services.publish_version(other_pack, actor=staff).items.get(asset=first)
    wrong_version = reverse("packs:thumbnail", args=["street-life", 1, other_item.pk])
    assert client_for().get(wrong_version).status_code == 404
    assert client_for().get(reverse("packs:thumbnail", args=["street-life", 1, 999999])).status_code == 404
    assert client_for().get(reverse("packs:thumbnail", args=["street-life", 2, item.pk])).status_code == 404


def test_a_withdrawn_image_leaves_the_public_page_and_is_named_on_the_revocation_list(
    published, bob, staff, django_capture_on_commit_callbacks
):
    version, _, second = published
    item = version.items.get(asset=second)
    with django_capture_on_commit_callbacks(execute=True):
        catalog.withdraw_asset(second, actor=bob)

    page = client_for().get(version_url(version)).content.decode()
    assert thumbnail_url(item) not in page
    assert "2 published, 1 since withdrawn" in page
    assert client_for().get(thumbnail_url(item)).status_code == 404

    revocations = client_for().get(reverse("packs:revocations", args=["street-life", 1])).content.decode()
    assert "<img" not in revocations
    for text in (item.key, "Morning cup", "bob", "The creator withdrew the image"):
        assert text in revocations

    v2 = services.publish_version(version.pack, actor=staff)
    assert second.pk not in set(v2.items.values_list("asset_id", flat=True))


def test_an_older_version_says_a_newer_one_exists(published, staff):
    version, _, _ = published
    services.save_pack(actor=staff, pack=version.pack, price_cents=5000)
    v2 = services.publish_version(version.pack, actor=staff)
    old = client_for().get(version_url(version)).content.decode()
    assert "A newer version of this pack exists" in old and version_url(v2) in old
    assert "A newer version" not in client_for().get(version_url(v2)).content.decode()


# --- staff pages --------------------------------------------------------------------------------------


STAFF_PAGES = [("packs:staff-list", []), ("packs:staff-new", [])]


@pytest.mark.parametrize("who", [None, "alice", "carol"])
def test_only_staff_reach_the_pack_building_pages(published, who, request):
    version, _, _ = published
    client = client_for(request.getfixturevalue(who) if who else None)
    pack_pk = version.pack.pk

    def refused(response) -> bool:  # a visitor is sent to log in; a signed-in non-staff user gets 403
        if who is None:
            return response.status_code == 302 and response["Location"].startswith("/accounts/login/")
        return response.status_code == 403

    for name, args in [*STAFF_PAGES, ("packs:staff-edit", [pack_pk])]:
        assert refused(client.get(reverse(name, args=args))), name
    assert refused(client.post(reverse("packs:staff-publish", args=[pack_pk])))
    response = client.post(
        reverse("packs:staff-new"), {"title": "Mine", "slug": "mine", "use": "commercial", "price": "5"}
    )
    assert refused(response)
    assert PackVersion.objects.count() == 1 and not Pack.objects.filter(slug="mine").exists()


def pack_form(**overrides) -> dict:
    return {"title": "City nights", "slug": "city-nights", "description": "Night streets.", "use": "commercial",
            "price": "49.99", "query": "", "tag": "", "licence": "", "creator": "", "min_short_side": "",
            "picks": "", "removals": "", "size": "", "is_listed": "on", **overrides}  # fmt: skip


def test_staff_build_a_pack_and_see_the_selection_with_excluded_picks(make_eligible_asset, alice, staff):
    good = make_eligible_asset(alice, "astronaut")
    unconsented = make_eligible_asset(alice, "coffee", ai_training_consent=False)
    client = client_for(staff)
    response = client.post(reverse("packs:staff-new"), pack_form(picks=f"{unconsented.pk}, {good.pk}"))
    pack = Pack.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("packs:staff-edit", args=[pack.pk])
    assert (pack.price_cents, pack.picks, pack.created_by) == (4999, [unconsented.pk, good.pk], staff)

    page = client.get(response["Location"]).content.decode()
    assert reverse("catalog:asset-file", args=[good.pk, "thumbnail"]) in page
    assert reverse("catalog:asset-file", args=[unconsented.pk, "thumbnail"]) not in page
    assert f"Image {unconsented.pk}" in page and "no consent to AI training" in page
    assert 'value="49.99"' in page


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"price": "abc"}, "Give the price as a number of dollars"),
        ({"price": "0"}, "The price must be at least $0.50"),
        ({"price": "-5"}, "The price must be at least $0.50"),
        ({"price": "1.999"}, "Give the price in dollars and cents"),
        ({"picks": "12, twelve"}, "“twelve” is not an image id"),
        ({"picks": "999999"}, "No image has the id 999999."),
        ({"size": "0"}, "greater than or equal to 1"),
        ({"creator": "mallory"}, "No creator is called “mallory”."),
        ({"slug": "two words"}, "Enter a valid “slug”"),
    ],
)
def test_bad_pack_input_gets_a_clear_error_and_saves_nothing(staff, overrides, message):
    response = client_for(staff).post(reverse("packs:staff-new"), pack_form(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Pack.objects.exists()


def test_staff_publish_from_the_page_and_are_told_when_nothing_changed(make_eligible_asset, alice, staff):
    make_eligible_asset(alice, "astronaut")
    pack = new_pack(staff)
    client = client_for(staff)
    publish = reverse("packs:staff-publish", args=[pack.pk])
    assert client.get(publish).status_code == 405

    response = client.post(publish, follow=True)
    assert response.redirect_chain[-1][0] == reverse("packs:version", args=["street-life", 1])
    assert "Published version 1 with 1 images." in response.content.decode()

    response = client.post(publish, follow=True)
    assert "Nothing changed since version 1" in response.content.decode()
    assert PackVersion.objects.count() == 1

    edit = client.get(reverse("packs:staff-edit", args=[pack.pk])).content.decode()
    assert reverse("packs:version", args=["street-life", 1]) in edit


def test_publishing_an_empty_selection_shows_the_reason(make_eligible_asset, alice, staff):
    make_eligible_asset(alice, "astronaut", licence="mkt-ai-research-1.0")
    pack = new_pack(staff)
    response = client_for(staff).post(reverse("packs:staff-publish", args=[pack.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("packs:staff-edit", args=[pack.pk])
    assert "Nothing to publish" in response.content.decode()
    assert not PackVersion.objects.exists()


def test_a_query_the_model_cannot_rank_is_explained_and_nothing_is_published(
    make_eligible_asset, alice, staff, settings, tmp_path
):
    make_eligible_asset(alice, "astronaut")
    pack = new_pack(staff, query="city at night")
    settings.CURATION_CLIP_PRETRAINED = str(tmp_path / "no-such-checkpoint.pt")
    client = client_for(staff)
    page = client.get(reverse("packs:staff-edit", args=[pack.pk])).content.decode()
    assert "The query cannot be ranked" in page and "CURATION_CLIP_PRETRAINED" in page
    response = client.post(reverse("packs:staff-publish", args=[pack.pk]), follow=True)
    assert "The query cannot be ranked" in response.content.decode()
    assert not PackVersion.objects.exists()
