"""Packs: which images may enter, how staff shape the selection, publishing frozen versions, withdrawals.

Embeddings are set by hand (64-d unit vectors) so that near-duplicates and rankings are exact; one test
ranks by a real text query through the tiny CLIP. Export builds are recorded, not run: they have their
own tests.
"""

import hashlib
import types

import numpy as np
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage

from marketplace.catalog import services as catalog
from marketplace.curation import services as curation
from marketplace.curation.models import AssetAnalysis, DuplicateCluster, Flag, Hold
from marketplace.packs import datasheet, diversity, exports, manifest, selectors, services
from marketplace.packs.models import Pack, PackItem, PackVersion, Revocation

DIM = 64


@pytest.fixture(autouse=True)
def exports_queued(monkeypatch):
    """Records `ensure_exports(version)` calls instead of building downloads."""
    calls = []
    monkeypatch.setattr(exports, "ensure_exports", lambda version: calls.append(version.pk) or [])
    return calls


@pytest.fixture(autouse=True)
def licensees_told(monkeypatch):
    """What commerce is asked to tell licensees when items are revoked."""
    from marketplace.commerce import services as commerce

    calls = []
    monkeypatch.setattr(commerce, "notify_licensees_of_revocations", calls.append, raising=False)
    return calls


def unit(*components, dim=DIM) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[: len(components)] = components
    return vector / np.linalg.norm(vector)


def axis(i, dim=DIM) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[i] = 1
    return vector


def new_pack(actor, **fields) -> Pack:
    fields = {"title": "Street life", "slug": "street-life", "use": "commercial", "price_cents": 4900, **fields}
    return services.save_pack(actor=actor, **fields)


# --- eligibility ----------------------------------------------------------------------------------


@pytest.fixture
def zoo(make_eligible_asset, alice, bob, django_capture_on_commit_callbacks):
    """One image that may enter a commercial pack, and one of each kind that may not."""
    good = make_eligible_asset(alice, "astronaut")
    withdrawn = make_eligible_asset(alice, "coffee")
    with django_capture_on_commit_callbacks(execute=True):
        catalog.withdraw_asset(withdrawn, actor=alice)
    unconsented = make_eligible_asset(alice, "rocket", ai_training_consent=False)
    held = make_eligible_asset(bob, "astronaut")
    flag = Flag.objects.create(kind=Flag.Kind.CROSS_CREATOR, asset=held, other_asset=good)
    Hold.objects.create(asset=held, flag=flag, reason="It closely matches an image another creator uploaded.")
    blurry = make_eligible_asset(bob, "chelsea", quality_ok=False)
    reserved = make_eligible_asset(bob, "hubble", licence="all-rights-reserved")
    research = make_eligible_asset(bob, "retina", licence="mkt-ai-research-1.0")
    near_copy = make_eligible_asset(alice, "astronaut", size=(640, 640))
    cluster = DuplicateCluster.objects.create(owner=alice, representative=good)
    AssetAnalysis.objects.filter(asset__in=[good, near_copy]).update(cluster=cluster)
    return types.SimpleNamespace(
        good=good, withdrawn=withdrawn, unconsented=unconsented, held=held, blurry=blurry,
        reserved=reserved, research=research, near_copy=near_copy,
    )  # fmt: skip


def test_only_eligible_images_may_enter_and_in_one_query(zoo, django_assert_num_queries):
    with django_assert_num_queries(1):
        commercial = set(selectors.eligible_assets("commercial"))
    assert commercial == {zoo.good}
    # A research pack also takes research-only licences; nothing else changes.
    assert set(selectors.eligible_assets("research")) == {zoo.good, zoo.research}


def test_an_image_without_a_delivery_copy_or_a_finished_analysis_never_enters(make_eligible_asset, alice):
    no_delivery = make_eligible_asset(alice, "astronaut")
    pending = make_eligible_asset(alice, "coffee")
    type(no_delivery).objects.filter(pk=no_delivery.pk).update(delivery="")
    AssetAnalysis.objects.filter(asset=pending).update(status=AssetAnalysis.Status.PENDING)
    assert list(selectors.eligible_assets("commercial")) == []


