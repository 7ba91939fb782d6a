import uuid

from django.conf import settings
from django.db import models

from marketplace.catalog import licences


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


def original_path(asset, filename):
    return f"originals/{asset.owner_id}/{uuid.uuid4().hex}.{asset.format.lower()}"


class Asset(models.Model):
    """One uploaded image with its rights, consent and derived files."""

    class Status(models.TextChoices):
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class Format(models.TextChoices):
        JPEG = "JPEG", "JPEG"
        PNG = "PNG", "PNG"
        WEBP = "WEBP", "WebP"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="assets")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PROCESSING, db_index=True)
    failure_reason = models.TextField(blank=True)

    # The upload, exactly as received.
    original = models.FileField(upload_to=original_path, max_length=300)
    original_filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64, db_index=True)
    format = models.CharField(max_length=4, choices=Format.choices)
    byte_size = models.BigIntegerField()
    width = models.PositiveIntegerField(help_text="Pixels, as displayed (EXIF orientation applied).")
    height = models.PositiveIntegerField()

    # Made by the post-upload task.
    thumbnail = models.FileField(blank=True, max_length=300)
    preview = models.FileField(blank=True, max_length=300)
    delivery = models.FileField(blank=True, max_length=300, help_text="Copy without location metadata.")
    delivery_lossless = models.BooleanField(default=False)
    location_removed = models.BooleanField(default=False)
    phash = models.CharField(max_length=16, blank=True, help_text="64-bit perceptual hash, hex.")
    camera_make = models.CharField(max_length=100, blank=True)
    camera_model = models.CharField(max_length=100, blank=True)
    lens_model = models.CharField(max_length=150, blank=True)
    captured_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    # Rights metadata embedded in the file (IPTC/XMP/EXIF).
    embedded_creator = models.CharField(max_length=300, blank=True)
    embedded_copyright = models.CharField(max_length=500, blank=True)
    embedded_data_mining = models.CharField(max_length=100, blank=True)
    embedded_prohibits_ai_training = models.BooleanField(default=False)

    # The creator's metadata.
    title = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True, max_length=5000)
    tags = models.ManyToManyField(Tag, blank=True, related_name="assets")
    licence = models.CharField(max_length=40, choices=licences.CHOICES, blank=True)
    ai_training_consent = models.BooleanField(default=False)
    consent_given_at = models.DateTimeField(null=True, blank=True)
    rights_override_confirmed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the creator confirmed rights over an embedded data-mining prohibition."
    )
    people_identifiable = models.BooleanField(default=False)
    model_release = models.FileField(blank=True, max_length=300)
    property_release = models.FileField(blank=True, max_length=300)

    withdrawn_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # A staff takedown is the platform's act, not the creator's: kept apart from `withdrawn_at` so that
    # no page says the creator withdrew an image the platform removed, and so that staff can lift it.
    taken_down_at = models.DateTimeField(null=True, blank=True, db_index=True)
    takedown_reason = models.TextField(blank=True, max_length=2000, help_text="Shown to the creator.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "sha256"], name="catalog_asset_unique_per_owner_sha256"),
            models.CheckConstraint(
                condition=models.Q(ai_training_consent=False) | models.Q(consent_given_at__isnull=False),
                name="catalog_asset_consent_has_time",
            ),
        ]

    def __str__(self):
        return self.title or self.original_filename

    @property
    def display_title(self) -> str:
        return self.title or self.original_filename

    @property
    def is_withdrawn(self) -> bool:
        return self.withdrawn_at is not None

    @property
    def is_taken_down(self) -> bool:
        return self.taken_down_at is not None

    @property
    def is_out_of_packs(self) -> bool:
        """Withdrawn by its creator or taken down by the platform: in no future pack, not for sale."""
        return self.is_withdrawn or self.is_taken_down

    @property
    def licence_info(self) -> licences.Licence | None:
        return licences.get(self.licence)

    @property
    def display_status(self) -> str:
        # The creator's own withdrawal is final, so it shows even over a takedown.
        if self.is_withdrawn:
            return "withdrawn"
        return "taken-down" if self.is_taken_down else self.status

    @property
    def tag_names(self) -> list[str]:
        return [tag.name for tag in self.tags.all()]


class AssetEvent(models.Model):
    """Append-only history of an asset: upload, processing, metadata, consent, withdrawal, takedown."""

    class Kind(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        PROCESSED = "processed", "Processed"
        PROCESSING_FAILED = "processing_failed", "Processing failed"
        METADATA_CHANGED = "metadata_changed", "Metadata changed"
        CONSENT_GIVEN = "consent_given", "Consent to AI training given"
        CONSENT_WITHDRAWN = "consent_withdrawn", "Consent to AI training withdrawn"
        RIGHTS_OVERRIDE_CONFIRMED = "rights_override_confirmed", "Rights over embedded prohibition confirmed"
        WITHDRAWN = "withdrawn", "Withdrawn"
        TAKEN_DOWN = "taken_down", "Taken down by the platform"
        REINSTATED = "reinstated", "Reinstated by the platform"

    asset = models.ForeignKey(Asset, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    kind = models.CharField(max_length=40, choices=Kind.choices)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.asset_id} {self.kind}"
