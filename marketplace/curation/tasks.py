import logging

from celery import shared_task
from django.db import DatabaseError

from marketplace.curation import services
from marketplace.curation.engine.clip import ModelUnavailable

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=5, acks_late=True)
def analyse_assets(self, asset_ids: list[int]) -> dict:
    """Analyse and index a batch of ready assets. Idempotent: a redelivery redoes nothing done."""
    try:
        report = services.analyse_assets(asset_ids)
    except ModelUnavailable as error:
        # A configuration problem: retrying will not help until someone fixes the setting.
        # The assets stay "awaiting analysis" with this reason; `manage.py curate` picks them up.
        logger.error("curation is waiting for its model: %s", error)
        return {"waiting_for_model": str(error)}
    except (OSError, DatabaseError) as error:
        raise self.retry(exc=error, countdown=min(600, 10 * 2**self.request.retries)) from error
    return {"analysed": report.analysed, "skipped": report.skipped, "failed": report.failed}
