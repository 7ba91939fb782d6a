"""Media on S3-compatible storage, against a real S3 API over HTTP (moto's server; boto3 is not mocked).

Uploads and their derived files, pack exports, training checkpoints and outputs all land in the bucket and
come back from it; buyers' downloads (and other attachments) redirect to short-lived signed S3 URLs, only
once the link and the licence have been checked."""

import hashlib
import io
import json
import shutil
import tarfile
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from marketplace.catalog.models import Asset
from marketplace.commerce import downloads
from marketplace.commerce.models import PackLicence
from marketplace.core.storage import AtomicFileSystemStorage, local_path_or_none, presigned_url
from marketplace.packs import services as packs
from marketplace.packs.models import PackExport, PackItem
from tests.commerce_helpers import paid_licence
from tests.conftest import photo_bytes
from tests.training_helpers import resume_on_an_empty_machine, stop_at

pytest_plugins = ["tests.s3_helpers"]  # the moto_server and s3_media fixtures


def client_for(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_presigned(location: str, bucket, key: str, *, seconds: int, filename: str) -> None:
    """`location` is a signed GET of `key` in the test's bucket on the moto server, valid `seconds`, that
    downloads as an attachment named `filename`."""
    url = urlsplit(location)
    query = {name: values[0] for name, values in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}" == bucket.endpoint_url
    assert url.path == f"/{bucket.name}/{key}"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Signature"]
    assert query["X-Amz-Credential"].startswith(f"{bucket.access_key}/")
    assert query["X-Amz-Expires"] == str(seconds)
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((timezone.now() - signed_at).total_seconds()) < 60  # valid from now, for `seconds`
    assert (
        query["response-content-disposition"].startswith("attachment")
        and filename in query["response-content-disposition"]
    )


def download(location: str) -> requests.Response:
    """Follow a redirect the way a browser or curl would: straight to S3, without Django."""
    response = requests.get(location, timeout=10)
    assert response.status_code == 200, response.text
    return response


@pytest.fixture
def published(s3_media, make_eligible_asset, alice, bob, staff, django_capture_on_commit_callbacks):
    """A version published with media on S3: three small uploads, both download formats built."""
    make_eligible_asset(alice, "astronaut", size=(160, 120))
    make_eligible_asset(alice, "coffee", size=(120, 160))
    make_eligible_asset(bob, "chelsea", size=(128, 128))
    pack = packs.save_pack(actor=staff, title="Everyday things", slug="everyday", price_cents=5000, use="commercial")
    with django_capture_on_commit_callbacks(execute=True):
        version = packs.publish_version(pack, actor=staff)
    for export in version.exports.all():
        assert export.status == PackExport.Status.READY, export.error
    return version


@pytest.fixture(autouse=True)
def small_uploads(settings):
    settings.UPLOAD_MIN_SHORT_SIDE = 64  # small photos: packs build and tiny runs train quickly


# --- the helpers --------------------------------------------------------------------------------------


def test_local_disk_has_paths_and_no_presigned_urls(media_root):
    storage = AtomicFileSystemStorage(location=str(media_root))
    assert local_path_or_none(storage, "a/b.jpg") == str(media_root / "a" / "b.jpg")
    assert presigned_url(storage, "a/b.jpg", filename="b.jpg", seconds=300) is None


# --- uploads ------------------------------------------------------------------------------------------


def test_an_upload_and_its_derived_files_land_in_the_bucket_and_reach_their_owner_only(
    s3_media, alice, bob, django_capture_on_commit_callbacks, settings
):
    data = photo_bytes("astronaut")
    api = APIClient()
    api.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):  # processing runs (eagerly) once committed
        response = api.post("/api/assets/", {"file": SimpleUploadedFile("astronaut.jpg", data)})
    assert response.status_code == 201, response.content
    asset = Asset.objects.get(pk=response.json()["id"])
    assert asset.status == Asset.Status.READY, asset.failure_reason

    # The original and the thumbnail, preview and delivery copies are objects in the bucket, private.
    derived = [f"derived/{asset.pk}/{kind}.jpg" for kind in ("thumbnail", "preview", "delivery")]
    assert s3_media.keys() == sorted([asset.original.name, *derived])
    assert [asset.thumbnail.name, asset.preview.name, asset.delivery.name] == derived
    assert asset.original.name.startswith(f"originals/{alice.pk}/")
    assert s3_media.read(asset.original.name) == data
    assert all(s3_media.is_private(key) for key in s3_media.keys())
    thumbnail = Image.open(io.BytesIO(s3_media.read(asset.thumbnail.name)))
    preview = Image.open(io.BytesIO(s3_media.read(asset.preview.name)))
    assert max(thumbnail.size) == settings.THUMBNAIL_PX and preview.size == (600, 600)  # the photo is 600 px
    assert Image.open(io.BytesIO(s3_media.read(asset.delivery.name))).size == (asset.width, asset.height)

    # Images shown in pages are streamed through Django to their owner, from the bucket.
    owner = client_for(alice)
    shown = owner.get(reverse("catalog:asset-file", args=[asset.pk, "thumbnail"]))
    assert shown.status_code == 200 and shown["Content-Type"] == "image/jpeg"
    assert b"".join(shown.streaming_content) == s3_media.read(asset.thumbnail.name)
    # A download (the original) redirects to a signed S3 URL that serves the uploaded bytes as an attachment.
    original = owner.get(reverse("catalog:asset-file", args=[asset.pk, "original"]))
    assert original.status_code == 302 and original["Cache-Control"] == "private, no-store"
    filename = f"asset-{asset.pk}-original.{asset.original.name.rsplit('.', 1)[-1]}"
    assert_presigned(
        original["Location"],
        s3_media,
        asset.original.name,
        seconds=300,  # DOWNLOAD_PRESIGNED_SECONDS's default
        filename=filename,
    )
    fetched = download(original["Location"])
    assert fetched.content == data and fetched.headers["Content-Disposition"].startswith("attachment")

    # Another creator gets neither the stream nor a signed URL.
    for kind in ("thumbnail", "original"):
        refused = client_for(bob).get(reverse("catalog:asset-file", args=[asset.pk, kind]))
        assert refused.status_code == 404 and "Location" not in refused