def test_ineligible_picks_never_enter_a_version_and_staff_are_told_why(zoo, staff):
    pack = new_pack(staff, picks=[a.pk for a in vars(zoo).values()])
    selection = services.preview_selection(pack)
    assert selection.asset_ids == [zoo.good.pk]
    reasons = {excluded.asset_id: "; ".join(excluded.reasons) for excluded in selection.excluded_picks}
    assert reasons == {
        zoo.withdrawn.pk: "withdrawn by the creator",
        zoo.unconsented.pk: "no consent to AI training",
        zoo.held.pk: "held: possibly stolen",
        zoo.blurry.pk: "failed quality: too blurry",
        zoo.reserved.pk: "licence “All rights reserved” does not allow AI training",
        zoo.research.pk: "licence “Marketplace AI Training Licence, Research 1.0” does not allow commercial models",
        zoo.near_copy.pk: f"near-duplicate: image {zoo.good.pk} represents its cluster",
    }

    version = services.publish_version(pack, actor=staff)
    assert list(version.items.values_list("asset_id", flat=True)) == [zoo.good.pk]
    assert [item["asset_id"] for item in version.manifest["items"]] == [zoo.good.pk]


# --- shaping the selection ----------------------------------------------------------------------------


def test_picks_come_first_and_removals_never_enter(make_eligible_asset, alice, bob, staff):
    first = make_eligible_asset(alice, "astronaut")
    second = make_eligible_asset(alice, "coffee")
    third = make_eligible_asset(bob, "rocket", tags="space")
    pack = new_pack(staff, picks=[third.pk], removals=[second.pk])
    assert services.preview_selection(pack).asset_ids == [third.pk, first.pk]
    # A pick enters even when the filters would leave it out; the filters decide the rest.
    pack = services.save_pack(actor=staff, pack=pack, picks=[first.pk], removals=[], filters={"tag": "space"})
    assert services.preview_selection(pack).asset_ids == [first.pk, third.pk]


def test_filters_narrow_the_candidates(make_eligible_asset, alice, bob, staff):
    make_eligible_asset(alice, "astronaut", licence="cc0-1.0")
    wide = make_eligible_asset(bob, "coffee", size=(1200, 800), tags="cup, kitchen")
    make_eligible_asset(bob, "rocket", size=(800, 600))
    pack = new_pack(staff, filters={"creator": "BOB", "min_short_side": 700, "tag": "kitchen"})
    assert services.preview_selection(pack).asset_ids == [wide.pk]
    pack = services.save_pack(actor=staff, pack=pack, filters={"licence": "cc0-1.0"})
    assert [a.owner.username for a in services.preview_selection(pack).assets] == ["alice"]


def test_bad_recipes_are_refused_with_clear_errors(make_eligible_asset, alice, staff, carol):
    asset = make_eligible_asset(alice, "astronaut")

    def errors(**fields):
        with pytest.raises(ValidationError) as refused:
            new_pack(staff, **fields)
        return refused.value.message_dict

    assert errors(picks=[asset.pk, 999999]) == {"picks": ["No image has the id 999999."]}
    assert errors(removals=[888888]) == {"removals": ["No image has the id 888888."]}
    assert "both picked and removed" in errors(picks=[asset.pk], removals=[asset.pk])["removals"][0]
    assert errors(price_cents=0) == {"price": ["The price must be a positive amount."]}
    assert errors(price_cents=-100) == {"price": ["The price must be a positive amount."]}
    assert errors(size=0)["size"][0].startswith("A pack holds at least one image")
    assert errors(filters={"creator": "mallory"}) == {"creator": ["No creator is called “mallory”."]}
    assert errors(filters={"licence": "gpl"}) == {"licence": ["Unknown licence “gpl”."]}
    assert errors(slug="Not a slug!")["slug"]
    assert Pack.objects.count() == 0
    with pytest.raises(PermissionDenied):
        new_pack(carol)


