import logging

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError

from marketplace.curation import services
from marketplace.curation.engine.clip import ModelUnavailable

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=5, acks_late=True)
def analyse_pending(self, max_batches: int = 100) -> dict:
    """Analyse everything awaiting analysis, a batch at a time. Workers running this side by side
    claim different assets."""
    analysed: list[int] = []
    for _ in range(max_batches):
        batch = services.claim_pending(settings.CURATION_BATCH_SIZE)
        if not batch:
            break
        try:
            report = services.analyse_assets(batch)
        except ModelUnavailable as error:
            # A configuration problem: retrying will not help until someone fixes the setting.
            # The assets stay "awaiting analysis" with this reason; `manage.py curate` picks them up.
            logger.error("curation is waiting for its model: %s", error)
            return {"analysed": analysed, "waiting_for_model": str(error)}
        except (OSError, DatabaseError) as error:
            raise self.retry(exc=error, countdown=min(600, 10 * 2**self.request.retries)) from error
        finally:
            services.release_claims(batch)
        analysed += report.analysed
    return {"analysed": analysed}
