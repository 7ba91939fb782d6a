"""Issue 12, items 1 and 2: an image's rights are its creator's alone, and a staff takedown is its own act.

Everything goes through the API, the pages and the admin, as each kind of user: the creator (alice), another
creator (bob), a buyer (carol), staff (sam) and anonymous visitors.
"""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.catalog import services as catalog
from marketplace.catalog.models import Asset
from marketplace.packs import services as packs
from tests.conftest import photo_bytes
from tests.test_packs import exports_queued, licensees_told, new_pack  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("exports_queued", "licensees_told")

REASON = "Reported as a copy of another photographer's work; under review."


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def asset(alice, django_capture_on_commit_callbacks) -> Asset:
    """Alice's ready photo, licensed by her for commercial AI training, with her consent."""
    with django_capture_on_commit_callbacks(execute=True):
        created = catalog.upload_asset(
            owner=alice,
            uploaded_file=SimpleUploadedFile("rocket.jpg", photo_bytes("rocket")),
            metadata={"title": "Launch", "licence": "mkt-ai-commercial-1.0", "ai_training_consent": True},
        )
    created.refresh_from_db()
    assert created.status == Asset.Status.READY
    return created


def rights_of(asset: Asset) -> tuple:
    asset.refresh_from_db()
    return (
        asset.title,
        asset.licence,
        asset.ai_training_consent,
        asset.consent_given_at,
        asset.rights_override_confirmed_at,
        asset.people_identifiable,
        bool(asset.model_release),
        asset.events.count(),
    )


# --- 1. rights are the creator's alone ---------------------------------------------------------------------

RIGHTS_CHANGES = [
    {"ai_training_consent": False},  # taking consent back is the creator's act too
    {"licence": "cc-by-4.0"},
    {"licence": ""},
    {"rights_override_confirmed": True},
    {"people_identifiable": False},  # the creator's word, even when it would change nothing
    {"title": "Moderated", "licence": "cc0-1.0"},  # a moderation edit does not carry a rights change along
]


@pytest.mark.parametrize("changes", RIGHTS_CHANGES)
def test_staff_cannot_change_a_creators_licence_consent_or_rights_through_the_api(asset, staff, changes):
    before = rights_of(asset)
    response = client_for(staff).patch(f"/api/assets/{asset.pk}/", changes, format="json")
    assert response.status_code == 403
    assert "Only the image's creator can change its" in response.json()["detail"]
    assert rights_of(asset) == before


def test_staff_cannot_attach_a_release_to_a_creators_image(asset, staff):
    before = rights_of(asset)
    release = SimpleUploadedFile("release.jpg", photo_bytes("astronaut", min_short_side=200))
    response = client_for(staff).patch(f"/api/assets/{asset.pk}/", {"model_release": release}, format="multipart")
    assert response.status_code == 403 and "model release" in response.json()["detail"]
    assert rights_of(asset) == before