def test_the_slug_of_a_published_pack_cannot_change(make_eligible_asset, alice, staff):
    make_eligible_asset(alice, "astronaut")
    pack = new_pack(staff)
    services.publish_version(pack, actor=staff)
    with pytest.raises(ValidationError) as refused:
        services.save_pack(actor=staff, pack=pack, slug="renamed")
    assert "slug" in refused.value.message_dict
    assert Pack.objects.get().slug == "street-life"


# --- size and diversity -------------------------------------------------------------------------------


def test_a_sized_pack_never_holds_two_near_identical_images(make_eligible_asset, alice, bob, staff, settings):
    settings.CURATION_MIN_COSINE = 0.95
    original = make_eligible_asset(alice, "astronaut", embedding=unit(1, 0, 0))
    copy = make_eligible_asset(bob, "astronaut", embedding=unit(1, 0.05, 0))  # cosine 0.999 (another creator)
    other = make_eligible_asset(alice, "coffee", embedding=unit(0, 1, 0))
    third = make_eligible_asset(bob, "rocket", embedding=unit(0, 0, 1))
    pack = new_pack(staff, size=3)
    chosen = set(services.preview_selection(pack, query_vector=unit(1, 0.02, 0)).asset_ids)
    assert len(chosen) == 3 and {other.pk, third.pk} < chosen
    assert len(chosen & {original.pk, copy.pk}) == 1
    # Without a size too: the ranked list keeps the first of the pair only.
    pack = services.save_pack(actor=staff, pack=pack, size=None)
    assert services.preview_selection(pack, query_vector=unit(1, 0.1, 0)).asset_ids[0] == copy.pk
    assert original.pk not in services.preview_selection(pack, query_vector=unit(1, 0.1, 0)).asset_ids


def test_diverse_sample_spreads_across_the_ranking_instead_of_taking_the_top():
    # Ranked candidates: three very similar images at the top, then three different ones.
    similar = [unit(1, 0.3 * i, 0) for i in range(3)]  # cosines 0.91-0.96 apart: alike, not duplicates
    different = [unit(0, 0, 1), unit(0, 0, 0, 1), unit(0, 0, 0, 0, 1)]
    embeddings = np.stack(similar + different)
    relevance = np.array([0.30, 0.29, 0.28, 0.25, 0.24, 0.23])
    chosen = diversity.diverse_sample(embeddings, 3, max_cosine=0.97, relevance=relevance)
    assert chosen == [0, 3, 4]
    assert diversity.diverse_sample(embeddings, 3, max_cosine=0.97, relevance=relevance) == chosen  # deterministic
    # Farthest-point without a query; required indices first, whatever they are.
    assert diversity.diverse_sample(embeddings, 3, max_cosine=0.97) == [0, 3, 4]
    assert diversity.diverse_sample(embeddings, 3, max_cosine=0.97, required=[2]) == [2, 3, 4]
    assert diversity.diverse_sample(embeddings, 1, max_cosine=0.97, required=[5, 1]) == [5, 1]


def test_diverse_sample_stops_when_only_near_duplicates_are_left():
    embeddings = np.stack([unit(1, 0), unit(1, 0.01), unit(1, 0.02)])
    assert diversity.diverse_sample(embeddings, 3, max_cosine=0.95) == [0]
    assert diversity.drop_near_duplicates(embeddings, max_cosine=0.95) == [0]
    assert diversity.drop_near_duplicates(embeddings, max_cosine=0.95, required=[2]) == [2]
    # A missing embedding (zero row) is a duplicate of nothing.
    embeddings = np.stack([unit(1, 0), np.zeros(DIM), unit(1, 0.01)])
    assert diversity.drop_near_duplicates(embeddings, max_cosine=0.95) == [0, 1]


