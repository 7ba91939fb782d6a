from django.conf import settings
from django.db import models


class TrainingRun(models.Model):
    """A LoRA fine-tuning run on the pack version of a licence, launched by staff, trained by a Celery worker."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)

    licence = models.ForeignKey("commerce.PackLicence", on_delete=models.PROTECT, related_name="training_runs")
    launched_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    base_model = models.CharField(
        max_length=500, help_text="The checkpoint trained from: a diffusers model id or a local directory."
    )
    base_model_key = models.CharField(
        max_length=100,
        blank=True,
        help_text="The base model's key in training/engine/registry.py (its licence); blank for runs before it.",
    )
    config = models.JSONField(help_text="The engine's TrainConfig fields.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    images_per_second = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="The worker's lease, renewed while it trains.")
    worker_host = models.CharField(max_length=200, blank=True)
    requeued_at = models.DateTimeField(
        null=True, blank=True, help_text="When a stale run (its worker gone) was last sent to the queue again."
    )
    lease_token = models.CharField(max_length=32, blank=True, help_text="The claim of the worker training it.")
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    log_tail = models.TextField(blank=True, help_text="The last lines of the run's log.")
    losses = models.JSONField(default=list, blank=True, help_text="[[step, loss], ...], thinned.")
    samples = models.JSONField(default=list, blank=True, help_text="Validation images: [{step, path}, ...].")
    checkpoint_path = models.CharField(
        max_length=500, blank=True, help_text="The latest checkpoint (a tar in media storage) to resume from."
    )
    family = models.CharField(max_length=40, blank=True, help_text="The base model's family, as the engine told it.")
    holdout_keys = models.JSONField(
        default=list, blank=True, help_text="The pack items set aside for evaluation (fixed by the seed)."
    )
    evaluations = models.JSONField(
        default=list,
        blank=True,
        help_text="[{step, validation_loss, metrics: {lora, base}, best}]: the held-out loss from step 0 and the "
        "previews' scores.",
    )
    best_step = models.PositiveIntegerField(
        null=True, blank=True, help_text="The delivered LoRA's step: the lowest held-out loss."
    )
    lora_path = models.CharField(max_length=500, blank=True)
    kohya_lora_path = models.CharField(max_length=500, blank=True, help_text="The LoRA in kohya / ComfyUI key format.")
    sample_grid_path = models.CharField(max_length=500, blank=True)
    model_card_path = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"training run {self.pk}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def progress(self) -> float:
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0


class TrainingUsage(models.Model):
    """How many times a run's training saw each asset: data lineage, and the basis of usage-based royalties."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="usages")
    asset = models.ForeignKey("catalog.Asset", on_delete=models.PROTECT, related_name="+")
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    times_seen = models.PositiveIntegerField()

    class Meta:
        ordering = ["run", "asset"]
        constraints = [models.UniqueConstraint(fields=["run", "asset"], name="training_usage_unique_asset")]

    def __str__(self):
        return f"{self.run} saw asset {self.asset_id} {self.times_seen}x"
