"""Curation in the marketplace: analysis of ready uploads, near-duplicates, holds, review, search.

Tiny CLIP and CoCa models built from the repo's configs stand in for the real model; they are
saved to checkpoints and loaded through the same `CURATION_CLIP_PRETRAINED=<path>` setting an
offline site uses. Random weights map every photo to nearly the same direction, so the tiny CLIP
is first trained for a few seconds on edited views of the test photos (`demo_model.train_photo_clip`)
and the real thresholds apply.
"""

import csv
import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from PIL import Image, ImageDraw, ImageEnhance
from rest_framework.test import APIClient

from marketplace.catalog import services as catalog
from marketplace.catalog.models import Asset
from marketplace.core.photos import load_photo
from marketplace.curation import selectors, services
from marketplace.curation.engine import clip
from marketplace.curation.models import AssetAnalysis, DuplicateCluster, Flag, FlagDecision, Hold
from tests.curation_models import TINY_COCA, tiny_model_spec


@pytest.fixture
def tiny_coca(settings, model_folder, tiny_clip):
    spec = tiny_model_spec(TINY_COCA, model_folder)
    settings.CURATION_CLIP_MODEL, settings.CURATION_CLIP_PRETRAINED = spec.name, spec.pretrained
    return spec


@pytest.fixture(autouse=True)
def fresh_index_cache():
    services._loaded_indexes.clear()
    yield
    services._loaded_indexes.clear()


