from django.conf import settings
from django.db import models

from marketplace.catalog.models import Asset


class AssetAnalysis(models.Model):
    """What curation learned about one ready asset, and with which model."""

    class Status(models.TextChoices):
        PENDING = "pending", "Awaiting analysis"
        DONE = "done", "Analysed"
        FAILED = "failed", "Analysis failed"

    asset = models.OneToOneField(Asset, on_delete=models.CASCADE, related_name="analysis")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    error = models.TextField(blank=True, help_text="Why the last attempt did not finish.")
    attempts = models.PositiveIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker took it into a batch.")

    model_name = models.CharField(max_length=100, blank=True)
    model_pretrained = models.CharField(max_length=500, blank=True)
    embedding = models.BinaryField(null=True, blank=True, help_text="float16, L2-normalised")
    embedding_dim = models.PositiveIntegerField(default=0)

    caption = models.TextField(blank=True)
    caption_source = models.CharField(max_length=20, blank=True)  # "coca" or "phrase-bank"
    caption_parts = models.JSONField(default=list, blank=True)
    tags = models.JSONField(default=list, blank=True, help_text="[[tag, score], ...], best first")
    metadata_score = models.FloatField(null=True, blank=True, help_text="CLIP score of the creator's title/tags")

    dhash = models.CharField(max_length=16, blank=True)
    sharpness = models.FloatField(null=True, blank=True)
    quality_ok = models.BooleanField(null=True)
    quality = models.JSONField(default=dict, blank=True, help_text="figures and reasons")

    training_caption = models.TextField(blank=True)
    training_caption_sources = models.JSONField(default=list, blank=True)
    caption_override = models.TextField(blank=True, help_text="Staff's edit; wins over the generated caption.")
    caption_override_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    caption_override_at = models.DateTimeField(null=True, blank=True)

    cluster = models.ForeignKey(
        "DuplicateCluster", null=True, blank=True, on_delete=models.SET_NULL, related_name="members"
    )
    analysed_at = models.DateTimeField(null=True, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "asset analyses"

    def __str__(self):
        return f"analysis of {self.asset_id}"

    @property
    def model_identity(self) -> str:
        return f"{self.model_name}:{self.model_pretrained}"

    @property
    def effective_training_caption(self) -> str:
        return self.caption_override or self.training_caption


class DuplicateCluster(models.Model):
    """Near-duplicates from one creator; only the representative goes into packs."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    representative = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"cluster {self.pk} ({self.representative_id})"


class Flag(models.Model):
    """Something staff should look at."""

    class Kind(models.TextChoices):
        NEAR_DUPLICATE = "near_duplicate", "Near-duplicate (same creator)"
        CROSS_CREATOR = "cross_creator", "Possibly stolen: near-duplicate of another creator's image"
        EXACT_DUPLICATE = "exact_duplicate", "Possibly stolen: identical to another creator's image"
        QUALITY = "quality", "Quality rejection"
        MISLEADING = "misleading", "Title or tags do not match the image"
        RIGHTS = "rights", "Rights conflict"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        KEPT = "kept", "Kept"
        REJECTED = "rejected", "Rejected"
        MERGED = "merged", "Merged"

    kind = models.CharField(max_length=30, choices=Kind.choices, db_index=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN, db_index=True)
    asset = models.ForeignKey(Asset, on_delete=models.CASCADE, related_name="flags")
    other_asset = models.ForeignKey(Asset, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # One flag per finding: re-running analysis or reindexing never duplicates a flag.
        constraints = [
            models.UniqueConstraint(fields=["kind", "asset", "other_asset"], name="curation_flag_unique_pair"),
            models.UniqueConstraint(
                fields=["kind", "asset"],
                condition=models.Q(other_asset__isnull=True),
                name="curation_flag_unique_single",
            ),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} on {self.asset_id}"


class FlagDecision(models.Model):
    """Audit trail: who decided what about a flag, and when."""

    class Action(models.TextChoices):
        KEEP = "keep", "Keep"
        REJECT = "reject", "Reject"
        MERGE = "merge", "Merge"

    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="decisions")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=20, choices=Action.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]


class HoldQuerySet(models.QuerySet):
    def active(self):
        return self.filter(released_at__isnull=True)


class Hold(models.Model):
    """An asset kept out of packs until staff resolve the flag behind it. The creator sees why."""

    objects = HoldQuerySet.as_manager()

    asset = models.ForeignKey(Asset, on_delete=models.CASCADE, related_name="holds")
    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="holds")
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["asset", "flag"], name="curation_hold_unique_per_flag")]

    @property
    def is_active(self) -> bool:
        return self.released_at is None


class IndexState(models.Model):
    """The current version of a persisted near-duplicate index.

    Index files live in media storage, shared by every worker machine; this row is locked
    while one worker updates an index, so updates are serialised and never lost.
    """

    name = models.CharField(max_length=50, unique=True)
    version = models.PositiveBigIntegerField(default=0)
    path = models.CharField(max_length=300, blank=True)
    items = models.PositiveIntegerField(default=0)
    model_identity = models.CharField(max_length=600, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
