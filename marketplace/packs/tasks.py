import logging

from celery import shared_task
from django.db import DatabaseError

from marketplace.packs import exports

logger = logging.getLogger(__name__)

# Storage and database hiccups are worth retrying; a missing or altered image fails the same way again.
TRANSIENT_ERRORS = (OSError, DatabaseError)
MAX_RETRIES = 5
# When another worker holds the claim, look again once it would have gone stale: if that worker died
# (its task redelivered at once), the build is taken over; a live builder keeps its claim fresh.
MAX_BUSY_CHECKS = 3


@shared_task(bind=True, max_retries=MAX_RETRIES, acks_late=True)
def build_export(self, export_id: int, busy_checks: int = 0) -> str:
    try:
        outcome = exports.build_export(export_id)
    except exports.ExportError as error:
        logger.warning("export %s failed: %s", export_id, error)  # recorded on the export; retry_export requeues
        return "failed"
    except TRANSIENT_ERRORS as error:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(exc=error, countdown=min(600, 10 * 2**self.request.retries)) from error
        exports.mark_failed(
            export_id, f"Building kept failing ({type(error).__name__}: {error}); retry the export to try again."
        )
        raise
    except Exception as error:
        logger.exception("building export %s failed", export_id)
        exports.mark_failed(export_id, f"Building failed unexpectedly ({type(error).__name__}: {error}).")
        raise
    if outcome == exports.Outcome.BUSY and busy_checks < MAX_BUSY_CHECKS:
        build_export.apply_async(
            (export_id,), {"busy_checks": busy_checks + 1}, countdown=exports.STALE_AFTER.total_seconds() + 60
        )
    return str(outcome)
