"""From upload to a ready asset: processing, privacy of location data, rights and consent."""

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import IntegrityError
from PIL import Image
from rest_framework.test import APIClient

from marketplace.catalog import services, tasks
from marketplace.catalog.models import Asset, AssetEvent
from tests.conftest import gps_exif, photo_bytes, stored_files

PROHIBITING_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" '
    b'plus:DataMining="http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING"/></rdf:RDF></x:xmpmeta>'
)


@pytest.fixture
def client(alice):
    api = APIClient()
    api.force_login(alice)
    return api


@pytest.fixture
def upload(client, django_capture_on_commit_callbacks):
    """Upload through the API and run the processing the commit queues (Celery is eager in tests)."""

    def _upload(data: bytes, name="photo.jpg", **fields):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/api/assets/", {"file": SimpleUploadedFile(name, data), **fields})
        assert response.status_code == 201, response.content
        return Asset.objects.get(pk=response.json()["id"])

    return _upload


def fetch(client, asset, kind) -> bytes:
    response = client.get(f"/assets/{asset.pk}/files/{kind}/")
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def has_gps(data: bytes) -> bool:
    image = Image.open(io.BytesIO(data))
    return bool(image.getexif().get_ifd(0x8825)) or b"GPS" in (image.info.get("xmp") or b"")


def test_an_upload_becomes_ready_with_its_derived_files(upload, client):
    asset = upload(photo_bytes("astronaut", exif=gps_exif()), "astronaut.jpg")
    assert asset.status == Asset.Status.READY
    assert (asset.width, asset.height) == (600, 600)
    assert len(asset.phash) == 16 and len(asset.sha256) == 64
    assert asset.camera_make == "TestCam" and asset.camera_model == "T-100"
    assert asset.location_removed and asset.delivery_lossless
    thumbnail = Image.open(io.BytesIO(fetch(client, asset, "thumbnail")))
    preview = Image.open(io.BytesIO(fetch(client, asset, "preview")))
    assert max(thumbnail.size) <= 320 and max(preview.size) <= 1280
    assert [e.kind for e in asset.events.all()] == ["uploaded", "processed"]
    detail = client.get(f"/api/assets/{asset.pk}/").json()
    assert detail["status"] == "ready"
    assert detail["files"]["thumbnail"] == f"/assets/{asset.pk}/files/thumbnail/"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_gps_is_gone_from_every_copy_that_leaves_the_server(upload, client, fmt):
    original = photo_bytes("coffee", fmt, exif=gps_exif())
    assert has_gps(original)
    asset = upload(original, f"coffee.{fmt.lower()}")
    for kind in ("thumbnail", "preview", "delivery"):
        assert not has_gps(fetch(client, asset, kind)), kind
    assert client.get(f"/api/assets/{asset.pk}/").json()["location_removed"] is True


def test_the_jpeg_delivery_copy_keeps_the_originals_pixels(upload, client):
    original = photo_bytes("rocket", exif=gps_exif())
    asset = upload(original)
    delivery = fetch(client, asset, "delivery")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(delivery))), np.asarray(Image.open(io.BytesIO(original))))
    assert Image.open(io.BytesIO(delivery)).getexif()[0x010F] == "TestCam"  # other metadata kept


def test_orientation_is_normalised_for_display(upload, client):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    asset = upload(photo_bytes("rocket", size=(900, 600), exif=exif))
    assert (asset.width, asset.height) == (600, 900)
    thumbnail = Image.open(io.BytesIO(fetch(client, asset, "thumbnail")))
    assert thumbnail.height > thumbnail.width


def test_processing_is_idempotent(upload, media_root):
    asset = upload(photo_bytes("chelsea"))
    files = stored_files(media_root)
    services.prepare_asset(asset.pk)  # a duplicate delivery of a finished task: nothing to do
    assert asset.events.filter(kind="processed").count() == 1
    Asset.objects.filter(pk=asset.pk).update(status=Asset.Status.PROCESSING)
    services.prepare_asset(asset.pk)  # a redelivery after a crash mid-task: redone in place
    asset.refresh_from_db()
    assert asset.status == Asset.Status.READY
    assert stored_files(media_root) == files


def test_an_original_that_cannot_be_processed_fails_with_a_reason_and_can_be_retried(upload, client, alice):
    asset = upload(photo_bytes("hubble"))
    Asset.objects.filter(pk=asset.pk).update(status=Asset.Status.PROCESSING)
    with default_storage.open(asset.original.name, "wb") as handle:  # the stored file got damaged
        handle.write(b"\xff\xd8\xff garbage")
    services.prepare_asset(asset.pk)
    asset.refresh_from_db()
    assert asset.status == Asset.Status.FAILED
    assert asset.failure_reason
    page = client.get(f"/assets/{asset.pk}/").content.decode()
    assert "Processing failed" in page and "Retry processing" in page
    assert client.get(f"/api/assets/{asset.pk}/").json()["failure_reason"] == asset.failure_reason