def test_a_text_query_ranks_by_the_curation_model(tiny_clip, make_eligible_asset, alice, staff):
    assets = [make_eligible_asset(alice, photo) for photo in ("astronaut", "coffee", "rocket")]
    query = services.embed_query("a rocket on a launch pad")
    stored = {
        a.pk: np.frombuffer(bytes(AssetAnalysis.objects.get(asset=a).embedding), np.float16).astype(np.float32)
        for a in assets
    }
    expected = sorted(stored, key=lambda pk: -float(stored[pk] @ query))
    pack = new_pack(staff, query="a rocket on a launch pad")
    selection = services.preview_selection(pack)
    assert selection.asset_ids == expected
    assert list(selection.scores) == expected


# --- publishing -----------------------------------------------------------------------------------------


def test_publishing_freezes_items_with_hashes_of_the_delivered_files(
    make_eligible_asset, alice, bob, staff, exports_queued
):
    first = make_eligible_asset(alice, "astronaut", caption="an astronaut in a white suit")
    second = make_eligible_asset(bob, "coffee", licence="cc-by-4.0")
    pack = new_pack(staff, picks=[second.pk])
    version = services.publish_version(pack, actor=staff)

    assert version.is_new and version.number == 1 and version.item_count == 2 and version.creator_count == 2
    items = list(version.items.order_by("position"))
    assert [(i.position, i.key, i.asset_id) for i in items] == [(0, "000000", second.pk), (1, "000001", first.pk)]
    for item, asset in zip(items, [second, first], strict=True):
        delivered = default_storage.open(asset.delivery.name, "rb").read()
        assert item.file_name == asset.delivery.name
        assert item.sha256 == hashlib.sha256(delivered).hexdigest() and item.byte_size == len(delivered)
        assert (item.width, item.height, item.file_format, item.creator) == (
            asset.width, asset.height, asset.format, asset.owner
        )  # fmt: skip
    assert items[1].training_caption == "an astronaut in a white suit"

    frozen = version.manifest
    assert version.manifest_sha256 == hashlib.sha256(manifest.canonical_bytes(frozen)).hexdigest()
    assert version.manifest_sha256 == manifest.manifest_sha256(PackVersion.objects.get(pk=version.pk).manifest)
    assert frozen["format"] == "creator-dataset-marketplace/pack-manifest/1"
    assert frozen["pack"] == {"slug": "street-life", "title": "Street life", "version": 1, "use": "commercial"}
    assert frozen["price"] == {"amount_cents": 4900, "currency": "usd"}
    assert frozen["published_at"] == version.published_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert frozen["published_at"] == PackVersion.objects.get(pk=version.pk).published_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert frozen["licence_terms"] == version.licence_terms
    assert frozen["datasheet_sha256"] == hashlib.sha256(manifest.canonical_bytes(version.datasheet)).hexdigest()
    assert frozen["items"][0] == {
        "key": "000000", "file": "000000.jpg", "asset_id": second.pk, "creator": "bob", "creator_id": bob.pk,
        "licence": "cc-by-4.0", "title": second.title, "caption": items[0].training_caption,
        "sha256": items[0].sha256, "bytes": items[0].byte_size, "width": second.width, "height": second.height,
        "format": "JPEG",
    }  # fmt: skip
    assert exports_queued == [version.pk]


def test_canonical_bytes_ignore_key_order_and_keep_unicode():
    one = {"b": 1, "a": {"é": "ü", "z": [1, 2]}}
    two = {"a": {"z": [1, 2], "é": "ü"}, "b": 1}
    assert manifest.canonical_bytes(one) == manifest.canonical_bytes(two) == '{"a":{"z":[1,2],"é":"ü"},"b":1}'.encode()
    assert manifest.manifest_sha256(one) == hashlib.sha256(manifest.canonical_bytes(two)).hexdigest()


