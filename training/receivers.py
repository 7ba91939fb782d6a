import logging

from celery.signals import worker_ready
from django.dispatch import receiver

from marketplace.commerce.signals import licence_revoked
from training import services


@receiver(licence_revoked)
def stop_training_runs(sender, licence_id, **kwargs):
    services.stop_runs_of_licence(licence_id)


@worker_ready.connect
def requeue_runs_of_dead_workers(sender=None, **kwargs):
    """A (re)started worker sends runs whose worker died back to the queue at once, not at the next beat."""
    try:
        services.requeue_stale_runs()
    except Exception:  # noqa: BLE001 - the database may be unreachable yet: the periodic recovery retries
        logging.getLogger(__name__).exception("could not requeue stale training runs")