def test_embedded_no_ai_metadata_is_marked_and_blocks_consent_until_rights_are_confirmed(upload, client):
    data = photo_bytes("astronaut", xmp=PROHIBITING_XMP)
    asset = upload(data)
    assert asset.embedded_prohibits_ai_training
    assert asset.embedded_data_mining == "DMI-PROHIBITED-AIMLTRAINING"
    refused = client.patch(f"/api/assets/{asset.pk}/", {"ai_training_consent": True}, format="json")
    assert refused.status_code == 400
    assert "prohibits AI training" in refused.json()["ai_training_consent"][0]
    asset.refresh_from_db()
    assert not asset.ai_training_consent
    allowed = client.patch(
        f"/api/assets/{asset.pk}/", {"ai_training_consent": True, "rights_override_confirmed": True}, format="json"
    )
    assert allowed.status_code == 200
    assert allowed.json()["ai_training_consent"] is True
    assert allowed.json()["rights_override_confirmed"] is True
    kinds = list(asset.events.values_list("kind", flat=True))
    assert "rights_override_confirmed" in kinds and "consent_given" in kinds


def test_consent_is_stored_with_its_time_and_withdrawal_is_recorded(upload, client):
    asset = upload(photo_bytes("coffee"))
    given = client.patch(f"/api/assets/{asset.pk}/", {"ai_training_consent": True}, format="json").json()
    assert given["consent_given_at"] is not None
    withdrawn = client.patch(f"/api/assets/{asset.pk}/", {"ai_training_consent": False}, format="json").json()
    assert withdrawn["consent_given_at"] is None
    assert list(asset.events.filter(kind__startswith="consent").values_list("kind", flat=True)) == [
        "consent_given",
        "consent_withdrawn",
    ]


def test_a_model_release_is_required_when_people_are_identifiable(upload, client):
    asset = upload(photo_bytes("astronaut"))
    refused = client.patch(f"/api/assets/{asset.pk}/", {"people_identifiable": True}, format="json")
    assert refused.status_code == 400
    assert "model release is required" in refused.json()["model_release"][0]
    bad_release = SimpleUploadedFile("release.txt", b"I agree", content_type="text/plain")
    refused = client.patch(f"/api/assets/{asset.pk}/", {"people_identifiable": "true", "model_release": bad_release})
    assert refused.status_code == 400 and "PDF" in refused.json()["model_release"][0]
    release = SimpleUploadedFile("release.pdf", b"%PDF-1.4 signed release", content_type="application/pdf")
    accepted = client.patch(f"/api/assets/{asset.pk}/", {"people_identifiable": "true", "model_release": release})
    assert accepted.status_code == 200
    assert accepted.json()["people_identifiable"] is True and accepted.json()["has_model_release"] is True
    download = client.get(f"/assets/{asset.pk}/files/model-release/")
    assert download["Content-Type"] == "application/pdf"
    assert b"".join(download.streaming_content) == b"%PDF-1.4 signed release"


def test_metadata_at_upload_time(upload):
    asset = upload(
        photo_bytes("rocket"),
        title="Launch",
        tags="space, Rocket ,space",
        licence="cc-by-4.0",
        ai_training_consent="true",
    )
    assert asset.title == "Launch"
    assert sorted(asset.tag_names) == ["rocket", "space"]
    assert asset.licence == "cc-by-4.0" and asset.ai_training_consent and asset.consent_given_at


def test_an_unknown_licence_is_refused(upload, client):
    asset = upload(photo_bytes("rocket"))
    response = client.patch(f"/api/assets/{asset.pk}/", {"licence": "do-whatever"}, format="json")
    assert response.status_code == 400
    assert "licence" in response.json()


def test_batch_edit_changes_all_selected_images_or_none(upload, client):
    first, second = upload(photo_bytes("rocket")), upload(photo_bytes("coffee"))
    prohibited = upload(photo_bytes("chelsea", xmp=PROHIBITING_XMP))
    ok = client.post(
        "/api/assets/bulk/",
        {"ids": [first.pk, second.pk], "tags": ["travel", "day"], "licence": "mkt-ai-commercial-1.0",
         "ai_training_consent": True},
        format="json",
    )  # fmt: skip
    assert ok.status_code == 200
    assert {a["id"] for a in ok.json()} == {first.pk, second.pk}
    for asset in (first, second):
        asset.refresh_from_db()
        assert asset.licence == "mkt-ai-commercial-1.0" and asset.ai_training_consent
        assert sorted(asset.tag_names) == ["day", "travel"]
    refused = client.post(
        "/api/assets/bulk/",
        {"ids": [first.pk, prohibited.pk], "ai_training_consent": True, "licence": "cc0-1.0"},
        format="json",
    )
    assert refused.status_code == 400
    assert list(refused.json()) == [str(prohibited.pk)]
    first.refresh_from_db()
    assert first.licence == "mkt-ai-commercial-1.0"  # nothing changed on the valid one either


