import logging

from celery import shared_task
from django.db import DatabaseError

from marketplace.catalog import services

logger = logging.getLogger(__name__)

# Storage and database hiccups are worth retrying; anything else will fail the same way again.
TRANSIENT_ERRORS = (OSError, DatabaseError)
MAX_RETRIES = 5


@shared_task(bind=True, max_retries=MAX_RETRIES, acks_late=True)
def prepare_asset(self, asset_id: int) -> None:
    try:
        services.prepare_asset(asset_id)
    except TRANSIENT_ERRORS as error:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(exc=error, countdown=min(300, 5 * 2**self.request.retries)) from error
        services.mark_processing_failed(
            asset_id, f"Processing kept failing ({type(error).__name__}); use “Retry processing” to try again."
        )
        raise
    except Exception as error:
        logger.exception("processing asset %s failed", asset_id)
        services.mark_processing_failed(asset_id, f"Processing failed unexpectedly ({type(error).__name__}).")
        raise
