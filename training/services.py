"""Writes of training: launching, canceling and executing runs (the Celery task calls execute_run)."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tarfile
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import asdict, fields
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from marketplace.commerce.models import PackLicence
from marketplace.packs.models import PackExport, PackItem
from training import base_models, selectors
from training.engine import registry
from training.engine.train import ConfigError as EngineConfigError
from training.engine.train import TrainConfig
from training.models import TrainingRun, TrainingUsage

logger = logging.getLogger(__name__)

SAVE_EVERY_SECONDS = 2.0  # progress (and the lease's heartbeat) is written at most this often
STOP_CHECK_SECONDS = 2.0  # cancel_requested_at is read at most this often
LOG_LINES = 200
REQUEUE_AGAIN_SECONDS = 3600  # a requeued run nobody claimed (its message lost as well) is sent again
MAX_LOSS_POINTS = 400
# Set by the worker (TRAINING_DEVICE), not by whoever launches the run.
LAUNCH_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("base_model", "device"))


class Outcome:
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUSED = "refused: another worker holds a live lease"
    FINISHED = "already finished"
    LEASE_LOST = "lease lost to another worker"
    MISSING = "no such run"


class ConfigError(ValidationError):
    """Invalid hyperparameters; `error_dict` is keyed by TrainConfig field name, as the engine reports them."""


def build_config(base_model: str, **hyperparameters) -> TrainConfig:
    unknown = set(hyperparameters) - set(LAUNCH_FIELDS)
    if unknown:
        raise ValidationError(f"Unknown hyperparameters: {', '.join(sorted(unknown))}.")
    try:
        return TrainConfig(base_model=(base_model or "").strip(), **hyperparameters)
    except EngineConfigError as error:
        raise ConfigError(
            {
                field: [message[:1].upper() + message[1:] + "." for message in messages]
                for field, messages in error.errors.items()
            }
        ) from error
    except TypeError as error:  # a value of a type the engine's checks cannot compare
        raise ValidationError(str(error)) from error


def _webdataset_export(licence: PackLicence) -> PackExport:
    export = PackExport.objects.filter(version=licence.version, kind=PackExport.Kind.WEBDATASET).first()
    if export is None or export.status != PackExport.Status.READY:
        state = export.get_status_display().lower() if export else "not started"
        raise ValidationError(
            f"The WebDataset download of {licence.version} is not ready yet ({state}): downloads are still being "
            "built. Launch the run once it is ready."
        )
    return export


def _base_model_for(licence: PackLicence, key: str) -> base_models.ConfiguredBaseModel:
    """The base model `key` as configured here, if it can be launched and its licence suits the pack's."""
    key = (key or "").strip()
    available = base_models.available_base_models()
    configured = next((entry for entry in available if entry.key == key), None)
    if configured is None:
        known = registry.get(key)
        if known is not None and known.demo:
            reason = (
                f"The demo model {key!r} ({known.label}) is not built on this machine; "
                f"marketplace.core.demo_models.build_demo_model({known.family!r}) builds it."
            )
        else:
            reason = f"Unknown base model {key!r}." if key else "Pick a base model."
        raise ValidationError(
            {"base_model_key": [f"{reason} These can be trained here: {', '.join(e.key for e in available)}."]}
        )
    if base_models.pack_is_commercial(licence) and not configured.commercial_use:
        allowed = ", ".join(f"{e.label} ({e.key})" for e in available if e.commercial_use)
        pack_use = base_models.pack_use_label(licence)
        raise ValidationError(
            {
                "base_model_key": [
                    f"{configured.label} is licensed under the {configured.licence.name}, which does not allow "
                    f"commercial use, but the pack licence of {licence.version} ({pack_use}) "
                    "is for commercial models: a LoRA trained on it would be used commercially. "
                    f"Base models whose licences allow commercial use: {allowed}."
                ]
            }
        )
    return configured