def test_licence_terms_are_frozen_with_the_attribution_list(make_eligible_asset, alice, bob, staff):
    make_eligible_asset(alice, "astronaut", licence="cc-by-4.0", title="Moonwalk")
    make_eligible_asset(bob, "coffee", licence="mkt-ai-research-1.0")
    version = services.publish_version(new_pack(staff, use="research"), actor=staff)
    terms = version.licence_terms
    assert terms["use"] == "research" and "non-commercial research only" in terms["summary"]
    assert [licence["code"] for licence in terms["licences"]] == ["cc-by-4.0", "mkt-ai-research-1.0"]
    cc_by = terms["licences"][0]
    assert cc_by["requires_attribution"] and cc_by["terms"] and cc_by["name"] == "Creative Commons Attribution 4.0"
    assert terms["attribution"] == [
        {"key": "000000", "title": "Moonwalk", "creator": "alice", "name": "Alice Photo", "licence": "cc-by-4.0"}
    ]


def test_published_versions_never_change_and_changes_make_new_versions(make_eligible_asset, alice, bob, staff):
    first = make_eligible_asset(alice, "astronaut")
    pack = new_pack(staff)
    v1 = services.publish_version(pack, actor=staff)
    frozen = (v1.manifest_sha256, list(v1.items.values_list("asset_id", "sha256", "training_caption")))

    with pytest.raises(ValidationError):
        v1.save()
    with pytest.raises(ValidationError):
        v1.items.first().save()
    with pytest.raises(ValidationError):
        v1.delete()

    again = services.publish_version(pack, actor=staff)
    assert again.pk == v1.pk and again.is_new is False and PackVersion.objects.count() == 1

    services.save_pack(actor=staff, pack=pack, price_cents=5900)
    v2 = services.publish_version(pack, actor=staff)
    assert (v2.number, v2.price_cents, v2.is_new) == (2, 5900, True)

    curation.override_training_caption(first.analysis, actor=staff, text="an astronaut, edited by staff")
    v3 = services.publish_version(pack, actor=staff)
    assert v3.number == 3 and v3.items.get().training_caption == "an astronaut, edited by staff"

    added = make_eligible_asset(bob, "rocket")
    v4 = services.publish_version(pack, actor=staff)
    assert v4.number == 4 and set(v4.items.values_list("asset_id", flat=True)) == {first.pk, added.pk}

    v1 = PackVersion.objects.get(pk=v1.pk)
    assert (v1.manifest_sha256, list(v1.items.values_list("asset_id", "sha256", "training_caption"))) == frozen
    assert v1.price_cents == 4900 and v1.item_count == 1


def test_an_empty_selection_is_refused(make_eligible_asset, alice, staff, exports_queued):
    make_eligible_asset(alice, "astronaut", licence="mkt-ai-research-1.0")
    pack = new_pack(staff)  # commercial: the research-only image cannot enter
    with pytest.raises(ValidationError, match="Nothing to publish"):
        services.publish_version(pack, actor=staff)
    assert not PackVersion.objects.exists() and not PackItem.objects.exists() and exports_queued == []


def test_a_missing_delivery_file_stops_publication_cleanly(make_eligible_asset, alice, staff, exports_queued):
    asset = make_eligible_asset(alice, "astronaut")
    make_eligible_asset(alice, "coffee")
    default_storage.delete(asset.delivery.name)
    with pytest.raises(ValidationError, match=f"delivery copy of image {asset.pk}"):
        services.publish_version(new_pack(staff), actor=staff)
    assert not PackVersion.objects.exists() and exports_queued == []


def test_only_staff_publish(make_eligible_asset, alice, staff):
    make_eligible_asset(alice, "astronaut")
    pack = new_pack(staff)
    with pytest.raises(PermissionDenied):
        services.publish_version(pack, actor=alice)
    assert not PackVersion.objects.exists()


# --- datasheet ---------------------------------------------------------------------------------------------