def test_staff_cannot_give_consent_or_a_licence_in_bulk(asset, bob, staff, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        bobs = catalog.upload_asset(owner=bob, uploaded_file=SimpleUploadedFile("c.jpg", photo_bytes("coffee")))
    before = rights_of(asset), rights_of(bobs)
    payload = {"ids": [asset.pk, bobs.pk], "licence": "mkt-ai-commercial-1.0", "ai_training_consent": True}
    response = client_for(staff).post("/api/assets/bulk/", payload, format="json")
    assert response.status_code == 403 and "AI-training consent" in response.json()["detail"]
    assert (rights_of(asset), rights_of(bobs)) == before
    assert not bobs.ai_training_consent and bobs.licence == ""


def test_staff_may_still_correct_the_text_of_someone_elses_images(asset, staff):
    client = client_for(staff)
    response = client.patch(f"/api/assets/{asset.pk}/", {"title": "Rocket launch"}, format="json")
    assert response.status_code == 200 and response.json()["title"] == "Rocket launch"
    response = client.post("/api/assets/bulk/", {"ids": [asset.pk], "tags": ["space"]}, format="json")
    assert response.status_code == 200 and response.json()[0]["tags"] == ["space"]
    asset.refresh_from_db()
    assert asset.licence == "mkt-ai-commercial-1.0" and asset.ai_training_consent
    assert asset.events.filter(kind="metadata_changed", actor=staff).count() == 2


def test_the_creator_sets_their_own_licence_and_consent(asset, alice):
    client = client_for(alice)
    response = client.patch(f"/api/assets/{asset.pk}/", {"licence": "cc-by-4.0"}, format="json")
    assert response.status_code == 200 and response.json()["licence"] == "cc-by-4.0"
    response = client.post("/api/assets/bulk/", {"ids": [asset.pk], "ai_training_consent": False}, format="json")
    assert response.status_code == 200 and response.json()[0]["ai_training_consent"] is False
    assert asset.events.filter(kind="consent_withdrawn", actor=alice).exists()


@pytest.mark.parametrize("who, status", [("staff", 403), ("bob", 404), ("carol", 404), (None, 401)])
def test_nobody_but_the_creator_changes_the_licence_or_consent(asset, who, status, request):
    client = client_for(request.getfixturevalue(who) if who else None)
    before = rights_of(asset)
    patch = client.patch(f"/api/assets/{asset.pk}/", {"licence": "cc0-1.0", "ai_training_consent": False})
    assert patch.status_code == status
    bulk = client.post("/api/assets/bulk/", {"ids": [asset.pk], "licence": "cc0-1.0"}, format="json")
    assert bulk.status_code == {404: 400}.get(status, status)  # others: "No such image", they cannot see it
    edit = client.post(f"/assets/{asset.pk}/edit/", {"licence": "cc0-1.0"})
    assert edit.status_code == {401: 302}.get(status, status)  # the page sends anonymous visitors to log in
    assert rights_of(asset) == before


def test_the_edit_page_offers_staff_only_the_text_and_refuses_a_posted_rights_field(asset, staff):
    client = client_for(staff)
    page = client.get(f"/assets/{asset.pk}/edit/").content.decode()
    assert 'name="title"' in page and 'name="tags"' in page
    for field in (
        "licence",
        "ai_training_consent",
        "rights_override_confirmed",
        "people_identifiable",
        "model_release",
    ):
        assert f'name="{field}"' not in page
    assert "its creator's alone" in page

    before = rights_of(asset)
    refused = client.post(f"/assets/{asset.pk}/edit/", {"title": "Mine", "licence": "cc0-1.0"})
    assert (
        refused.status_code == 403
        and "Only the image&#x27;s creator can change its licence" in refused.content.decode()
    )
    assert rights_of(asset) == before

    saved = client.post(f"/assets/{asset.pk}/edit/", {"title": "Rocket launch", "tags": "space"})
    assert saved.status_code == 302
    asset.refresh_from_db()
    assert asset.title == "Rocket launch" and asset.licence == "mkt-ai-commercial-1.0" and asset.ai_training_consent


def test_the_creators_edit_page_still_sets_licence_and_consent(asset, alice):
    client = client_for(alice)
    assert 'name="licence"' in client.get(f"/assets/{asset.pk}/edit/").content.decode()
    response = client.post(f"/assets/{asset.pk}/edit/", {"title": "Launch", "licence": "cc-by-4.0"})
    assert response.status_code == 302
    asset.refresh_from_db()
    assert asset.licence == "cc-by-4.0" and not asset.ai_training_consent  # the unticked box withdrew consent


def test_the_admin_shows_an_image_but_changes_nothing(asset, django_user_model):
    root = django_user_model.objects.create_superuser(username="root", email="root@example.com", password="x" * 12)
    client = client_for(root)
    url = reverse("admin:catalog_asset_change", args=[asset.pk])
    assert client.get(url).status_code == 200
    before = rights_of(asset)
    response = client.post(url, {"licence": "cc0-1.0", "ai_training_consent": "", "tags": [], "title": "x"})
    assert response.status_code == 403
    assert rights_of(asset) == before and asset.tag_names == []


# --- 2. staff takedowns ----------------------------------------------------------------------------------


def take_down(client, asset, reason=REASON, capture=None):
    if capture is None:
        return client.post(f"/api/assets/{asset.pk}/takedown/", {"reason": reason}, format="json")
    with capture(execute=True):
        return client.post(f"/api/assets/{asset.pk}/takedown/", {"reason": reason}, format="json")


def test_staff_cannot_withdraw_a_creators_image(asset, staff):
    client = client_for(staff)
    response = client.post(f"/api/assets/{asset.pk}/withdraw/")
    assert response.status_code == 403 and "take an image down instead" in response.json()["detail"]
    page = client.post(f"/assets/{asset.pk}/withdraw/")
    assert page.status_code == 403 and "take an image down instead" in page.content.decode()
    asset.refresh_from_db()
    assert asset.withdrawn_at is None and not asset.events.filter(kind="withdrawn").exists()
    assert f'href="/assets/{asset.pk}/withdraw/"' not in client.get(f"/assets/{asset.pk}/").content.decode()


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 2001}, [REASON]])
def test_a_takedown_needs_a_reason(asset, staff, body):
    events = asset.events.count()
    response = client_for(staff).post(f"/api/assets/{asset.pk}/takedown/", body, format="json")
    assert response.status_code == 400 and "reason" in response.json()
    asset.refresh_from_db()
    assert asset.taken_down_at is None and asset.events.count() == events