def launch_run(*, actor, licence: PackLicence, base_model_key: str, **hyperparameters) -> TrainingRun:
    """Queue a LoRA run on the licence's pack version, on the registry's base model `base_model_key` (trained
    from the checkpoint configured for it). No licence, no run; a commercial pack needs a commercial base model."""
    if not (actor.is_authenticated and actor.is_staff):
        raise PermissionDenied("Only staff launch training runs.")
    if licence is None or not licence.is_active:
        raise ValidationError("No licence, no run: this licence is revoked." if licence else "No licence, no run.")
    base_model = _base_model_for(licence, base_model_key)
    _webdataset_export(licence)
    config = build_config(base_model.checkpoint, **hyperparameters)
    stored = asdict(config)
    stored.pop("device")
    stored["validation_prompts"] = list(config.validation_prompts)
    with transaction.atomic():
        licence = PackLicence.objects.select_for_update().get(pk=licence.pk)
        if not licence.is_active:
            raise ValidationError("No licence, no run: this licence is revoked.")
        run = TrainingRun.objects.create(
            licence=licence,
            launched_by=actor,
            base_model=config.base_model,
            base_model_key=base_model.key,
            config=stored,
            total_steps=config.max_steps,
        )
        transaction.on_commit(lambda: _enqueue(run.pk))
    logger.info("training run %s queued on %s by %s (base model %s)", run.pk, licence, actor, base_model.key)
    return run


def _enqueue(run_id: int) -> None:
    from training import tasks

    tasks.run_training.delay(run_id)


def requeue_stale_runs() -> list[int]:
    """Send runs whose worker died (running, lease expired) to the training queue again, once per stall.

    A killed worker's task message may be gone (the filesystem broker) or held back for hours (Redis'
    visibility timeout), so the periodic recovery and a starting worker send a new one; claim_run lets one
    copy take the run over and it resumes from its last checkpoint. A copy that finds it taken is refused.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
    not_yet_requeued = (
        Q(requeued_at__isnull=True)
        | Q(requeued_at__lt=F("heartbeat_at"))  # requeued before, and it ran since
        | Q(requeued_at__lt=now - timedelta(seconds=REQUEUE_AGAIN_SECONDS))  # that message was lost too
    )
    requeued = []
    candidates = TrainingRun.objects.filter(not_yet_requeued, status=TrainingRun.Status.RUNNING, heartbeat_at__lt=stale)
    for run_id in candidates.values_list("pk", flat=True):
        # Conditional, so that two recoveries at once (beat and a starting worker) send it once.
        if TrainingRun.objects.filter(not_yet_requeued, pk=run_id, heartbeat_at__lt=stale).update(requeued_at=now):
            from training import tasks

            tasks.run_training.delay(run_id)
            logger.warning("training run %s: its worker stopped renewing the lease; sent to the queue again", run_id)
            requeued.append(run_id)
    return requeued


def _request_stop(run: TrainingRun, reason: str) -> TrainingRun:
    """With the run's row locked: a queued run is canceled now; a running one stops at its next step."""
    now = timezone.now()
    if run.is_finished:
        return run
    run.cancel_requested_at = run.cancel_requested_at or now
    run.cancel_reason = run.cancel_reason or reason
    changed = ["cancel_requested_at", "cancel_reason"]
    if run.status == TrainingRun.Status.QUEUED:
        run.status, run.finished_at = TrainingRun.Status.CANCELED, now
        changed += ["status", "finished_at"]
    run.save(update_fields=changed)
    return run


def cancel_run(run: TrainingRun, *, actor) -> TrainingRun:
    if not (actor.is_authenticated and actor.is_staff):
        raise PermissionDenied("Only staff cancel training runs.")
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        return _request_stop(run, f"Canceled by {actor.username}.")