def jpeg(image: Image.Image, quality=90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def near_copies(image: Image.Image) -> dict[str, bytes]:
    """The edits a re-uploader makes. pHash finds all but the crops, which need CLIP."""
    width, height = image.size
    marked = image.copy()
    ImageDraw.Draw(marked).text((20, height - 40), "© someone else 2026", fill=(255, 255, 255))
    return {
        "cropped": jpeg(image.crop((0, 0, width * 9 // 10, height * 9 // 10))),
        "trimmed": jpeg(image.crop((width // 20, height // 20, width * 19 // 20, height * 19 // 20))),
        "resized": jpeg(image.resize((width * 3 // 4, height * 3 // 4), Image.Resampling.LANCZOS)),
        "recompressed": jpeg(image, quality=40),
        "brightened": jpeg(ImageEnhance.Brightness(image).enhance(1.25)),
        "watermarked": jpeg(marked),
    }


def upload(owner, data: bytes, name: str, django_capture_on_commit_callbacks, **metadata) -> Asset:
    with django_capture_on_commit_callbacks(execute=True):
        asset = catalog.upload_asset(
            owner=owner, uploaded_file=SimpleUploadedFile(name, data), metadata=metadata or None
        )
    asset.refresh_from_db()
    return asset


@pytest.fixture
def put(django_capture_on_commit_callbacks):
    return lambda owner, data, name, **metadata: upload(
        owner, data, name, django_capture_on_commit_callbacks, **metadata
    )


# --- analysis ---------------------------------------------------------------------------------


def test_a_ready_upload_is_analysed_with_the_models_identity(tiny_clip, alice, put):
    asset = put(alice, jpeg(load_photo("astronaut", min_short_side=600)), "a.jpg", title="Astronaut", tags="space")
    analysis = AssetAnalysis.objects.get(asset=asset)
    assert analysis.status == AssetAnalysis.Status.DONE
    assert (analysis.model_name, analysis.model_pretrained) == (tiny_clip.name, tiny_clip.pretrained)
    vector = np.frombuffer(bytes(analysis.embedding), dtype=np.float16)
    assert len(vector) == analysis.embedding_dim == 64
    assert abs(float(np.linalg.norm(vector.astype(np.float32))) - 1) < 1e-2
    assert analysis.caption_source == "phrase-bank" and analysis.caption
    assert {part["bank"] for part in analysis.caption_parts} >= {"subject"}
    assert len(analysis.tags) == 10 and analysis.tags[0][1] >= analysis.tags[-1][1]
    assert analysis.metadata_score is not None
    assert len(analysis.dhash) == 16
    assert "Astronaut" in analysis.training_caption
    assert {s["source"] for s in analysis.training_caption_sources} == {"model", "title", "tags"}
    assert analysis.quality_ok is True


def test_coca_models_caption_by_generation(tiny_coca, alice, put):
    asset = put(alice, jpeg(load_photo("coffee", min_short_side=600)), "c.jpg")
    analysis = AssetAnalysis.objects.get(asset=asset)
    assert analysis.caption_source == "coca"
    assert "<" not in analysis.caption and analysis.model_name == TINY_COCA


def test_analysis_is_idempotent(tiny_clip, alice, put):
    asset = put(alice, jpeg(load_photo("rocket", min_short_side=600)), "r.jpg")
    first = AssetAnalysis.objects.get(asset=asset)
    report = services.analyse_assets([asset.pk])
    assert report.skipped == [asset.pk] and report.analysed == []
    again = AssetAnalysis.objects.get(asset=asset)
    assert again.attempts == first.attempts and bytes(again.embedding) == bytes(first.embedding)


def test_missing_weights_leave_assets_awaiting_analysis_with_a_message_naming_the_setting(
    tiny_clip, settings, alice, put, tmp_path
):
    settings.CURATION_CLIP_PRETRAINED = str(tmp_path / "no-such-checkpoint.pt")
    asset = put(alice, jpeg(load_photo("rocket", min_short_side=600)), "r.jpg")  # the task logs and waits
    analysis = AssetAnalysis.objects.get(asset=asset)
    assert analysis.status == AssetAnalysis.Status.PENDING
    assert "CURATION_CLIP_PRETRAINED" in analysis.error
    assert not analysis.embedding and not analysis.caption
    with pytest.raises(Exception, match="CURATION_CLIP_PRETRAINED"):
        call_command("curate", verbosity=0)
    settings.CURATION_CLIP_PRETRAINED = tiny_clip.pretrained  # fixed: a later run picks it up
    call_command("curate", verbosity=0)
    analysis.refresh_from_db()
    assert analysis.status == AssetAnalysis.Status.DONE and analysis.error == ""


def test_an_unknown_model_name_is_reported_by_its_setting(tiny_clip, settings, alice, put):
    settings.CURATION_CLIP_MODEL = "ViT-Imaginary-99"
    asset = put(alice, jpeg(load_photo("rocket", min_short_side=600)), "r.jpg")
    assert "CURATION_CLIP_MODEL" in AssetAnalysis.objects.get(asset=asset).error


def test_a_blurry_image_is_flagged_for_quality(tiny_clip, alice, put):
    from PIL import ImageFilter

    blurred = load_photo("chelsea", min_short_side=700).filter(ImageFilter.GaussianBlur(8))
    asset = put(alice, jpeg(blurred), "blur.jpg")
    analysis = AssetAnalysis.objects.get(asset=asset)
    assert analysis.quality_ok is False
    assert any("blur" in reason for reason in analysis.quality["reasons"])
    assert Flag.objects.filter(kind=Flag.Kind.QUALITY, asset=asset, status=Flag.Status.OPEN).exists()


# --- near-duplicates -------------------------------------------------------------------------


def test_near_copies_of_real_photos_are_found_and_distinct_photos_are_not_merged(tiny_clip, alice, put):
    originals = {name: load_photo(name, min_short_side=720) for name in ("astronaut", "coffee", "rocket", "motorcycle")}
    for name, image in originals.items():
        put(alice, jpeg(image), f"{name}.jpg")
    assert not Flag.objects.exists() and not DuplicateCluster.objects.exists()  # distinct: none merged

    copies = {}
    for name, image in originals.items():
        for edit, data in near_copies(image).items():
            copies[(name, edit)] = put(alice, data, f"{name}-{edit}.jpg")
    for (name, edit), copy in copies.items():
        original = Asset.objects.get(original_filename=f"{name}.jpg")
        cluster = AssetAnalysis.objects.get(asset=copy).cluster
        assert cluster is not None, f"{edit} copy of {name} not found"
        assert AssetAnalysis.objects.get(asset=original).cluster_id == cluster.pk, (name, edit)
    assert DuplicateCluster.objects.count() == len(originals)
    for (name, edit), copy in copies.items():
        original = Asset.objects.get(original_filename=f"{name}.jpg")
        evidence = Flag.objects.get(kind=Flag.Kind.NEAR_DUPLICATE, asset=copy, other_asset=original).evidence
        if edit in ("cropped", "trimmed"):  # out of the perceptual hash's reach: CLIP found them
            assert evidence["reason"] in ("embedding", "both") and evidence["cosine"] >= 0.95, (name, edit)
    for cluster in DuplicateCluster.objects.all():
        # The representative passes quality and is the largest, the earliest on a tie: the original.
        assert "-" not in cluster.representative.original_filename


def test_incremental_dedup_against_an_existing_collection(tiny_clip, alice, put):
    originals = [put(alice, jpeg(load_photo(n, min_short_side=720)), f"{n}.jpg") for n in ("hubble", "retina")]
    services._loaded_indexes.clear()  # a new worker process: the index comes back from storage
    copy = put(alice, near_copies(load_photo("retina", min_short_side=720))["resized"], "retina-small.jpg")
    flag = Flag.objects.get(kind=Flag.Kind.NEAR_DUPLICATE)
    assert (flag.asset, flag.other_asset) == (copy, originals[1])
    assert flag.evidence["hamming"] <= 8
    from marketplace.curation.models import IndexState

    assert IndexState.objects.get(name=services.HASH_INDEX).items == 3


def test_a_near_copy_of_another_creators_image_is_held_until_staff_decide(tiny_clip, alice, bob, staff, put):
    original = put(alice, jpeg(load_photo("motorcycle", min_short_side=720)), "mine.jpg")
    stolen = put(bob, near_copies(load_photo("motorcycle", min_short_side=720))["watermarked"], "stolen.jpg")
    flag = Flag.objects.get(kind=Flag.Kind.CROSS_CREATOR)
    assert (flag.asset, flag.other_asset) == (stolen, original)
    assert list(selectors.active_holds(stolen)) and not list(selectors.active_holds(original))

    creator_view = APIClient()
    creator_view.force_login(bob)
    page = creator_view.get(f"/assets/{stolen.pk}/").content.decode()
    assert "Held out of packs" in page and "another creator uploaded earlier" in page
    assert "held" in creator_view.get("/my/uploads/").content.decode()

    reviewer = APIClient()
    reviewer.force_login(staff)
    response = reviewer.post(f"/curation/flags/{flag.pk}/", {"action": "keep", "note": "Same photographer."})
    assert response.status_code == 302
    assert not list(selectors.active_holds(stolen))
    decision = FlagDecision.objects.get(flag=flag)
    assert (decision.actor, decision.action, decision.note) == (staff, "keep", "Same photographer.")
    assert "Held out of packs" not in creator_view.get(f"/assets/{stolen.pk}/").content.decode()


def test_an_identical_file_from_another_creator_is_held(tiny_clip, alice, bob, staff, put):
    data = jpeg(load_photo("hubble", min_short_side=720))
    put(alice, data, "original.jpg")
    copy = put(bob, data, "copy.jpg")
    flag = Flag.objects.get(kind=Flag.Kind.EXACT_DUPLICATE)
    assert flag.asset == copy and selectors.active_holds(copy).exists()
    services.decide_flag(flag, actor=staff, action="reject", note="stolen")
    hold = Hold.objects.get(asset=copy)
    assert hold.released_at is None and "Rejected by staff" in hold.reason


def test_merging_is_only_for_one_creators_images(tiny_clip, alice, bob, staff, put):
    put(alice, jpeg(load_photo("coffee", min_short_side=720)), "mine.jpg")
    put(bob, near_copies(load_photo("coffee", min_short_side=720))["resized"], "theirs.jpg")
    flag = Flag.objects.get(kind=Flag.Kind.CROSS_CREATOR)
    reviewer = APIClient()
    reviewer.force_login(staff)
    response = reviewer.post(f"/curation/flags/{flag.pk}/", {"action": "merge"})
    assert response.status_code == 200 and "Only near-duplicates from the same creator" in response.content.decode()
    flag.refresh_from_db()
    assert flag.status == Flag.Status.OPEN and not flag.decisions.exists()


def test_keeping_a_same_creator_pair_splits_the_cluster(tiny_clip, alice, staff, put):
    put(alice, jpeg(load_photo("rocket", min_short_side=720)), "a.jpg")
    copy = put(alice, near_copies(load_photo("rocket", min_short_side=720))["brightened"], "b.jpg")
    flag = Flag.objects.get(kind=Flag.Kind.NEAR_DUPLICATE)
    services.decide_flag(flag, actor=staff, action="keep", note="different edit, both wanted")
    assert AssetAnalysis.objects.get(asset=copy).cluster is None
    assert not DuplicateCluster.objects.exists()


def test_reindex_rebuilds_the_same_findings_and_the_report_lists_them(tiny_clip, alice, bob, put, tmp_path):
    put(alice, jpeg(load_photo("retina", min_short_side=720)), "r.jpg")
    put(alice, near_copies(load_photo("retina", min_short_side=720))["recompressed"], "r2.jpg")
    put(bob, near_copies(load_photo("retina", min_short_side=720))["resized"], "r3.jpg")
    flags_before = set(Flag.objects.values_list("kind", "asset_id", "other_asset_id"))
    call_command("reindex", verbosity=0)
    assert set(Flag.objects.values_list("kind", "asset_id", "other_asset_id")) == flags_before
    report = tmp_path / "dedup.csv"
    call_command("dedup_report", output=str(report))
    rows = list(csv.DictReader(report.open()))
    assert {row["kind"] for row in rows} == {"cluster", "cross_creator"}
    assert sum(row["representative"] == "True" for row in rows if row["kind"] == "cluster") == 1


# --- search and review pages ----------------------------------------------------------------


def test_text_search_returns_the_image_whose_embedding_matches_first(tiny_clip, alice, staff, put, monkeypatch):
    assets = [put(alice, jpeg(load_photo(n, min_short_side=600)), f"{n}.jpg", licence="cc0-1.0") for n in
              ("astronaut", "coffee", "rocket")]  # fmt: skip
    target = AssetAnalysis.objects.get(asset=assets[1])
    loaded = clip.load_model(services.model_spec())
    # A query whose text embedding is known: the tiny model's own embedding of this text...
    query_vector = loaded.embed_texts(["golden hour street photography"])[0]
    # ...stored as the target image's embedding, so the right answer is unambiguous.
    target.embedding = np.asarray(query_vector, dtype=np.float16).tobytes()
    target.save(update_fields=["embedding"])
    reviewer = APIClient()
    reviewer.force_login(staff)
    page = reviewer.get("/curation/search/", {"q": "golden hour street photography", "licence": "cc0-1.0"})
    html = page.content.decode()
    assert page.status_code == 200
    assert html.index(f'data-asset-id="{assets[1].pk}"') < min(
        html.index(f'data-asset-id="{a.pk}"') for a in (assets[0], assets[2])
    )
    filtered = reviewer.get("/curation/search/", {"q": "golden hour", "creator": "nobody"}).content.decode()
    assert "No analysed image matches." in filtered


def test_curation_pages_are_for_staff_only(tiny_clip, alice, carol, put):
    asset = put(alice, jpeg(load_photo("astronaut", min_short_side=600)), "a.jpg")
    for user in (None, alice, carol):
        client = APIClient()
        if user:
            client.force_login(user)
        for path in ("/curation/search/", "/curation/review/", f"/curation/assets/{asset.pk}/"):
            response = client.get(path)
            if user is None:
                assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
            else:  # signed in, but not staff: refused, not sent to log in again
                assert response.status_code == 403, (user, path)


def test_staff_edit_the_training_caption_apart_from_the_models(tiny_clip, alice, staff, put):
    asset = put(alice, jpeg(load_photo("astronaut", min_short_side=600)), "a.jpg")
    reviewer = APIClient()
    reviewer.force_login(staff)
    reviewer.post(f"/curation/assets/{asset.pk}/", {"caption": "an astronaut in an orange suit, studio portrait"})
    analysis = AssetAnalysis.objects.get(asset=asset)
    assert analysis.caption_override == "an astronaut in an orange suit, studio portrait"
    assert analysis.training_caption != analysis.caption_override  # the model's stays as it was
    assert analysis.effective_training_caption == analysis.caption_override
    assert analysis.caption_override_by == staff


def test_the_review_queue_shows_pairs_side_by_side_with_evidence(tiny_clip, alice, bob, staff, put):
    put(alice, jpeg(load_photo("coffee", min_short_side=720)), "mine.jpg")
    put(bob, near_copies(load_photo("coffee", min_short_side=720))["watermarked"], "theirs.jpg")
    reviewer = APIClient()
    reviewer.force_login(staff)
    queue = reviewer.get("/curation/review/").content.decode()
    flag = Flag.objects.get()
    assert f'data-flag-id="{flag.pk}"' in queue and "hamming" in queue
    detail = reviewer.get(f"/curation/flags/{flag.pk}/").content.decode()
    assert detail.count("/files/preview/") == 2 and "hamming" in detail


# --- rights conflicts ------------------------------------------------------------------------


def xmp_creator(name: str) -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator><rdf:Seq>'
        f"<rdf:li>{name}</rdf:li></rdf:Seq></dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


def photo_with_xmp(name: str, xmp: bytes) -> bytes:
    buffer = io.BytesIO()
    load_photo(name, min_short_side=600).save(buffer, "JPEG", quality=90, xmp=xmp)
    return buffer.getvalue()


def test_an_image_credited_to_someone_else_is_held_for_a_rights_check(tiny_clip, alice, staff, put):
    mine = put(alice, photo_with_xmp("coffee", xmp_creator("Alice Photo")), "mine.jpg")
    theirs = put(alice, photo_with_xmp("rocket", xmp_creator("Jane Doe")), "theirs.jpg")
    assert not Flag.objects.filter(asset=mine).exists()
    flag = Flag.objects.get(kind=Flag.Kind.RIGHTS, asset=theirs)
    assert "“Jane Doe”" in flag.evidence["reasons"][0]
    creator = APIClient()
    creator.force_login(alice)
    holds = creator.get(f"/api/assets/{theirs.pk}/").json()["holds"]
    assert len(holds) == 1 and "Jane Doe" in holds[0]["reason"]
    assert creator.get(f"/api/assets/{mine.pk}/").json()["holds"] == []
    services.decide_flag(flag, actor=staff, action="keep", note="Jane Doe is Alice's studio name")
    assert creator.get(f"/api/assets/{theirs.pk}/").json()["holds"] == []


def test_overriding_an_embedded_no_ai_prohibition_goes_to_staff(alice, django_capture_on_commit_callbacks):
    prohibiting = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" '
        b'plus:DataMining="http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING"/></rdf:RDF></x:xmpmeta>'
    )
    asset = upload(alice, photo_with_xmp("astronaut", prohibiting), "a.jpg", django_capture_on_commit_callbacks)
    assert not Flag.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        catalog.update_asset_metadata(
            asset, actor=alice, changes={"ai_training_consent": True, "rights_override_confirmed": True}
        )
    flag = Flag.objects.get(kind=Flag.Kind.RIGHTS, asset=asset)
    assert "DMI-PROHIBITED-AIMLTRAINING" in flag.evidence["reasons"][0]
    assert selectors.active_holds(asset).exists()


def test_uploads_arriving_together_are_analysed_as_one_batch(tiny_clip, settings, alice, put, monkeypatch):
    settings.CURATION_ANALYSE_ON_READY = False  # the burst arrives before any task runs
    assets = [put(alice, jpeg(load_photo(n, min_short_side=600)), f"{n}.jpg") for n in ("coffee", "rocket", "hubble")]
    services.queue_analysis([a.pk for a in assets])  # marked pending; the task is still to come
    batches = []
    real_analyse = services.analyse_assets
    monkeypatch.setattr(services, "analyse_assets", lambda ids: batches.append(sorted(ids)) or real_analyse(ids))
    from marketplace.curation import tasks

    result = tasks.analyse_pending.apply().get()
    assert batches == [sorted(a.pk for a in assets)]
    assert sorted(result["analysed"]) == sorted(a.pk for a in assets)
    assert AssetAnalysis.objects.filter(status="done", claimed_at__isnull=True).count() == 3


def test_a_claimed_batch_is_not_taken_by_a_second_worker_until_its_claim_expires(tiny_clip, settings, alice, put):
    settings.CURATION_ANALYSE_ON_READY = False
    asset = put(alice, jpeg(load_photo("coffee", min_short_side=600)), "c.jpg")
    AssetAnalysis.objects.create(asset=asset)
    assert services.claim_pending(10) == [asset.pk]
    assert services.claim_pending(10) == []  # another worker finds nothing to do
    AssetAnalysis.objects.update(claimed_at=timezone.now() - services.CLAIM_TIMEOUT * 2)  # its worker died
    assert services.claim_pending(10) == [asset.pk]


def test_titles_that_do_not_match_the_image_are_flagged(tiny_clip, settings, alice, put):
    settings.CURATION_MIN_METADATA_SCORE = -1.0  # nothing scores below: no flag
    fine = put(alice, jpeg(load_photo("coffee", min_short_side=600)), "c.jpg", title="Espresso", tags="coffee")
    assert not Flag.objects.filter(asset=fine).exists()
    settings.CURATION_MIN_METADATA_SCORE = 1.01  # everything scores below
    odd = put(alice, jpeg(load_photo("rocket", min_short_side=600)), "r.jpg", title="A kitten asleep", tags="cat")
    flag = Flag.objects.get(kind=Flag.Kind.MISLEADING, asset=odd)
    assert flag.evidence["metadata_score"] == AssetAnalysis.objects.get(asset=odd).metadata_score
    untitled = put(alice, jpeg(load_photo("hubble", min_short_side=600)), "h.jpg")
    assert not Flag.objects.filter(kind=Flag.Kind.MISLEADING, asset=untitled).exists()  # nothing to compare


def test_my_uploads_shows_holds_without_a_query_per_image(alice, bob, client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def page_queries() -> tuple[int, str]:
        with CaptureQueriesContext(connection) as queries:
            html = client.get("/my/uploads/").content.decode()
        return len(queries), html

    client.force_login(bob)
    for name in ("coffee", "rocket"):
        catalog.upload_asset(
            owner=bob, uploaded_file=SimpleUploadedFile(f"{name}.jpg", jpeg(load_photo(name, min_short_side=600)))
        )
    few, _ = page_queries()
    original = catalog.upload_asset(
        owner=alice, uploaded_file=SimpleUploadedFile("o.jpg", jpeg(load_photo("hubble", min_short_side=600)))
    )
    for name in ("chelsea", "retina", "astronaut"):
        catalog.upload_asset(
            owner=bob, uploaded_file=SimpleUploadedFile(f"{name}.jpg", jpeg(load_photo(name, min_short_side=600)))
        )
    held = Asset.objects.get(owner=bob, original_filename="retina.jpg")
    services.record_pair(original, held, {"reason": "test"})  # bob's later upload is held
    many, html = page_queries()
    assert many == few
    assert html.count('title="Held out of packs: open the image to see why">held<') == 1
