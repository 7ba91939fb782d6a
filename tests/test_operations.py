"""Operations: health and readiness probes, Prometheus metrics, request ids in logs and tasks, JSON logs, Sentry.

In-process tests use the test client (eager Celery). Two tests run real processes: a prefork Celery worker
fed through the filesystem broker by a separate `manage.py shell` (the message path: the request id in the
task's headers, pool processes' metrics on the worker's port), and a process configured with SENTRY_DSN
pointing at a local HTTP server that records what Sentry's SDK sends.
"""

import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from prometheus_client import REGISTRY

from marketplace import celery_app
from marketplace.catalog import services as catalog
from marketplace.commerce import stripe_gateway
from marketplace.commerce.models import Order
from marketplace.core import observability
from marketplace.packs import services as packs
from tests.commerce_helpers import WEBHOOK_SECRET, free_port, intent_event, signed
from tests.conftest import photo_bytes
from tests.process_helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


# --- helpers ------------------------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(("GET", self.path, b""))
        self._answer(404, b"no page here")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.requests.append(("POST", self.path, body))
        self._answer(200, b"{}")

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_recorder():
    """A local HTTP server that records requests (a stand-in for localstripe, and for Sentry)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def filesystem_broker(tmp_path):
    """The app's broker set to a filesystem queue of this test's own (whatever broker the suite runs on)."""
    folders = {name: tmp_path / "broker" / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    options = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
    }
    with broker("filesystem://localhost//", options):
        yield folders


class broker:
    """Point celery_app's reads and writes at another broker for a while (the read and write URLs take
    precedence over CELERY_BROKER_URL, which the environment may set)."""

    def __init__(self, url, transport_options=None):
        self.changes = {"broker_read_url": url, "broker_write_url": url}
        if transport_options is not None:
            self.changes["broker_transport_options"] = transport_options

    def __enter__(self):
        self.before = {key: celery_app.conf.get(key) for key in self.changes}
        celery_app.conf.update(self.changes)

    def __exit__(self, *exc):
        celery_app.conf.update(self.before)


@pytest.fixture
def ready_set_up(settings, media_root, http_recorder, filesystem_broker):
    """Everything readiness checks present: the media folder, a broker, a fake Stripe that answers."""
    media_root.mkdir(parents=True, exist_ok=True)
    settings.PAYMENTS_MODE = "fake"
    settings.STRIPE_API_BASE = http_recorder.url
    settings.READINESS_TIMEOUT_SECONDS = 1.0
    return http_recorder


def sample(name, labels=None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class RecordsWithRequestIds(logging.Handler):
    """Records as a configured handler sees them: through RequestIdFilter."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.addFilter(observability.RequestIdFilter())
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def log_records():
    handler = RecordsWithRequestIds()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler.records
    root.removeHandler(handler)


# --- /healthz and /readyz -------------------------------------------------------------------------------------


