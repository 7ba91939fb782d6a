"""Steps that tests of training runs share (tests/test_training_runs.py on local disk, tests/test_s3_storage.py on
S3): stopping a run part-way, and a dead worker's run taken over on another machine."""

from pathlib import Path

from django.utils import timezone

from training import services
from training.models import TrainingRun


def stop_at(monkeypatch, step: int) -> None:
    """Ask the run to stop once it reaches `step` (as a cancel from the page would), checked at every step."""
    monkeypatch.setattr(services, "STOP_CHECK_SECONDS", 0)
    original = services._Progress.on_step

    def on_step(self, current, total, loss, images_per_second):
        original(self, current, total, loss, images_per_second)
        if current == step:
            TrainingRun.objects.filter(pk=self.run.pk).update(cancel_requested_at=timezone.now())

    monkeypatch.setattr(services._Progress, "on_step", on_step)


def resume_on_an_empty_machine(run: TrainingRun, settings, work_dir: Path, *, from_step: int) -> TrainingRun:
    """The worker died while running `run` (its lease went stale); another worker, whose work folder
    `work_dir` is empty, takes the run over: it fetches the step's checkpoint from media storage, resumes from
    it and finishes. `settings`: pytest-django's fixture (TRAINING_WORK_DIR is set through it)."""
    assert not work_dir.exists()
    settings.TRAINING_WORK_DIR = work_dir
    stale = timezone.now() - timezone.timedelta(seconds=settings.TRAINING_LEASE_SECONDS + 100)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING,
        cancel_requested_at=None,
        finished_at=None,
        heartbeat_at=stale,
        lease_token="dead-worker",
    )
    assert services.execute_run(run.pk) == services.Outcome.SUCCEEDED
    run.refresh_from_db()
    checkpoint = f"checkpoint-{from_step:08d}"
    assert f"Fetched {checkpoint} from storage" in run.log_tail
    assert f"Resumed from {checkpoint} at step {from_step}" in run.log_tail
    return run
