"""Dataset packs: a staff recipe (Pack) and its frozen, published versions (PackVersion)."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from marketplace.catalog.models import Asset
from marketplace.core.models import WriteOnceModel


class Pack(models.Model):
    """What staff build: a query, filters, picks and removals. Publishing freezes a version."""

    class Use(models.TextChoices):
        COMMERCIAL = "commercial", "Commercial models"
        RESEARCH = "research", "Non-commercial research"

    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True, help_text="Motivation: what the pack is for. Goes into the datasheet.")
    use = models.CharField(
        max_length=20,
        choices=Use.choices,
        default=Use.COMMERCIAL,
        help_text="What buyers may do with models trained on it; decides which image licences may enter.",
    )
    price_cents = models.PositiveIntegerField(help_text="Price of a licence, in cents.")
    currency = models.CharField(max_length=3, default="usd")

    # The selection recipe.
    query = models.CharField(max_length=300, blank=True, help_text="CLIP text query ranking the images.")
    filters = models.JSONField(default=dict, blank=True, help_text="tag, licence, creator, min_short_side")
    picks = models.JSONField(default=list, blank=True, help_text="Asset ids always included (when eligible).")
    removals = models.JSONField(default=list, blank=True, help_text="Asset ids never included.")
    size = models.PositiveIntegerField(null=True, blank=True, help_text="At most this many images, sampled diversely.")

    is_listed = models.BooleanField(default=True, help_text="Shown in the public catalogue once published.")
    publish_when_eligible = models.BooleanField(
        default=False,
        help_text="Publish the first version by itself as soon as curation has passed enough images (the demo pack).",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.CheckConstraint(condition=models.Q(price_cents__gt=0), name="packs_pack_price_positive")]

    def __str__(self):
        return self.title


class FrozenModel(WriteOnceModel):
    """Published data buyers rely on."""

    change_refused = "A published {name} never changes; publish a new version."

    class Meta:
        abstract = True


class PackVersion(FrozenModel):
    """A published, immutable snapshot of a pack. Its manifest's SHA-256 identifies it."""

    pack = models.ForeignKey(Pack, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    use = models.CharField(max_length=20, choices=Pack.Use.choices)
    price_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    item_count = models.PositiveIntegerField()
    creator_count = models.PositiveIntegerField()
    licence_terms = models.JSONField(help_text="The terms a buyer agrees to, frozen at publication.")
    datasheet = models.JSONField(help_text="The dataset card, structured; rendered on the page and in downloads.")
    manifest = models.JSONField(help_text="Canonical manifest; its SHA-256 is manifest_sha256.")
    manifest_sha256 = models.CharField(max_length=64, unique=True)
    published_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    published_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pack", "-number"]
        constraints = [models.UniqueConstraint(fields=["pack", "number"], name="packs_version_unique_number")]

    def __str__(self):
        return f"{self.title} v{self.number}"


class PackItem(FrozenModel):
    """One image in a published version, as it was when the version was frozen."""

    version = models.ForeignKey(PackVersion, on_delete=models.PROTECT, related_name="items")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="pack_items")
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveIntegerField()
    key = models.CharField(max_length=40, help_text="The sample's name inside downloads, e.g. 000042.")
    file_name = models.CharField(max_length=300, help_text="Storage name of the location-free delivery copy.")
    file_format = models.CharField(max_length=4)
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the delivered file.")
    byte_size = models.BigIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    training_caption = models.TextField()
    licence = models.CharField(max_length=40)
    title = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["version", "position"]
        constraints = [
            models.UniqueConstraint(fields=["version", "asset"], name="packs_item_unique_asset"),
            models.UniqueConstraint(fields=["version", "position"], name="packs_item_unique_position"),
        ]

    def __str__(self):
        return f"{self.version} #{self.position}"

    @property
    def extension(self) -> str:
        return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[self.file_format]


class Revocation(models.Model):
    """An image left a version after it was published (its creator took it back, or the platform took it
    down): named on the version's public revocation list."""

    class Reason(models.TextChoices):
        WITHDRAWN = "withdrawn", "The creator withdrew the image"
        CONSENT_WITHDRAWN = "consent_withdrawn", "The creator withdrew consent to AI training"
        TAKEDOWN = "takedown", "Taken down by the platform"

    version = models.ForeignKey(PackVersion, on_delete=models.PROTECT, related_name="revocations")
    item = models.ForeignKey(PackItem, on_delete=models.PROTECT, related_name="revocations")
    reason = models.CharField(max_length=30, choices=Reason.choices)
    revoked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["revoked_at", "id"]
        constraints = [models.UniqueConstraint(fields=["version", "item"], name="packs_revocation_unique_item")]

    def __str__(self):
        return f"revoked {self.item}"


class PackExport(models.Model):
    """A download format of a version, built once by a Celery task."""

    class Kind(models.TextChoices):
        WEBDATASET = "webdataset", "WebDataset tar shards"
        IMAGEFOLDER = "imagefolder", "Hugging Face imagefolder (zip)"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        BUILDING = "building", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    version = models.ForeignKey(PackVersion, on_delete=models.PROTECT, related_name="exports")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    done_items = models.PositiveIntegerField(default=0)
    total_items = models.PositiveIntegerField(default=0)
    files = models.JSONField(default=list, blank=True, help_text="[{name, path, bytes, sha256}] once ready")
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["version", "kind"]
        constraints = [models.UniqueConstraint(fields=["version", "kind"], name="packs_export_unique_kind")]

    def __str__(self):
        return f"{self.version} {self.kind}"

    @property
    def progress(self) -> float:
        return self.done_items / self.total_items if self.total_items else 0.0