@pytest.mark.parametrize("who, status", [("alice", 403), ("bob", 404), ("carol", 404), (None, 401)])
def test_only_staff_take_an_image_down_or_reinstate_it(asset, staff, who, status, request):
    client = client_for(request.getfixturevalue(who) if who else None)
    assert take_down(client, asset).status_code == status
    page = client.post(f"/assets/{asset.pk}/takedown/", {"reason": REASON})
    assert page.status_code == {401: 302}.get(status, status)
    asset.refresh_from_db()
    assert asset.taken_down_at is None and not asset.events.filter(kind="taken_down").exists()

    assert take_down(client_for(staff), asset).status_code == 200
    assert client.post(f"/api/assets/{asset.pk}/reinstate/").status_code == status
    assert client.post(f"/assets/{asset.pk}/reinstate/").status_code == {401: 302}.get(status, status)
    asset.refresh_from_db()
    assert asset.is_taken_down and not asset.events.filter(kind="reinstated").exists()


def test_a_takedown_is_recorded_as_the_platforms_and_shown_to_the_creator(
    asset, alice, staff, django_capture_on_commit_callbacks
):
    response = take_down(client_for(staff), asset, capture=django_capture_on_commit_callbacks)
    assert response.status_code == 200
    body = response.json()
    assert body["display_status"] == "taken-down" and body["takedown_reason"] == REASON
    assert body["withdrawn_at"] is None and body["taken_down_at"]
    event = asset.events.get(kind="taken_down")
    assert event.actor == staff and event.details == {"reason": REASON}
    assert not asset.events.filter(kind="withdrawn").exists()

    creator = client_for(alice)
    for page in (creator.get("/my/uploads/"), creator.get(f"/assets/{asset.pk}/")):
        text = page.content.decode()
        assert "Taken down by the platform: Reported as a copy of another photographer&#x27;s work" in text
        assert "badge withdrawn" not in text and "badge taken-down" in text
    assert creator.get("/my/uploads/?status=taken-down").content.decode().count(f'data-asset-id="{asset.pk}"') == 1
    assert creator.get("/api/assets/?status=withdrawn").json()["count"] == 0

    # Taking it down twice is refused; the first reason stands.
    again = take_down(client_for(staff), asset, reason="another reason")
    assert again.status_code == 400 and "already taken down" in again.json()["non_field_errors"][0]


def test_the_takedown_page_asks_for_a_reason_and_the_asset_page_offers_reinstating(asset, staff):
    client = client_for(staff)
    detail = client.get(f"/assets/{asset.pk}/").content.decode()
    assert f'href="/assets/{asset.pk}/takedown/"' in detail
    assert 'name="reason"' in client.get(f"/assets/{asset.pk}/takedown/").content.decode()

    blank = client.post(f"/assets/{asset.pk}/takedown/", {"reason": " "})
    assert blank.status_code == 200 and "This field is required." in blank.content.decode()
    asset.refresh_from_db()
    assert asset.taken_down_at is None

    done = client.post(f"/assets/{asset.pk}/takedown/", {"reason": REASON})
    assert done.status_code == 302 and done["Location"] == f"/assets/{asset.pk}/"
    detail = client.get(f"/assets/{asset.pk}/").content.decode()
    assert f'action="/assets/{asset.pk}/reinstate/"' in detail and "Taken down by the platform" in detail


@pytest.fixture
def published(make_eligible_asset, alice, bob, staff):
    """A listed pack with one version of two images, by alice and bob."""
    first = make_eligible_asset(alice, "astronaut", title="Moonwalk")
    second = make_eligible_asset(bob, "coffee", title="Morning cup")
    version = packs.publish_version(new_pack(staff), actor=staff)
    return version, first, second


def test_public_revocation_lists_name_a_takedown_as_the_platforms(
    published, staff, request, django_capture_on_commit_callbacks
):
    version, _, second = published
    item = version.items.get(asset=second)
    assert take_down(client_for(staff), second, capture=django_capture_on_commit_callbacks).status_code == 200
    assert len(request.getfixturevalue("licensees_told")) == 1  # its licensees are told, as for a withdrawal

    anonymous = client_for(None)
    url = reverse("packs:revocations", args=[version.pack.slug, version.number])
    page = anonymous.get(url).content.decode()
    assert item.key in page and "Taken down by the platform" in page
    assert "The creator withdrew" not in page and REASON not in page  # the reason is for the creator
    listing = anonymous.get(url, {"format": "json"}).json()
    assert [(r["key"], r["reason"], r["reason_label"]) for r in listing["revocations"]] == [
        (item.key, "takedown", "Taken down by the platform")
    ]
    version_page = anonymous.get(reverse("packs:version", args=[version.pack.slug, version.number])).content.decode()
    assert "1 since taken down by the platform" in version_page and "withdrawn by their creators" not in version_page
    thumbnail = reverse("packs:thumbnail", args=[version.pack.slug, version.number, item.pk])
    assert anonymous.get(thumbnail).status_code == 404

    v2 = packs.publish_version(version.pack, actor=staff)
    assert second.pk not in set(v2.items.values_list("asset_id", flat=True))


