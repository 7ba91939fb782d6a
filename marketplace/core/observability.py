"""Logs, request ids, Sentry, and the Celery worker's side of metrics.

Every web request gets an id (the caller's X-Request-ID when it is a sensible one, else a fresh one),
returned in the X-Request-ID response header and put on every log record (RequestIdFilter). Tasks the
request enqueues carry it in a message header and their log records carry it too; a task started
with no id (by beat, say) gets one of its own, passed on to the tasks it enqueues.

marketplace/celery.py calls prepare_worker_metrics() (in the `celery` command only) and
connect_celery_signals() when it is imported, before the Celery app (and anything that imports
prometheus_client) exists. This module must therefore not import prometheus_client, nor anything that
does, at import time.
"""

import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from contextvars import ContextVar

from celery import signals
from django.core.signals import request_finished

from marketplace.env import env_int, env_str

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
TASK_HEADER = "request_id"  # the task message header that carries it
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def valid_request_id(value) -> str | None:
    """The id if it is one we accept (1 to 200 of A-Z a-z 0-9 . _ -): it goes into logs and headers."""
    return value if isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def request_id_context(value: str | None):
    token = _request_id.set(value)
    try:
        yield value
    finally:
        _request_id.reset(token)


class RequestIdMiddleware:
    """Sets the request id for everything the request does; answers it in X-Request-ID.

    The id stays set until the response is closed (request_finished), not just until this middleware
    returns: Django logs a 4xx or 5xx response (django.request) after the middleware, and a streaming
    response runs its code later still."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        request.request_id = request_id
        _request_id.set(request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def _forget_request_id(**kwargs) -> None:
    _request_id.set(None)


request_finished.connect(_forget_request_id, dispatch_uid="marketplace-request-id-finished")


class RequestIdFilter(logging.Filter):
    """Puts `request_id` on every record that goes through the handler: the current request's or task's
    id, "-" outside both."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        return True


# --- the id in tasks --------------------------------------------------------------------------------------------


def _add_request_id_to_message(headers=None, **kwargs) -> None:
    """before_task_publish: the publishing request's (or task's) id goes into the message's headers.
    Not sent for eager tasks, which run in the caller's context and see its id directly."""
    request_id = _request_id.get()
    if request_id and headers is not None:
        headers.setdefault(TASK_HEADER, request_id)


_task_tokens: dict = {}


def _request_id_of(request) -> str | None:
    # A worker's task request has the message's custom headers as attributes (and in .headers).
    headers = getattr(request, "headers", None) or {}
    return valid_request_id(getattr(request, TASK_HEADER, None)) or valid_request_id(headers.get(TASK_HEADER))


def _task_started(task_id=None, task=None, **kwargs) -> None:
    request = getattr(task, "request", None)
    request_id = _request_id_of(request) if request is not None else None
    if request_id is None and getattr(request, "is_eager", False):
        request_id = _request_id.get()  # eager: the caller's id, no message in between
    _task_tokens[task_id] = _request_id.set(request_id or new_request_id())


def _task_finished(task_id=None, **kwargs) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is None:
        return
    try:
        _request_id.reset(token)  # an eager task hands the caller its id back
    except ValueError:  # set in another context: nothing of the caller's to restore
        _request_id.set(None)


# --- the worker process ---------------------------------------------------------------------------------------


def prepare_worker_metrics() -> None:
    """A worker started with CELERY_METRICS_PORT serves its metrics on that port, from its main process,
    while its tasks run in the pool's child processes (prefork), each with memory of its own. So the
    children write their samples to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess
    mode) and the main process adds them up when scraped. Without that folder given, a fresh one of its
    own is made (the folder must be empty when the worker starts), and removed when the worker exits.

    Runs before prometheus_client is imported: it picks its mode once, when first imported."""
    if not env_int("CELERY_METRICS_PORT", 0) or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    if "prometheus_client" in sys.modules:
        logger.warning(
            "prometheus_client was imported before the worker set PROMETHEUS_MULTIPROC_DIR: the pool processes' "
            "task metrics will not reach CELERY_METRICS_PORT. Set PROMETHEUS_MULTIPROC_DIR in the environment."
        )
        return
    folder = tempfile.mkdtemp(prefix="celery-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    atexit.register(_remove_metrics_dir, folder, os.getpid())


def _remove_metrics_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not a forked child exiting
        shutil.rmtree(path, ignore_errors=True)


def _serve_worker_metrics(**kwargs) -> None:
    """worker_ready (main process only): serve every pool process's metrics on CELERY_METRICS_PORT."""
    port = env_int("CELERY_METRICS_PORT", 0)
    if not port:
        return
    from prometheus_client import start_http_server

    from marketplace.core.metrics import PROCESS_REGISTRY

    address = env_str("CELERY_METRICS_ADDR", "0.0.0.0")
    start_http_server(port, addr=address, registry=PROCESS_REGISTRY)
    logger.info("Worker metrics on http://%s:%s/metrics", address, port)


def _worker_logging(**kwargs) -> None:
    """setup_logging: a worker (and beat) logs as the web does, through settings.LOGGING (LOG_FORMAT,
    LOG_LEVEL, request ids), instead of Celery's own handlers on the root logger; --loglevel is unused."""
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)


def connect_celery_signals() -> None:
    from marketplace.core import metrics

    signals.before_task_publish.connect(_add_request_id_to_message, dispatch_uid="marketplace-request-id-publish")
    signals.task_prerun.connect(_task_started, dispatch_uid="marketplace-request-id-task-started")
    signals.task_postrun.connect(_task_finished, dispatch_uid="marketplace-request-id-task-finished")
    signals.setup_logging.connect(_worker_logging, dispatch_uid="marketplace-worker-logging")
    signals.worker_ready.connect(_serve_worker_metrics, dispatch_uid="marketplace-worker-metrics")
    metrics.connect_task_signals()


# --- Sentry -------------------------------------------------------------------------------------------------


def _add_request_id_to_event(event, hint):
    request_id = _request_id.get()
    if request_id:
        event.setdefault("tags", {})["request_id"] = request_id
    return event


def init_sentry(*, dsn: str, environment: str, release: str = "", traces_sample_rate: float = 0.0) -> None:
    """Errors (and, when sampled, traces) of the web and the worker go to Sentry. No personal data: no
    user ids, cookies or request bodies. Events are tagged with the request id."""
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        environment=environment or None,
        release=release or None,
        traces_sample_rate=traces_sample_rate,
        send_default_pii=False,
        before_send=_add_request_id_to_event,
    )
