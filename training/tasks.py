from celery import shared_task

from training import services


@shared_task(acks_late=True, reject_on_worker_lost=True, bind=True, max_retries=None)
def run_training(self, run_id: int) -> str:
    """Train one run (routed to the `training` queue). A redelivery while another copy holds the run's live
    lease is refused and checks again once that lease could have expired: a dead worker's run is taken over
    and resumes from its checkpoints; a live one is never trained twice at once."""
    outcome = services.execute_run(run_id)
    if outcome == services.Outcome.REFUSED and not self.request.is_eager:
        raise self.retry(countdown=services.lease_recheck_seconds())
    return outcome


@shared_task
def requeue_stale_runs() -> list[int]:
    """Periodic (celery beat): runs whose worker died go back to the training queue and resume."""
    return services.requeue_stale_runs()