# --- pack exports ---------------------------------------------------------------------------------------


def test_pack_exports_are_built_from_the_bucket_and_stored_in_it(published, s3_media):
    items = {item.key: item for item in PackItem.objects.filter(version=published)}
    assert len(items) == 3
    webdataset = published.exports.get(kind=PackExport.Kind.WEBDATASET)
    imagefolder = published.exports.get(kind=PackExport.Kind.IMAGEFOLDER)

    # Every file of both downloads is an object in the bucket with the recorded size and SHA-256.
    for export in (webdataset, imagefolder):
        assert export.files
        for entry in export.files:
            assert entry["path"].startswith(f"exports/{published.pk}/{export.kind}/")
            data = s3_media.read(entry["path"])
            assert len(data) == entry["bytes"] and sha256(data) == entry["sha256"]
    names = [entry["name"] for entry in webdataset.files]
    assert "manifest.json" in names and any(name.endswith(".tar") for name in names)

    # The shard holds each item's delivery bytes, read back from the bucket (no local path to map).
    shard = next(entry for entry in webdataset.files if entry["name"].endswith(".tar"))
    with tarfile.open(fileobj=io.BytesIO(s3_media.read(shard["path"]))) as tar:
        members = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
    for key, item in items.items():
        image = members[f"{key}.{item.extension}"]
        assert sha256(image) == item.sha256 == sha256(s3_media.read(item.file_name))
        assert json.loads(members[f"{key}.json"])["asset_id"] == item.asset_id
    manifest = next(entry for entry in webdataset.files if entry["name"] == "manifest.json")
    assert sha256(s3_media.read(manifest["path"])) == published.manifest_sha256


# --- buyers' downloads ------------------------------------------------------------------------------------


def test_a_buyers_download_redirects_to_a_short_lived_signed_s3_url_after_the_checks(
    published, s3_media, carol, bob, settings
):
    licence = paid_licence(published, carol)
    export = published.exports.get(kind=PackExport.Kind.IMAGEFOLDER)
    [entry] = export.files
    settings.DOWNLOAD_PRESIGNED_SECONDS = 120
    # The downloads page lists the signed link; following it gives a redirect to S3, not the bytes.
    page = client_for(carol).get(reverse("commerce:downloads", args=[licence.pk]))
    link = reverse("commerce:download-file", args=[downloads.make_token(licence, export, entry["name"])])
    assert link in page.content.decode()

    for client in (client_for(carol), client_for()):  # the link is the credential (curl): anonymous works too
        response = client.get(link)
        assert response.status_code == 302 and response["Cache-Control"] == "private, no-store"
        assert_presigned(response["Location"], s3_media, entry["path"], seconds=120, filename=entry["name"])
        fetched = download(response["Location"])
        assert sha256(fetched.content) == entry["sha256"] and len(fetched.content) == entry["bytes"]
        assert fetched.headers["Content-Disposition"] == f'attachment; filename="{entry["name"]}"'
        assert fetched.headers["Cache-Control"] == "private, no-store"

    # Someone else's session, a tampered link, an expired one, a revoked licence: no redirect, no URL.
    assert_refused(client_for(bob).get(link), b"another buyer")
    assert_refused(client_for(carol).get(link[:-3] + "xyz/"), b"not valid")
    settings.DOWNLOAD_LINK_SECONDS = -1
    assert_refused(client_for(carol).get(link), b"expired")
    settings.DOWNLOAD_LINK_SECONDS = 3600
    PackLicence.objects.filter(pk=licence.pk).update(revoked_at=timezone.now())
    assert_refused(client_for(carol).get(link), b"not active")


