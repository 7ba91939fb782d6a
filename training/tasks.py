from celery import shared_task

from training import services


@shared_task
def run_training(run_id: int) -> str:
    """Train one run (routed to the `training` queue; acknowledged late, as every task). A delivery while
    another copy holds the run's live lease is refused and dropped: if that worker dies, its lease lapses and
    requeue_stale_runs sends the run again, so one mechanism recovers runs and no copy waits in the queue."""
    return services.execute_run(run_id)


@shared_task
def requeue_stale_runs() -> list[int]:
    """Periodic (celery beat): runs whose worker died go back to the training queue and resume."""
    return services.requeue_stale_runs()
