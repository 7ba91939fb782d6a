"""A small marketplace with one of everything, for the tests that try every endpoint as every kind of user
(tests/test_permission_matrix.py, tests/test_api_schema_fuzz.py): real objects, made through the services."""

from dataclasses import dataclass

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from marketplace.accounts.services import register_user
from marketplace.catalog import services as catalog
from marketplace.catalog.models import Asset
from marketplace.commerce import selectors as commerce_selectors
from marketplace.commerce.models import Order, PackLicence
from marketplace.curation.models import Flag
from marketplace.packs import services as packs
from marketplace.packs.models import Pack, PackVersion
from tests.commerce_helpers import paid_licence
from tests.conftest import photo_bytes
from training.models import TrainingRun


@dataclass
class World:
    published: Asset  # alice's, in the published pack
    spare: Asset  # alice's, in no pack: free to change or withdraw
    bobs: Asset  # bob's, in the pack
    pack: Pack
    version: PackVersion
    licensee: object  # a buyer who bought the pack
    order: Order
    licence: PackLicence
    run: TrainingRun  # queued: it can be cancelled
    finished_run: TrainingRun  # succeeded, with its LoRA and a validation sample in storage: files to fetch
    flag: Flag
    download_token: str


def make_licensee(username: str = "lena"):
    return register_user(
        username=username,
        email=f"{username}@example.com",
        password="correct horse battery",
        is_creator=False,
        is_buyer=True,
    )


def build_world(*, alice, bob, staff, licensee, make_eligible_asset, capture_on_commit) -> World:
    published = make_eligible_asset(alice, "astronaut")
    make_eligible_asset(alice, "coffee")
    bobs = make_eligible_asset(bob, "rocket")
    pack = packs.save_pack(actor=staff, title="Everyday things", slug="everyday", price_cents=5000, use="commercial")
    with capture_on_commit(execute=True):
        version = packs.publish_version(pack, actor=staff)
        spare = catalog.upload_asset(
            owner=alice, uploaded_file=SimpleUploadedFile("chelsea.jpg", photo_bytes("chelsea")), metadata={}
        )
    spare.refresh_from_db()
    licence = paid_licence(version, licensee)
    order = licence.order
    run = TrainingRun.objects.create(licence=licence, launched_by=staff, base_model="tiny-sd", config={})
    finished_run = TrainingRun.objects.create(
        licence=licence,
        launched_by=staff,
        base_model="tiny-sd",
        config={},
        status=TrainingRun.Status.SUCCEEDED,
        finished_at=timezone.now(),
        lora_path=default_storage.save("training/world/pytorch_lora_weights.safetensors", ContentFile(b"weights")),
        samples=[{"step": 1, "path": default_storage.save("training/world/sample.png", ContentFile(b"png"))}],
    )
    flag = Flag.objects.create(kind=Flag.Kind.QUALITY, asset=published)
    ready = next(row for row in commerce_selectors.download_listing(licence) if row["files"])
    token = ready["files"][0]["url"].rstrip("/").rsplit("/", 1)[-1]
    return World(published, spare, bobs, pack, version, licensee, order, licence, run, finished_run, flag, token)
