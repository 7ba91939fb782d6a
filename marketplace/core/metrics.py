"""Every Prometheus metric of our own, in one place (django-prometheus adds the HTTP, database and cache ones).

Web processes expose them at /metrics (marketplace.core.views.metrics); a Celery worker started with
CELERY_METRICS_PORT serves its own on that port (marketplace.core.observability). Processes that fork
(a prefork worker, several gunicorn workers) share their samples through prometheus_client's multiprocess
mode: each process writes them to files in PROMETHEUS_MULTIPROC_DIR and the one that is scraped adds them up.
"""

import logging
import os
import time

from celery import signals
from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from marketplace.core.health import broker_connection

logger = logging.getLogger(__name__)

# --- business -------------------------------------------------------------------------------------------------

UPLOADS = Counter("marketplace_uploads", "Images uploaded by creators (assets created).")
SALES = Counter("marketplace_sales", "Orders fulfilled (paid, licence granted).", ["currency"])
SALES_AMOUNT = Counter(
    "marketplace_sales_amount_cents", "What fulfilled orders were paid, in the currency's cents.", ["currency"]
)


def record_upload() -> None:
    UPLOADS.inc()


def record_sale(currency: str, amount_cents: int) -> None:
    SALES.labels(currency=currency).inc()
    SALES_AMOUNT.labels(currency=currency).inc(amount_cents)


# --- Celery tasks (recorded where they run: the worker's pool processes, or in-process when eager) ----------------

# From a thumbnail (well under a second) to a training run (hours).
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, float("inf"))
TASK_DURATION = Histogram(
    "celery_task_duration_seconds", "How long tasks ran, retries and failures included.", ["task"], buckets=TASK_BUCKETS
)
TASK_FAILURES = Counter("celery_task_failures", "Tasks that raised (a retry is not a failure).", ["task"])

_started: dict[str, float] = {}


def _task_started(task_id=None, **kwargs) -> None:
    _started[task_id] = time.monotonic()


def _task_finished(task_id=None, task=None, **kwargs) -> None:
    started = _started.pop(task_id, None)
    if started is not None and task is not None:
        TASK_DURATION.labels(task=task.name).observe(time.monotonic() - started)


def _task_failed(sender=None, **kwargs) -> None:
    TASK_FAILURES.labels(task=getattr(sender, "name", "unknown")).inc()


def connect_task_signals() -> None:
    signals.task_prerun.connect(_task_started, dispatch_uid="marketplace-metrics-task-started")
    signals.task_postrun.connect(_task_finished, dispatch_uid="marketplace-metrics-task-finished")
    signals.task_failure.connect(_task_failed, dispatch_uid="marketplace-metrics-task-failed")


# --- queue lengths, read from the broker when scraped ---------------------------------------------------------


def queue_lengths(timeout: float = 2.0) -> dict[str, int]:
    """Messages waiting in each of settings.WORKER_QUEUES. kombu's virtual transports count them themselves
    (Redis: the LLEN of the queue's lists, one per priority step; the filesystem broker: the queue's message
    files); AMQP answers a passive queue declaration."""
    lengths = {}
    with broker_connection(timeout) as connection:
        channel = connection.default_channel
        size = getattr(channel, "_size", None)
        for name in settings.WORKER_QUEUES:
            if size is not None:
                lengths[name] = int(size(name))
                continue
            try:
                lengths[name] = channel.queue_declare(queue=name, passive=True).message_count
            except connection.channel_errors:
                lengths[name] = 0  # not declared yet: nothing waiting
                channel = connection.channel()  # the broker closed the channel
    return lengths


class CeleryQueueCollector:
    """celery_queue_length{queue} and celery_broker_up, from the broker at each scrape."""

    def describe(self):
        return []  # collected at scrape time only: nothing to read from the broker when registered

    def collect(self):
        length = GaugeMetricFamily(
            "celery_queue_length", "Messages waiting in a Celery queue, read from the broker.", labels=["queue"]
        )
        up = GaugeMetricFamily("celery_broker_up", "1 if the broker answered this scrape's queue-length reads.")
        try:
            lengths = queue_lengths()
        except Exception as error:  # a scrape must still answer: the broker being down is the news
            logger.warning("Could not read the Celery queue lengths: %s", error)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for name, count in lengths.items():
                length.add_metric([name], count)
        yield length
        yield up


# --- exposition ---------------------------------------------------------------------------------------------


def _process_registry() -> CollectorRegistry:
    """This process's metrics, or all processes' when they share PROMETHEUS_MULTIPROC_DIR (the collector
    reads the folder's files at each scrape). prometheus_client chose its mode from the same variable when
    first imported, before this module."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


# What /metrics and the worker's metrics port serve.
PROCESS_REGISTRY = _process_registry()
# Apart from it: read from the broker once per scrape, by whoever is scraped, never summed over processes.
# Registering reads nothing (describe() is empty).
QUEUE_REGISTRY = CollectorRegistry(auto_describe=False)
QUEUE_REGISTRY.register(CeleryQueueCollector())


def render_web_metrics() -> bytes:
    """The /metrics page: the process metrics, then the queue lengths."""
    return generate_latest(PROCESS_REGISTRY) + generate_latest(QUEUE_REGISTRY)