def test_withdrawal_keeps_history_and_freezes_the_asset(upload, client):
    asset = upload(photo_bytes("rocket"))
    response = client.post(f"/api/assets/{asset.pk}/withdraw/")
    assert response.status_code == 200
    assert response.json()["display_status"] == "withdrawn"
    assert client.patch(f"/api/assets/{asset.pk}/", {"title": "x"}, format="json").status_code == 400
    assert Asset.objects.filter(pk=asset.pk).exists()
    assert list(asset.events.values_list("kind", flat=True))[-1] == "withdrawn"
    assert client.get("/api/assets/?status=withdrawn").json()["count"] == 1
    assert client.get("/api/assets/?status=ready").json()["count"] == 0


def test_list_filters(upload, client):
    upload(photo_bytes("rocket"), tags="space", licence="cc0-1.0", ai_training_consent="true")
    upload(photo_bytes("coffee"), tags="food")
    assert client.get("/api/assets/?tag=space").json()["count"] == 1
    assert client.get("/api/assets/?consent=yes").json()["count"] == 1
    assert client.get("/api/assets/?licence=none").json()["count"] == 1
    assert client.get("/api/assets/?status=ready").json()["count"] == 2
    page = client.get("/my/uploads/?tag=food")
    assert page.status_code == 200 and page.content.decode().count('class="card"') == 1


# --- atomic storage --------------------------------------------------------------------------


def test_an_upload_interrupted_while_storing_leaves_no_file_and_no_row(alice, media_root, monkeypatch):
    data = photo_bytes("rocket")
    original_save = default_storage.__class__._save

    def interrupted_save(storage, name, content):
        def chunks():
            yield content.read()[:1000]
            raise ConnectionResetError("client went away")

        content.chunks = chunks
        return original_save(storage, name, content)

    monkeypatch.setattr(default_storage.__class__, "_save", interrupted_save)
    with pytest.raises(ConnectionResetError):
        services.upload_asset(owner=alice, uploaded_file=SimpleUploadedFile("photo.jpg", data))
    assert Asset.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_database_failure_after_the_file_was_stored_removes_the_file(alice, media_root, monkeypatch):
    def failing_create(*args, **kwargs):
        raise IntegrityError("database went away")

    monkeypatch.setattr(AssetEvent.objects, "create", failing_create)
    with pytest.raises(IntegrityError):
        services.upload_asset(owner=alice, uploaded_file=SimpleUploadedFile("photo.jpg", photo_bytes("rocket")))
    assert Asset.objects.count() == 0
    assert stored_files(media_root) == []


# --- the Celery task ------------------------------------------------------------------------


def test_transient_errors_are_retried_then_reported(upload, monkeypatch):
    asset = upload(photo_bytes("rocket"))
    Asset.objects.filter(pk=asset.pk).update(status=Asset.Status.PROCESSING)
    attempts = []

    def storage_down(asset_id):
        attempts.append(asset_id)
        raise ConnectionError("storage unreachable")

    monkeypatch.setattr(services, "prepare_asset", storage_down)
    # Not propagating, eager Celery runs the retries at once, as a worker would run them later.
    monkeypatch.setitem(tasks.prepare_asset.app.conf, "task_eager_propagates", False)
    result = tasks.prepare_asset.apply(args=[asset.pk])
    assert isinstance(result.result, ConnectionError)
    asset.refresh_from_db()
    assert len(attempts) == tasks.MAX_RETRIES + 1
    assert asset.status == Asset.Status.FAILED
    assert asset.failure_reason == "Processing kept failing (ConnectionError); use “Retry processing” to try again."


def test_a_transient_error_that_clears_up_ends_ready(upload, monkeypatch):
    asset = upload(photo_bytes("rocket"))
    Asset.objects.filter(pk=asset.pk).update(status=Asset.Status.PROCESSING)
    real_prepare, calls = services.prepare_asset, []

    def flaky(asset_id):
        calls.append(asset_id)
        if len(calls) < 3:
            raise TimeoutError("slow disk")
        return real_prepare(asset_id)

    monkeypatch.setattr(services, "prepare_asset", flaky)
    monkeypatch.setitem(tasks.prepare_asset.app.conf, "task_eager_propagates", False)
    assert tasks.prepare_asset.apply(args=[asset.pk]).successful()
    asset.refresh_from_db()
    assert asset.status == Asset.Status.READY and len(calls) == 3


def test_retry_processing_from_the_asset_page(upload, client, django_capture_on_commit_callbacks):
    asset = upload(photo_bytes("rocket"))
    Asset.objects.filter(pk=asset.pk).update(status=Asset.Status.FAILED, failure_reason="disk full")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/assets/{asset.pk}/retry/")
    assert response.status_code == 302
    asset.refresh_from_db()
    assert asset.status == Asset.Status.READY and asset.failure_reason == ""


def test_the_requeue_command_picks_up_lost_tasks(upload, django_capture_on_commit_callbacks):
    asset = upload(photo_bytes("rocket"))
    Asset.objects.filter(pk=asset.pk).update(status=Asset.Status.PROCESSING)  # as if its message was lost
    out = io.StringIO()
    call_command("prepare_assets", stdout=out)
    assert out.getvalue().strip() == "Queued 1 image(s)."
    asset.refresh_from_db()
    assert asset.status == Asset.Status.READY