def test_healthz_answers_without_the_database_and_for_any_host_over_http(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    # No db fixture: any database access would fail the test. A probe sends the pod's IP as Host.
    response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Content-Type"] == "application/json"
    assert client.get("/", HTTP_HOST="10.1.2.3:8000").status_code == 400  # the host check still holds elsewhere


@pytest.mark.django_db
def test_readyz_is_200_with_each_checks_result_when_all_answer(client, ready_set_up, settings):
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok" and "failed" not in body
    assert set(body["checks"]) == {"database", "broker", "storage", "payments"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["broker"]["detail"] == "filesystem"
    assert body["checks"]["storage"]["detail"] == "local"
    assert ("GET", "/", b"") in ready_set_up.requests  # the fake Stripe was really asked


def failed_checks(client, **headers):
    started = time.monotonic()
    response = client.get("/readyz", **headers)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "unavailable"
    return body, elapsed


@pytest.mark.django_db
def test_readyz_names_an_unreachable_broker(client, ready_set_up):
    with broker("redis://127.0.0.1:1/0"):
        body, elapsed = failed_checks(client)
    assert body["failed"] == ["broker"]
    assert "refused" in body["checks"]["broker"]["error"].lower(), body
    assert elapsed < 5


@pytest.mark.django_db
def test_readyz_names_missing_filesystem_broker_folders(client, ready_set_up, filesystem_broker):
    filesystem_broker["queue"].rmdir()
    body, _ = failed_checks(client)
    assert body["failed"] == ["broker"]
    assert str(filesystem_broker["queue"]) in body["checks"]["broker"]["error"]


@pytest.mark.django_db
def test_readyz_names_missing_media_storage(client, ready_set_up, media_root):
    media_root.rmdir()
    body, _ = failed_checks(client)
    assert body["failed"] == ["storage"]
    assert body["checks"]["storage"]["error"] == f"media folder {media_root} does not exist"


@pytest.mark.django_db
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_readyz_names_unwritable_media_storage(client, ready_set_up, media_root):
    media_root.chmod(0o500)
    try:
        body, _ = failed_checks(client)
    finally:
        media_root.chmod(0o700)
    assert body["failed"] == ["storage"] and "not writable" in body["checks"]["storage"]["error"]


@pytest.mark.django_db
def test_readyz_names_payments_when_the_fake_stripe_is_down(client, ready_set_up, settings):
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    body, elapsed = failed_checks(client)
    assert body["failed"] == ["payments"]
    assert "unreachable" in body["checks"]["payments"]["error"] and "refused" in body["checks"]["payments"]["error"]
    assert elapsed < 5


@pytest.mark.django_db
def test_readyz_gives_up_on_a_dependency_that_hangs_within_the_timeout(client, ready_set_up, settings):
    silent = socket.socket()  # accepts connections (the backlog does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        settings.STRIPE_API_BASE = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings.READINESS_TIMEOUT_SECONDS = 0.5
        body, elapsed = failed_checks(client)
    finally:
        silent.close()
    assert body["failed"] == ["payments"] and "timed out" in body["checks"]["payments"]["error"]
    assert elapsed < 2.5


@pytest.mark.django_db
def test_readyz_tells_only_operators_why(client, ready_set_up, settings):
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"
    body, _ = failed_checks(client, REMOTE_ADDR="203.0.113.9")
    assert body["failed"] == ["payments"]
    assert body["checks"]["payments"] == {"ok": False, "seconds": body["checks"]["payments"]["seconds"]}
    settings.METRICS_TOKEN = "s3cret"
    body, _ = failed_checks(client, REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret")
    assert "refused" in body["checks"]["payments"]["error"]


@pytest.mark.django_db
def test_readyz_in_stripe_mode_checks_the_keys_without_calling_stripe(client, ready_set_up, settings):
    settings.PAYMENTS_MODE = "stripe"
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"  # would fail if it were called
    settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = "sk_live_x", "whsec_x"
    assert client.get("/readyz").status_code == 200
    settings.STRIPE_WEBHOOK_SECRET = ""
    body, _ = failed_checks(client)
    assert body["failed"] == ["payments"] and "not configured" in body["checks"]["payments"]["error"]


# --- /metrics -------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_show_http_requests_and_queue_lengths(client, filesystem_broker):
    assert client.get("/").status_code == 200
    with celery_app.connection_for_write() as connection, connection.SimpleQueue("exports") as queue:
        queue.put({"a": "message"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "django_http_requests_before_middlewares_total" in text
    assert 'django_http_requests_total_by_method_total{method="GET"}' in text
    assert 'celery_queue_length{queue="exports"} 1.0' in text
    for queue in ("celery", "curation", "training"):
        assert f'celery_queue_length{{queue="{queue}"}} 0.0' in text
    assert "celery_broker_up 1.0" in text


def test_metrics_report_a_broker_that_is_down_and_still_answer(client):
    with broker("redis://127.0.0.1:1/0"):
        text = client.get("/metrics").content.decode()
    assert "celery_broker_up 0.0" in text and "celery_queue_length{" not in text


def test_metrics_are_refused_to_others_than_loopback_without_a_token(client, settings):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5").status_code == 403
    # A proxy on the same machine makes every visitor loopback: a forwarded request is not local.
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 403
    assert client.get("/metrics", HTTP_HOST="10.1.2.3:8000").status_code == 200  # Prometheus calls the pod's IP


def test_metrics_with_a_token_need_it(client, settings):
    settings.METRICS_TOKEN = "s3cret"
    settings.METRICS_ALLOWED_NETWORKS = []  # what the settings make of a token without networks
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    allowed = client.get("/metrics", REMOTE_ADDR="10.0.0.5", HTTP_AUTHORIZATION="Bearer s3cret")
    assert allowed.status_code == 200 and b"celery_queue_length" in allowed.content
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5").status_code == 200


def test_an_upload_counts_once_committed(alice, django_capture_on_commit_callbacks, client):
    before = sample("marketplace_uploads_total")

    def upload(photo):
        return catalog.upload_asset(
            owner=alice, uploaded_file=SimpleUploadedFile(f"{photo}.jpg", photo_bytes(photo)), metadata={}
        )

    with django_capture_on_commit_callbacks(execute=False):
        upload("astronaut")  # never committed (the test's transaction is rolled back)
    assert sample("marketplace_uploads_total") == before
    with django_capture_on_commit_callbacks(execute=True):
        upload("coffee")
    assert sample("marketplace_uploads_total") == before + 1
    assert f"marketplace_uploads_total {before + 1}" in client.get("/metrics").content.decode()


@pytest.fixture
def sale_order(client, carol, alice, staff, make_eligible_asset, django_capture_on_commit_callbacks, monkeypatch,
               settings):  # fmt: skip
    """A pending $50 order by carol, through the real checkout (Stripe's API faked as in test_commerce)."""
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET

    def create_payment_intent(**kwargs):
        return stripe_gateway.Intent(
            f"pi_test_{kwargs['order_id']}", "secret", "requires_payment_method", kwargs["amount_cents"], "usd"
        )

    monkeypatch.setattr(stripe_gateway, "create_payment_intent", create_payment_intent)
    monkeypatch.setattr(stripe_gateway, "charge_fee_cents", lambda charge_id: 175)
    make_eligible_asset(alice, "astronaut")
    pack = packs.save_pack(actor=staff, title="Things", slug="things", price_cents=5000, use="commercial")
    with django_capture_on_commit_callbacks(execute=True):
        version = packs.publish_version(pack, actor=staff)
    client.force_login(carol)
    assert client.post(reverse("commerce:checkout", args=[version.pk]), {"agree": "yes"}).status_code == 200
    return Order.objects.get(buyer=carol)


def test_a_fulfilled_sale_counts_once_with_its_amount(client, sale_order, django_capture_on_commit_callbacks):
    labels = {"currency": "usd"}
    sales, amount = sample("marketplace_sales_total", labels), sample("marketplace_sales_amount_cents_total", labels)
    event = intent_event("payment_intent.succeeded", sale_order, event_id="evt_paid")
    for _ in range(2):  # Stripe delivers an event again: fulfilled (and counted) once
        payload, header = signed(event)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                reverse("commerce:stripe-webhook"), payload, content_type="application/json",
                HTTP_STRIPE_SIGNATURE=header,
            )  # fmt: skip
        assert response.status_code == 200
    sale_order.refresh_from_db()
    assert sale_order.status == "paid"
    assert sample("marketplace_sales_total", labels) == sales + 1
    assert sample("marketplace_sales_amount_cents_total", labels) == amount + 5000
    text = client.get("/metrics").content.decode()
    assert f'marketplace_sales_amount_cents_total{{currency="usd"}} {amount + 5000}' in text


@celery_app.task(name="tests.test_operations.fails")
def fails():
    raise LookupError("as it should")


def test_task_durations_and_failures_are_recorded_by_task_name():
    from marketplace.core.tasks import ping

    name, failing = ping.name, fails.name
    runs = sample("celery_task_duration_seconds_count", {"task": name})
    failures = sample("celery_task_failures_total", {"task": failing})
    # apply(), not delay().get(): an eager delay() flips Celery's process-wide "join would block" flag, which
    # eager tasks running at once in other threads (a live server's) can leave set.
    result = ping.apply(args=("metrics",))
    assert result.successful() and result.result == "pong"
    # As a worker runs it: the error recorded, not raised (with task_eager_propagates, as in the other tests,
    # Celery raises it at once and sends no task_failure).
    assert fails.apply(throw=False).failed()
    assert sample("celery_task_duration_seconds_count", {"task": name}) == runs + 1
    assert sample("celery_task_duration_seconds_count", {"task": failing}) >= 1
    assert sample("celery_task_failures_total", {"task": failing}) == failures + 1
    assert sample("celery_task_failures_total", {"task": name}) == 0


# --- request ids ----------------------------------------------------------------------------------------------


def test_a_request_id_is_echoed_or_made(client):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="lb-1234.abc_DEF").headers["X-Request-ID"] == "lb-1234.abc_DEF"
    for bad in ("has spaces", "x" * 201, "semi;colon", ""):
        made = client.get("/healthz", HTTP_X_REQUEST_ID=bad).headers["X-Request-ID"]
        assert made != bad and len(made) == 32 and int(made, 16) >= 0
    first, second = (client.get("/healthz").headers["X-Request-ID"] for _ in range(2))
    assert first != second
    assert observability.current_request_id() is None  # nothing left behind after the response


@pytest.mark.django_db(transaction=True)  # a real commit inside the request, so its task is enqueued there
def test_a_task_enqueued_by_a_request_logs_with_the_requests_id(client, alice, log_records):
    client.force_login(alice)
    response = client.post(
        "/api/assets/", {"file": SimpleUploadedFile("a.jpg", photo_bytes("astronaut"))}, HTTP_X_REQUEST_ID="req-42"
    )
    assert response.status_code == 201, response.content
    assert response.headers["X-Request-ID"] == "req-42"
    in_task = [r for r in log_records if r.name == "celery.app.trace" and "prepare_asset" in r.getMessage()]
    assert in_task and all(r.request_id == "req-42" for r in in_task)  # "Task ... succeeded", logged in the task
    assert observability.current_request_id() is None


def test_a_published_task_carries_the_id_in_its_headers(filesystem_broker):
    """What before_task_publish puts into a message (a worker reading it: the prefork worker test below)."""
    from celery.signals import before_task_publish

    from marketplace.core.tasks import ping

    published = []

    def spy(headers=None, **kwargs):
        published.append(dict(headers))

    before_task_publish.connect(spy)  # after ours: sees what ours added
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        with celery_app.connection_for_write() as connection:
            producer = connection.Producer()
            with observability.request_id_context("pub-7"):
                ping.apply_async(("x",), producer=producer)
            ping.apply_async(("y",), producer=producer)
    finally:
        celery_app.conf.task_always_eager = eager
        before_task_publish.disconnect(spy)
    assert published[0]["request_id"] == "pub-7" and "request_id" not in published[1]
    assert len(list(filesystem_broker["queue"].iterdir())) == 2


def test_an_eager_task_outside_a_request_gets_an_id_of_its_own(log_records):
    from marketplace.core.tasks import ping

    ping.delay("alone")
    (record,) = [r for r in log_records if r.getMessage() == "pong alone"]
    assert len(record.request_id) == 32 and observability.current_request_id() is None


# --- real processes -------------------------------------------------------------------------------------------


def process_env(tmp_path, **extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CACHE_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR", "SENTRY_DSN")
    }
    env.update({"VAR_DIR": str(tmp_path / "var"), "DEBUG": "true", "PYTHONUNBUFFERED": "1", **extra})
    return env


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_a_prefork_worker_logs_the_publishers_request_id_and_serves_its_pool_metrics(tmp_path):
    port = free_port()
    env = process_env(tmp_path, LOG_FORMAT="json", CELERY_METRICS_PORT=str(port))
    for folder in ("queue", "processed", "control"):  # the filesystem broker's, as manage.py would make them
        (tmp_path / "var" / "celery" / folder).mkdir(parents=True)
    log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--pool=prefork", "--concurrency=2",
         "-Q", "celery", "--without-mingle", "--without-gossip", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:

        def scrape():
            try:
                return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.ConnectionError:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                return None

        wait_for(scrape, timeout=60, what="the worker's metrics port")
        # The publisher: another process, as the web server would be, inside a request's id. It shares the
        # worker's environment (one configuration for every process) and stays out of the worker's metrics mode.
        script = (
            "import os\n"
            "assert 'PROMETHEUS_MULTIPROC_DIR' not in os.environ, 'not a worker: no metrics folder of its own'\n"
            "from marketplace.core.observability import request_id_context\n"
            "from marketplace.core.tasks import ping\n"
            "with request_id_context('web-req-9'):\n"
            "    ping.delay('from the web')\n"
        )
        publisher = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", script],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert publisher.returncode == 0, publisher.stderr

        def pong():
            lines = json_lines((tmp_path / "worker.log").read_text())
            return [line for line in lines if line.get("message") == "pong from the web"]

        (line,) = wait_for(pong, timeout=60, what="the task's log line")
        assert (
            line["request_id"] == "web-req-9" and line["level"] == "INFO" and line["name"] == "marketplace.core.tasks"
        )
        # Counted in a pool process, served by the main one.
        assert line["process"] != worker.pid
        task = 'task="marketplace.core.tasks.ping"'

        def counted():
            text = scrape()
            return text if text and f"celery_task_duration_seconds_count{{{task}}} 1.0" in text else None

        text = wait_for(counted, timeout=30, what="the task's duration on the worker's metrics port")
        assert f"celery_task_failures_total{{{task}}}" not in text
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()


@pytest.fixture(scope="module")
def failing_process(tmp_path_factory):
    """A process set up like production with SENTRY_DSN and JSON logs, whose request fails."""
    tmp_path = tmp_path_factory.mktemp("sentry")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    dsn = f"http://public@127.0.0.1:{server.server_address[1]}/42"
    script = (
        "import types, sentry_sdk\n"
        "urls = types.ModuleType('failing_urls')\n"
        "from django.test import Client, override_settings\n"
        "from django.urls import path\n"
        "def fails(request):\n"
        "    raise ZeroDivisionError('failing on purpose')\n"
        "urls.urlpatterns = [path('fails', fails)]\n"
        "with override_settings(ROOT_URLCONF=urls):\n"
        "    response = Client(raise_request_exception=False).get('/fails', HTTP_HOST='localhost',\n"
        "                                                         HTTP_X_REQUEST_ID='sentry-req-1')\n"
        "print('status', response.status_code)\n"
        "sentry_sdk.flush(10)\n"
    )
    env = process_env(tmp_path, SENTRY_DSN=dsn, SENTRY_ENVIRONMENT="test", LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    server.shutdown()
    server.server_close()
    assert done.returncode == 0, done.stderr
    return done, server.requests


def test_an_exception_reaches_sentry_tagged_with_the_request_id(failing_process):
    done, received = failing_process
    assert "status 500" in done.stdout
    envelopes = [body for method, path, body in received if method == "POST" and path == "/api/42/envelope/"]
    assert envelopes, received
    events = [json.loads(line) for body in envelopes for line in body.splitlines() if line.startswith(b"{")]
    errors = [e for e in events if e.get("exception")]
    assert errors, events
    (error,) = [e for e in errors if e["exception"]["values"][-1]["type"] == "ZeroDivisionError"]
    assert error["environment"] == "test"
    assert error["tags"]["request_id"] == "sentry-req-1"
    assert "user" not in error or not error["user"].get("ip_address")  # send_default_pii=False


def test_log_lines_are_json_with_message_level_and_request_id(failing_process):
    done, _ = failing_process
    lines = json_lines(done.stderr)
    assert lines, done.stderr
    (line,) = [line for line in lines if line.get("message") == "Internal Server Error: /fails"]
    assert line["level"] == "ERROR" and line["name"] == "django.request" and line["request_id"] == "sentry-req-1"
    assert "ZeroDivisionError: failing on purpose" in line["exc_info"] and line["time"]
