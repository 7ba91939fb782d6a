"""Demo users and a demo creator's uploads made from real photographs. Safe to run again."""

import io
from datetime import datetime

from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand
from django.db import transaction
from PIL import Image

from marketplace.accounts.models import User
from marketplace.accounts.services import register_user
from marketplace.catalog import services
from marketplace.catalog.models import Asset
from marketplace.core.photos import load_photo

DEMO_USERS = (
    # username, password, creator, buyer, staff
    ("creator", "creator-demo-pass", True, False, False),
    ("buyer", "buyer-demo-pass", False, True, False),
    ("admin", "admin-demo-pass", False, False, True),
)

DEMO_PHOTOS = (
    # photo, title, tags, licence, consent, GPS in the file
    ("astronaut", "Astronaut portrait", "portrait, space, studio", "mkt-ai-commercial-1.0", True, False),
    ("coffee", "Morning coffee", "food, drink, still life", "mkt-ai-commercial-1.0", True, True),
    ("chelsea", "Chelsea the cat", "animal, cat, pet", "cc-by-4.0", True, True),
    ("rocket", "Rocket on the launch pad", "space, rocket, launch", "mkt-ai-commercial-1.0", True, False),
    ("motorcycle", "Motorcycle in the garage", "vehicle, motorcycle, indoor", "mkt-ai-research-1.0", True, True),
    ("hubble", "Hubble deep field", "space, galaxies, astronomy", "cc0-1.0", True, False),
    ("retina", "Retina scan", "medical, eye", "all-rights-reserved", False, False),
)


DEMO_PACK = {
    "title": "Demo: everyday photographs",
    "slug": "demo-everyday",
    "description": "Real photographs of people, objects, animals and space, for trying out the marketplace.",
    "use": "commercial",
    "price_cents": 4900,
}


def demo_jpeg(photo: str, *, with_gps: bool) -> bytes:
    """A real photo as a camera would write it: EXIF camera fields, and GPS for some."""
    image = load_photo(photo, min_short_side=768)
    exif = Image.Exif()
    exif[0x010F] = "DemoCam"  # Make
    exif[0x0110] = "DC-1"  # Model
    exif.get_ifd(0x8769)[0x9003] = datetime(2026, 6, 1, 9, 30).strftime("%Y:%m:%d %H:%M:%S")
    if with_gps:
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = "N", (48.0, 51.0, 29.0)
        gps[3], gps[4] = "E", (2.0, 17.0, 40.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif)
    return buffer.getvalue()


class Command(BaseCommand):
    help = "Create demo users (creator, buyer, staff) and the demo creator's uploads from real photos."

    def handle(self, *args, **options):
        users = {}
        for username, password, creator, buyer, staff in DEMO_USERS:
            users[username] = self._user(username, password, creator=creator, buyer=buyer, staff=staff)
        creator = users["creator"]
        added = 0
        for photo, title, tags, licence, consent, with_gps in DEMO_PHOTOS:
            added += self._upload(creator, photo, title, tags, licence, consent, with_gps)
        self.stdout.write(self.style.SUCCESS(f"Demo data ready ({added} new images)."))
        self._demo_pack(users["admin"])
        self._demo_base_model()
        self.stdout.write("Log in at http://127.0.0.1:8000/accounts/login/ as:")
        for username, password, creator_role, _buyer, staff in DEMO_USERS:
            role = "staff (admin)" if staff else "creator" if creator_role else "buyer"
            self.stdout.write(f"  {role:14} {username} / {password}")

    def _demo_pack(self, admin) -> None:
        """A pack of the demo photos, published as soon as curation has passed them."""
        from django.core.exceptions import ValidationError

        from marketplace.packs import services as packs
        from marketplace.packs.models import Pack

        pack = Pack.objects.filter(slug=DEMO_PACK["slug"]).first()
        if pack is None:
            # Curation analyses the photos in the worker, after seeding: the pack publishes itself once they pass.
            pack = packs.save_pack(actor=admin, **DEMO_PACK)
            Pack.objects.filter(pk=pack.pk).update(publish_when_eligible=True)
        if pack.versions.exists():
            return
        try:
            version = packs.publish_version(pack, actor=admin)
        except ValidationError:
            self.stdout.write(
                f"The demo pack “{pack.title}” publishes itself once curation has analysed the photos "
                "(the worker does it; the curation model must be available)."
            )
        else:
            self.stdout.write(f"Published {version}: http://127.0.0.1:8000/packs/{pack.slug}/")

    def _demo_base_model(self) -> None:
        from marketplace.core import demo_models
        from training.engine.families import FAMILY_MODULES

        folder = demo_models.build_demo_base_model()
        self.stdout.write(f"Demo base model for training (a tiny Stable Diffusion): {folder}")
        others = [family for family in FAMILY_MODULES if family != "sd"]
        for family in others:  # a run of every family can be tried on the demo pack, on the CPU
            demo_models.build_demo_model(family)
        self.stdout.write(f"Tiny base models of the other families ({', '.join(others)}) beside it.")

    def _user(self, username, password, *, creator, buyer, staff) -> User:
        user = User.objects.filter(username=username).first()
        if user is None:
            user = register_user(
                username=username,
                email=f"{username}@demo.invalid",
                password=password,
                is_creator=creator,
                is_buyer=buyer,
                display_name=f"Demo {username}",
            )
            if staff:
                user.is_staff = user.is_superuser = True
                user.save(update_fields=["is_staff", "is_superuser"])
        return user

    def _upload(self, creator, photo, title, tags, licence, consent, with_gps) -> int:
        data = demo_jpeg(photo, with_gps=with_gps)
        upload = SimpleUploadedFile(f"{photo}.jpg", data, content_type="image/jpeg")
        metadata = {"title": title, "tags": tags, "licence": licence, "ai_training_consent": consent}
        try:
            with transaction.atomic():
                asset = services.upload_asset(owner=creator, uploaded_file=upload, metadata=metadata)
        except services.DuplicateUpload as duplicate:
            asset = duplicate.existing
            added = 0
        else:
            added = 1
        if asset.status != Asset.Status.READY:
            services.prepare_asset(asset.pk)  # at once, so the demo is ready before the worker starts
        return added
