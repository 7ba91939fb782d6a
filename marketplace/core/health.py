"""Readiness: can this process serve? Database, broker, media storage and payments, each checked for real.

The checks run side by side, each in a thread of its own, and the answer comes within
READINESS_TIMEOUT_SECONDS whatever hangs: a check still waiting by then counts as failed.
"""

import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages
from django.db import connections

logger = logging.getLogger(__name__)

STORAGE_PROBE_KEY = "readyz-probe"


class CheckFailed(Exception):
    """A check's finding, in words for an operator."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    seconds: float
    error: str = ""
    detail: str = ""


def check_database(timeout: float) -> str:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread's own connection: it goes when the thread does
    return connection.vendor


@contextmanager
def broker_connection(timeout: float, *, write: bool = False):
    """The Celery app's broker connection, connected in one try of at most `timeout` seconds (no retries:
    a probe or a scrape reports a broker that is down instead of waiting for it), released on exit."""
    from marketplace import celery_app

    connect = celery_app.connection_for_write if write else celery_app.connection_for_read
    with connect() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        yield connection


def check_broker(timeout: float) -> str:
    with broker_connection(timeout, write=True) as connection:
        if connection.transport_cls == "filesystem":
            # Connecting proves nothing there: the broker is its folders, and kombu does not create them.
            options = connection.transport_options
            folders = {v for k, v in options.items() if k.endswith(("_folder", "_folder_in", "_folder_out")) and v}
            bad = sorted(f for f in folders if not (os.path.isdir(f) and os.access(f, os.W_OK | os.X_OK)))
            if bad:
                raise CheckFailed(f"filesystem broker folder missing or not writable: {', '.join(bad)}")
        return connection.transport_cls


def check_storage(timeout: float) -> str:
    storage = storages["default"]
    if isinstance(storage, FileSystemStorage):
        # exists() on a missing folder is just False, and the first upload would create it: on a volume that
        # is not mounted, that would be the container's own disk.
        location = storage.location
        if not os.path.isdir(location):
            raise CheckFailed(f"media folder {location} does not exist")
        if not os.access(location, os.W_OK | os.X_OK):
            raise CheckFailed(f"media folder {location} is not writable")
        return "local"
    storage.exists(STORAGE_PROBE_KEY)  # a round trip to the bucket with our credentials
    return type(storage).__name__


def check_payments(timeout: float) -> str:
    if settings.PAYMENTS_MODE == "fake":
        url = settings.STRIPE_API_BASE.rstrip("/") + "/"
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # it answered: localstripe has no page at its root
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise CheckFailed(f"fake Stripe at {url} unreachable: {reason}") from None
        return f"fake Stripe at {url}"
    # Stripe itself is not called: its outage is every pod's at once, and taking them all out of the load
    # balancer would stop browsing and downloads too. Checkout reports it to the buyer instead.
    secret, webhook = settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET
    if not secret.startswith(("sk_", "rk_")) or not webhook.startswith("whsec_"):
        raise CheckFailed("Stripe keys are not configured (STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET)")
    return "Stripe keys configured (Stripe is not called by probes)"


CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "payments": check_payments,
}


def _run(check, timeout: float) -> CheckResult:
    started = time.monotonic()
    try:
        detail = check(timeout)
    except Exception as error:
        message = str(error) or type(error).__name__
        if not isinstance(error, CheckFailed):
            message = f"{type(error).__name__}: {message}"
        return CheckResult(False, time.monotonic() - started, error=message[:500])
    return CheckResult(True, time.monotonic() - started, detail=str(detail))


def readiness(timeout: float | None = None) -> dict[str, CheckResult]:
    """Every check's result, within about `timeout` seconds (READINESS_TIMEOUT_SECONDS)."""
    timeout = settings.READINESS_TIMEOUT_SECONDS if timeout is None else timeout
    executor = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readyz")
    futures = {name: executor.submit(_run, check, timeout) for name, check in CHECKS.items()}
    # A little beyond the checks' own timeouts, so that their errors (which say more) come first.
    deadline = time.monotonic() + timeout + 0.5
    results = {}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            results[name] = CheckResult(False, timeout, error=f"no answer within {timeout:g} s")
    executor.shutdown(wait=False, cancel_futures=True)  # a hung check's thread ends when its call does
    failed = {name: r.error for name, r in results.items() if not r.ok}
    if failed:
        logger.warning("Not ready: %s", "; ".join(f"{name}: {error}" for name, error in failed.items()))
    return results