def stop_runs_of_licence(licence_id) -> int:
    """The licence was revoked: its queued runs are canceled, its running ones asked to stop."""
    stopped = 0
    with transaction.atomic():
        runs = TrainingRun.objects.select_for_update().filter(
            licence_id=licence_id, status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]
        )
        for run in runs:
            _request_stop(run, "The licence was revoked.")
            stopped += 1
    if stopped:
        logger.info("licence %s revoked: %d training runs stopped", licence_id, stopped)
    return stopped


# --- execution (on the training worker) --------------------------------------------------------


def work_folder(run: TrainingRun) -> Path:
    return Path(settings.TRAINING_WORK_DIR) / str(run.pk)


def storage_prefix(run: TrainingRun) -> str:
    return f"training/{run.pk}"


def _worker_host() -> str:
    return f"{socket.gethostname()} (pid {os.getpid()})"


def claim_run(run_id: int) -> tuple[TrainingRun | None, str | None]:
    """Take the run for this worker: queued, or running with a stale lease, becomes running with a new lease.

    One conditional UPDATE: two workers (a broker redelivery while the first copy still trains) cannot both
    win. Every later write of this worker checks its lease token, so a worker that lost its lease stops.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
    token = uuid.uuid4().hex
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().select_related("licence").filter(pk=run_id).first()
        if run is None:
            return None, Outcome.MISSING
        if run.is_finished:
            return None, Outcome.FINISHED
        lease_live = run.status == TrainingRun.Status.RUNNING and run.heartbeat_at and run.heartbeat_at >= stale
        if not lease_live and (run.cancel_requested_at or not run.licence.is_active):
            # Nobody trains it now: a stop asked for while queued or while its worker was dead ends it here.
            run.status, run.finished_at = TrainingRun.Status.CANCELED, now
            run.cancel_requested_at = run.cancel_requested_at or now
            run.cancel_reason = run.cancel_reason or "The licence was revoked."
            run.save(update_fields=["status", "finished_at", "cancel_requested_at", "cancel_reason"])
            return None, Outcome.CANCELED
        claimable = Q(status=TrainingRun.Status.QUEUED) | Q(
            Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale), status=TrainingRun.Status.RUNNING
        )
        claimed = TrainingRun.objects.filter(claimable, pk=run_id).update(
            status=TrainingRun.Status.RUNNING,
            lease_token=token,
            heartbeat_at=now,
            worker_host=_worker_host(),
            started_at=run.started_at or now,
        )
        if not claimed:
            return None, Outcome.REFUSED
    if run.status == TrainingRun.Status.RUNNING:
        logger.warning("training run %s: took over a stale lease from %s", run_id, run.worker_host)
    run.refresh_from_db()
    return run, None


def _copy_data(run: TrainingRun, folder: Path) -> list[Path]:
    """The export's tar shards, copied from storage to local disk once (kept for a resume)."""
    export = _webdataset_export(run.licence)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    shards = [entry for entry in export.files if entry["name"].endswith(".tar")]  # not the manifest, datasheet...
    if not shards:
        raise ValueError(f"The WebDataset download of {run.licence.version} holds no .tar shard.")
    for entry in shards:
        target = folder / Path(entry["name"]).name
        if not (target.is_file() and target.stat().st_size == entry.get("bytes", -1)):
            partial = target.with_name(target.name + ".part")
            with default_storage.open(entry["path"], "rb") as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.replace(partial, target)
        paths.append(target)
    return paths