def test_the_datasheet_describes_composition_consent_captions_and_rules(make_eligible_asset, alice, bob, staff):
    assets = [
        make_eligible_asset(alice, "astronaut", tags="space, portrait"),
        make_eligible_asset(alice, "rocket", tags="space"),
        make_eligible_asset(bob, "coffee", size=(800, 600)),
    ]
    pack = new_pack(staff, description="Everyday scenes for <b>street</b> photography models.")
    version = services.publish_version(pack, actor=staff)
    sheet = version.datasheet
    stats = sheet["stats"]
    assert stats["items"] == 3
    assert stats["creators"] == [
        {"username": "alice", "name": "Alice Photo", "items": 2},
        {"username": "bob", "name": "bob", "items": 1},
    ]
    assert stats["creator_tags"][0] == ["space", 2]
    assert stats["formats"] == {"JPEG": 3}
    widths = sorted(asset.width for asset in assets)
    assert stats["width"] == {"min": widths[0], "median": widths[1], "max": widths[2]}
    assert stats["consent_given"]["earliest"] == min(a.consent_given_at for a in assets).isoformat()
    headings = [section["heading"] for section in sheet["sections"]]
    assert headings == [
        "Motivation", "Composition", "Collection and consent", "Captions", "Deduplication and quality",
        "Licence", "Maintenance and withdrawals",
    ]  # fmt: skip
    text = datasheet.render_markdown(sheet)
    assert text.startswith("# Street life, version 1\n") and "## Collection and consent" in text
    assert "cosine of at least 0.95" in text and "consent" in text and "Location metadata" in text
    assert "| Alice Photo (alice) | 2 |" in text
    motivation = datasheet.render_html(sheet["sections"][0]["text"])
    assert "&lt;b&gt;street&lt;/b&gt;" in motivation and "<b>" not in motivation


# --- withdrawals -------------------------------------------------------------------------------------------


def test_a_withdrawal_after_publication_revokes_the_item_and_leaves_future_versions(
    make_eligible_asset, alice, bob, staff, licensees_told, django_capture_on_commit_callbacks
):
    kept = make_eligible_asset(alice, "astronaut")
    taken_back = make_eligible_asset(bob, "coffee")
    pack = new_pack(staff)
    v1 = services.publish_version(pack, actor=staff)

    with django_capture_on_commit_callbacks(execute=True):
        catalog.withdraw_asset(taken_back, actor=bob)
    revocation = Revocation.objects.get()
    assert (revocation.version, revocation.item.asset_id, revocation.reason) == (v1, taken_back.pk, "withdrawn")
    assert licensees_told == [[revocation.pk]]

    # Idempotent: a repeated signal changes nothing and tells no one twice.
    with django_capture_on_commit_callbacks(execute=True):
        assert services.revoke_asset(taken_back.pk, reason="withdrawn") == []
    assert Revocation.objects.count() == 1 and len(licensees_told) == 1

    v2 = services.publish_version(pack, actor=staff)
    assert list(v2.items.values_list("asset_id", flat=True)) == [kept.pk]
    assert v1.items.count() == 2 and PackVersion.objects.get(pk=v1.pk).item_count == 2


def test_withdrawing_consent_revokes_with_that_reason_in_every_version(
    make_eligible_asset, alice, staff, licensees_told, django_capture_on_commit_callbacks
):
    asset = make_eligible_asset(alice, "astronaut")
    make_eligible_asset(alice, "coffee")
    v1 = services.publish_version(new_pack(staff), actor=staff)
    other = services.publish_version(new_pack(staff, slug="other", use="research"), actor=staff)
    with django_capture_on_commit_callbacks(execute=True):
        catalog.update_asset_metadata(asset, actor=alice, changes={"ai_training_consent": False})
    revocations = Revocation.objects.order_by("version_id")
    assert [(r.version_id, r.reason) for r in revocations] == [
        (v1.pk, "consent_withdrawn"),
        (other.pk, "consent_withdrawn"),
    ]
    assert licensees_told == [[r.pk for r in revocations]]


def test_an_unknown_revocation_reason_is_refused(make_eligible_asset, alice):
    asset = make_eligible_asset(alice, "astronaut")
    with pytest.raises(ValueError):
        services.revoke_asset(asset.pk, reason="because")