def assert_refused(response, reason: bytes) -> None:
    assert response.status_code == 403 and reason in response.content
    assert "Location" not in response and b"X-Amz-Signature" not in response.content


def test_a_download_whose_object_is_gone_is_a_404_not_a_redirect(published, s3_media, carol):
    licence = paid_licence(published, carol)
    export = published.exports.get(kind=PackExport.Kind.IMAGEFOLDER)
    [entry] = export.files
    s3_media.client.delete_object(Bucket=s3_media.name, Key=entry["path"])
    response = client_for(carol).get(
        reverse("commerce:download-file", args=[downloads.make_token(licence, export, entry["name"])])
    )
    assert response.status_code == 404 and "Location" not in response


# --- training ------------------------------------------------------------------------------------------------

TRAINING = dict(
    resolution=64,
    batch_size=2,
    max_steps=6,
    learning_rate=1e-3,
    checkpoint_every=2,
    validation_every=3,
    validation_prompts=["a photo of a cat"],
    validation_steps=2,
)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_a_run_checkpoints_to_the_bucket_resumes_from_it_elsewhere_and_saves_its_outputs_there(
    published, s3_media, tiny_base, staff, carol, alice, settings, tmp_path, monkeypatch
):
    from safetensors.torch import load

    from training import services

    settings.TRAINING_WORK_DIR = tmp_path / "first-machine"
    settings.TRAINING_DEVICE = "cpu"
    settings.TRAINING_LEASE_SECONDS = 300
    licence = paid_licence(published, carol)
    run = services.launch_run(actor=staff, licence=licence, base_model_key="demo", **TRAINING)

    # The first worker stops after step 3 (as if it died there): its checkpoint is mirrored to the bucket.
    stop_at(monkeypatch, 3)
    assert services.execute_run(run.pk) == services.Outcome.CANCELED
    monkeypatch.undo()
    run.refresh_from_db()
    checkpoint = f"training/{run.pk}/checkpoints/checkpoint-00000003.tar"
    assert run.checkpoint_path == checkpoint
    assert s3_media.keys(f"training/{run.pk}/checkpoints/") == [checkpoint]  # only the latest is kept
    with tarfile.open(fileobj=io.BytesIO(s3_media.read(checkpoint))) as tar:
        assert "checkpoint-00000003/state.json" in tar.getnames()

    # Taken over on a machine whose work folder is empty: the checkpoint comes back from the bucket.
    shutil.rmtree(settings.TRAINING_WORK_DIR)
    run = resume_on_an_empty_machine(run, settings, tmp_path / "second-machine", from_step=3)
    assert run.step == 6 and run.checkpoint_path == ""
    assert s3_media.keys(f"training/{run.pk}/checkpoints/") == []  # done: the resumable state is deleted

    # The outputs and validation samples are objects in the bucket.
    prefix = f"training/{run.pk}"
    assert (run.lora_path, run.sample_grid_path, run.model_card_path) == (
        f"{prefix}/pytorch_lora_weights.safetensors",
        f"{prefix}/samples.png",
        f"{prefix}/MODEL_CARD.md",
    )
    assert run.kohya_lora_path == f"{prefix}/pytorch_lora_weights_kohya.safetensors"
    assert set(s3_media.keys(prefix)) == {
        run.lora_path,
        run.kohya_lora_path,
        run.sample_grid_path,
        run.model_card_path,
        *(sample["path"] for sample in run.samples),
    }
    weights = s3_media.read(run.lora_path)
    assert load(weights) and all("lora" in name for name in load(weights))
    assert licence.version.manifest_sha256 in s3_media.read(run.model_card_path).decode()

    # The licence holder's LoRA download redirects to the bucket; the sample grid is streamed from it.
    holder = client_for(carol)
    lora = holder.get(reverse("training:file", args=[run.pk, "lora"]))
    assert lora.status_code == 302
    assert_presigned(
        lora["Location"],
        s3_media,
        run.lora_path,
        seconds=settings.DOWNLOAD_PRESIGNED_SECONDS,
        filename="pytorch_lora_weights.safetensors",
    )
    assert download(lora["Location"]).content == weights
    grid = holder.get(reverse("training:file", args=[run.pk, "grid"]))
    assert grid.status_code == 200 and b"".join(grid.streaming_content) == s3_media.read(run.sample_grid_path)
    # A creator whose images it learned from is not the licence holder: no file, no signed URL.
    refused = client_for(alice).get(reverse("training:file", args=[run.pk, "lora"]))
    assert refused.status_code == 404 and "Location" not in refused


def test_media_are_back_on_local_disk_once_an_s3_test_is_over(media_root):
    """Runs after the tests above: the bucket does not leak into the rest of the suite."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    assert isinstance(default_storage, AtomicFileSystemStorage)
    name = default_storage.save("probe/local.txt", ContentFile(b"local"))
    assert (media_root / name).read_bytes() == b"local"