def _restore_checkpoint(run: TrainingRun, checkpoints: Path, progress: _Progress) -> None:
    """A run taken over on a machine without its work folder gets its latest checkpoint from storage."""
    if not run.checkpoint_path or any(checkpoints.glob("checkpoint-*/state.json")):
        return
    checkpoints.mkdir(parents=True, exist_ok=True)
    scratch = checkpoints / f".restore-{uuid.uuid4().hex[:8]}"
    try:
        _extract_checkpoint(run.checkpoint_path, scratch)
        name = next(scratch.iterdir()).name
        os.replace(scratch / name, checkpoints / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress.log(f"Fetched {name} from storage")


def _extract_checkpoint(path: str, target: Path) -> None:
    try:
        with default_storage.open(path, "rb") as source, tarfile.open(fileobj=source) as tar:
            top = {Path(member.name).parts[0] for member in tar.getmembers()}
            if len(top) != 1 or not next(iter(top)).startswith("checkpoint-"):
                raise ValueError("it holds no checkpoint folder")
            tar.extractall(target, filter="data")  # "data": no absolute paths, links or devices
    except (OSError, tarfile.TarError, ValueError) as error:
        raise ValueError(f"The run's checkpoint in storage ({path}) cannot be restored: {error}") from error


def _rounded(value):
    """An evaluation record for the database: floats to 6 significant digits, the rest as it is."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def _thin(points: list) -> list:
    while len(points) > MAX_LOSS_POINTS:
        points = points[:-1:2] + points[-1:]
    return points


class _Progress:
    """The engine's callbacks: progress and heartbeat written at most every SAVE_EVERY_SECONDS, validation
    images stored, cancel requests read at most every STOP_CHECK_SECONDS. Every write checks the lease."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.lines: deque[str] = deque(run.log_tail.splitlines(), maxlen=LOG_LINES)
        self.losses: list = list(run.losses)
        self.samples: list = list(run.samples)
        self.evaluations: list = list(run.evaluations)
        self.step = run.step
        self.images_per_second = run.images_per_second
        self.saved_at = 0.0
        self.checked_at = time.monotonic()
        self.lease_lost = False
        self.cancel_requested = False

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        for line in str(message).splitlines() or [""]:
            self.lines.append(f"{stamp} {line}")
        self.save()

    def on_step(self, step: int, total: int, loss: float, images_per_second: float) -> None:
        if self.losses and self.losses[-1][0] >= step:  # resumed from an earlier checkpoint
            self.losses = [point for point in self.losses if point[0] < step]
        self.losses = _thin([*self.losses, [step, round(float(loss), 6)]])
        self.step, self.images_per_second = step, images_per_second
        self.save()

    def on_validation(self, step: int, images: list) -> None:
        prefix = storage_prefix(self.run)
        for number, image in enumerate(images):
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            name = f"{prefix}/samples/step-{step:08d}-{number}.png"
            name = default_storage.save(name, ContentFile(buffer.getvalue()))
            self.samples.append({"step": step, "path": name})
        self.save(force=True)

    def on_evaluation(self, record: dict) -> None:
        """The held-out loss (and the previews' scores) at a step: the run page charts it while the run trains."""
        self.evaluations = [e for e in self.evaluations if e["step"] != record["step"]] + [_rounded(record)]
        self.evaluations.sort(key=lambda e: e["step"])
        self.save(force=True)

    def on_checkpoint(self, step: int, folder: Path) -> None:
        """Mirror the engine's checkpoint to media storage, so that a worker on another machine (whose work
        folder is empty) resumes the run from it. The run points at the new copy before the old one goes.
        The final step's checkpoint is not copied: the outputs saved next supersede it."""
        if step >= self.run.total_steps:
            return
        archive = folder.parent / f".{folder.name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname=folder.name)
        try:
            with open(archive, "rb") as handle:
                name = default_storage.save(f"{storage_prefix(self.run)}/checkpoints/{folder.name}.tar", File(handle))
        finally:
            archive.unlink(missing_ok=True)
        previous = self.owned().values_list("checkpoint_path", flat=True).first()
        if self.save(force=True, checkpoint_path=name):
            if previous and previous != name:
                default_storage.delete(previous)
        else:  # another worker owns the run now: its checkpoints count, not this one
            default_storage.delete(name)

    def should_stop(self) -> bool:
        if self.lease_lost:
            return True
        if time.monotonic() - self.checked_at >= STOP_CHECK_SECONDS:
            self.checked_at = time.monotonic()
            row = TrainingRun.objects.filter(pk=self.run.pk).values("cancel_requested_at", "lease_token").first()
            self.lease_lost = self.lease_lost or not row or row["lease_token"] != self.run.lease_token
            self.cancel_requested = bool(row and row["cancel_requested_at"])
        return self.lease_lost or self.cancel_requested

    def save(self, *, force: bool = False, **extra) -> bool:
        if not force and not extra and time.monotonic() - self.saved_at < SAVE_EVERY_SECONDS:
            return not self.lease_lost
        updated = self.owned().update(
            step=self.step,
            images_per_second=self.images_per_second,
            losses=self.losses,
            samples=self.samples,
            evaluations=self.evaluations,
            log_tail="\n".join(self.lines),
            heartbeat_at=timezone.now(),
            **extra,
        )
        self.saved_at = time.monotonic()
        self.lease_lost = self.lease_lost or not updated
        return bool(updated)

    def owned(self):
        return TrainingRun.objects.filter(pk=self.run.pk, lease_token=self.run.lease_token)


class _Heartbeat:
    """Renews the run's lease from a thread while the worker holds it, so that a long set-up with no engine
    callback (a base model downloading, a large pack being cached) does not look like a dead worker."""

    def __init__(self, run: TrainingRun, progress: _Progress):
        self.run, self.progress = run, progress
        self.interval = max(1.0, settings.TRAINING_LEASE_SECONDS / 3)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"training-run-{run.pk}-heartbeat", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                if not self.progress.owned().update(heartbeat_at=timezone.now()):
                    self.progress.lease_lost = True  # another worker took the run: the engine stops at its next step
                    return
        finally:
            connection.close()  # this thread's own database connection


def _save_output(run: TrainingRun, local: Path, name: str) -> str:
    target = f"{storage_prefix(run)}/{name}"
    if default_storage.exists(target):
        default_storage.delete(target)
    with open(local, "rb") as handle:
        return default_storage.save(target, File(handle))


def _record_usage(run: TrainingRun, usage: dict[str, int]) -> None:
    items = {item.key: item for item in PackItem.objects.filter(version_id=run.licence.version_id)}
    unknown = sorted(set(usage) - set(items))
    if unknown:
        raise ValueError(f"The training data holds samples that are not items of {run.licence.version}: {unknown[:5]}")
    TrainingUsage.objects.filter(run=run).delete()
    TrainingUsage.objects.bulk_create(
        TrainingUsage(run=run, asset_id=items[key].asset_id, creator_id=items[key].creator_id, times_seen=count)
        for key, count in sorted(usage.items())
    )


def _evaluator(progress: _Progress):
    """The curation CLIP model as the engine's image/text feature model (CLIP score, Fréchet distance of the
    previews), or None, said in the run's log, when its weights cannot be had on this worker."""
    from marketplace.curation import services as curation
    from marketplace.curation.engine import clip
    from training.engine.evaluation import Encoder

    spec = curation.model_spec()
    try:
        clip.check_weights(spec)
        loaded = clip.load_model(spec)
    except Exception as error:  # noqa: BLE001 - evaluation is optional: the run trains without image scores
        progress.log(f"Previews are not scored: the curation CLIP model cannot be loaded ({error})")
        return None
    return Encoder(curation.model_identity(), loaded.embed_images, loaded.embed_texts)


def execute_run(run_id: int) -> str:
    """Train the run on this worker, resuming from its checkpoints in TRAINING_WORK_DIR. Idempotent: a
    finished run is left alone, and a run another worker is training (live lease) is refused."""
    from training.engine.train import Callbacks, ModelUnavailable, train

    run, outcome = claim_run(run_id)
    if run is None:
        logger.info("training run %s: %s", run_id, outcome)
        return outcome
    progress = _Progress(run)
    progress.log(f"Claimed by {run.worker_host}")
    try:
        folder = work_folder(run)
        config = TrainConfig(**{**run.config, "device": settings.TRAINING_DEVICE})
        callbacks = Callbacks(
            on_step=progress.on_step,
            should_stop=progress.should_stop,
            on_validation=progress.on_validation,
            on_checkpoint=progress.on_checkpoint,
            on_evaluation=progress.on_evaluation,
            log=progress.log,
        )
        with _Heartbeat(run, progress):
            data = _copy_data(run, folder / "data")
            _restore_checkpoint(run, folder / "output" / "checkpoints", progress)
            result = train(config, data, folder / "output", callbacks=callbacks, evaluator=_evaluator(progress))
        if progress.lease_lost:
            return Outcome.LEASE_LOST
        if result.stopped:
            # The checkpoint's weights saw these images: their usage counts for royalties all the same.
            _record_usage(run, result.usage)
            progress.log(f"Canceled at step {result.final_step}; the last checkpoint is kept.")
            progress.save(force=True, status=TrainingRun.Status.CANCELED, finished_at=timezone.now())
            return Outcome.CANCELED
        with transaction.atomic():
            run.refresh_from_db()
            if run.lease_token != progress.run.lease_token:
                return Outcome.LEASE_LOST
            _record_usage(run, result.usage)
            lora = _save_output(run, result.lora_path, result.lora_path.name)
            kohya = (
                _save_output(run, result.kohya_lora_path, result.kohya_lora_path.name) if result.kohya_lora_path else ""
            )
            run.kohya_lora_path = kohya
            grid = _save_output(run, result.sample_grid_path, "samples.png")
            run.evaluations, run.best_step, run.holdout_keys = result.evaluations, result.best_step, result.holdout_keys
            card = _write_model_card(run, result)
            progress.step = result.final_step
            progress.losses = _thin([[number + 1, round(loss, 6)] for number, loss in enumerate(result.losses)])
            progress.evaluations = [_rounded(record) for record in result.evaluations]
            progress.log(f"Succeeded at step {result.final_step}.")
            progress.save(
                force=True,
                status=TrainingRun.Status.SUCCEEDED,
                finished_at=timezone.now(),
                family=result.family,
                holdout_keys=result.holdout_keys,
                best_step=result.best_step,
                lora_path=lora,
                kohya_lora_path=kohya,
                sample_grid_path=grid,
                model_card_path=card,
                checkpoint_path="",
                error="",
            )
        if run.checkpoint_path:  # the outputs are saved: the resumable state is no longer needed
            default_storage.delete(run.checkpoint_path)
        return Outcome.SUCCEEDED
    except ModelUnavailable as error:
        progress.log(f"Failed: {error}")
        progress.save(force=True, status=TrainingRun.Status.FAILED, finished_at=timezone.now(), error=str(error))
        return Outcome.FAILED
    except Exception as error:  # noqa: BLE001 - any failure is recorded on the run, with the traceback in its log
        logger.exception("training run %s failed", run_id)
        for line in traceback.format_exc().splitlines()[-30:]:
            progress.lines.append(line)
        progress.log(f"Failed: {type(error).__name__}: {error}")
        progress.save(
            force=True,
            status=TrainingRun.Status.FAILED,
            finished_at=timezone.now(),
            error=f"{type(error).__name__}: {error}",
        )
        return Outcome.FAILED


def _write_model_card(run: TrainingRun, result) -> str:
    from training.modelcard import render_model_card

    rows = [
        {
            "key": key,
            "asset_id": usage.asset_id,
            "title": usage.title,
            "creator": usage.creator_name,
            "times_seen": usage.times_seen,
        }
        for key, usage in selectors.usage_rows(run)
    ]
    text = render_model_card(
        run, final_step=result.final_step, usage_rows=rows, creators=selectors.usage_by_creator(run)
    )
    target = f"{storage_prefix(run)}/MODEL_CARD.md"
    if default_storage.exists(target):
        default_storage.delete(target)
    return default_storage.save(target, ContentFile(text.encode()))