def test_staff_can_reinstate_an_image_no_published_version_held(
    make_eligible_asset, alice, bob, staff, django_capture_on_commit_callbacks
):
    kept = make_eligible_asset(alice, "astronaut")
    down = make_eligible_asset(bob, "coffee")
    client = client_for(staff)
    assert take_down(client, down, capture=django_capture_on_commit_callbacks).status_code == 200
    # A version published while it was down left it out; nothing in it rests on the takedown.
    pack = new_pack(staff)
    v1 = packs.publish_version(pack, actor=staff)
    assert list(v1.items.values_list("asset_id", flat=True)) == [kept.pk]

    response = client.post(f"/api/assets/{down.pk}/reinstate/")
    assert response.status_code == 200
    assert response.json()["display_status"] == "ready" and response.json()["takedown_reason"] == ""
    event = down.events.get(kind="reinstated")
    assert event.actor == staff and event.details["takedown_reason"] == REASON
    assert list(down.events.values_list("kind", flat=True))[-2:] == ["taken_down", "reinstated"]
    assert "Taken down by the platform:" not in client_for(bob).get(f"/assets/{down.pk}/").content.decode()

    v2 = packs.publish_version(pack, actor=staff)
    assert set(v2.items.values_list("asset_id", flat=True)) == {kept.pk, down.pk}
    assert client.post(f"/api/assets/{down.pk}/reinstate/").status_code == 400  # not taken down any more


def test_a_takedown_a_published_version_depends_on_cannot_be_lifted(
    published, staff, django_capture_on_commit_callbacks
):
    version, _, second = published
    client = client_for(staff)
    assert take_down(client, second, capture=django_capture_on_commit_callbacks).status_code == 200

    response = client.post(f"/api/assets/{second.pk}/reinstate/")
    assert response.status_code == 400
    assert "can no longer be lifted" in response.json()["non_field_errors"][0] and str(version) in str(response.json())
    page = client.post(f"/assets/{second.pk}/reinstate/", follow=True)
    assert "can no longer be lifted" in page.content.decode()
    second.refresh_from_db()
    assert second.is_taken_down and not second.events.filter(kind="reinstated").exists()


def test_an_earlier_revocation_at_the_creators_request_does_not_make_a_takedown_final(
    published, alice, staff, django_capture_on_commit_callbacks
):
    version, first, _ = published
    creator = client_for(alice)
    with django_capture_on_commit_callbacks(execute=True):
        assert creator.patch(f"/api/assets/{first.pk}/", {"ai_training_consent": False}).status_code == 200
    assert creator.patch(f"/api/assets/{first.pk}/", {"ai_training_consent": True}).status_code == 200
    client = client_for(staff)
    assert take_down(client, first, capture=django_capture_on_commit_callbacks).status_code == 200
    # Version 1 names the image as revoked by its creator, not because of the takedown: nothing rests on it.
    assert list(version.revocations.values_list("reason", flat=True)) == ["consent_withdrawn"]
    assert client.post(f"/api/assets/{first.pk}/reinstate/").status_code == 200


def test_the_creator_cannot_lift_a_takedown(asset, alice, staff, django_capture_on_commit_callbacks):
    assert take_down(client_for(staff), asset, capture=django_capture_on_commit_callbacks).status_code == 200
    creator = client_for(alice)
    response = creator.post(f"/api/assets/{asset.pk}/reinstate/")
    assert response.status_code == 403 and "Only staff can reinstate" in response.json()["detail"]
    assert creator.post(f"/assets/{asset.pk}/reinstate/").status_code == 403
    assert f'action="/assets/{asset.pk}/reinstate/"' not in creator.get(f"/assets/{asset.pk}/").content.decode()
    # Editing their image does not lift it either.
    assert creator.patch(f"/api/assets/{asset.pk}/", {"title": "Please"}, format="json").status_code == 200
    asset.refresh_from_db()
    assert asset.is_taken_down and asset.title == "Please"


def test_the_creator_may_still_withdraw_an_image_that_was_taken_down(
    asset, alice, staff, django_capture_on_commit_callbacks
):
    assert take_down(client_for(staff), asset, capture=django_capture_on_commit_callbacks).status_code == 200
    response = client_for(alice).post(f"/api/assets/{asset.pk}/withdraw/")
    assert response.status_code == 200 and response.json()["display_status"] == "withdrawn"
    assert asset.events.filter(kind="withdrawn", actor=alice).exists()
