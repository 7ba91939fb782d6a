import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task
def ping(note: str = "") -> str:
    """The whole path, from whoever enqueues it through the broker to a worker, in one harmless task:
    `celery -A marketplace call marketplace.core.tasks.ping` and look for "pong" in the worker's log."""
    logger.info("pong %s", note)
    return "pong"
