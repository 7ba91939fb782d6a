"""`make run`'s last step for real: web server and Celery worker as separate processes.

An image uploaded over HTTP is processed by the worker through the configured broker
(the filesystem broker by default, Redis when CELERY_BROKER_URL says so), and Ctrl-C
stops both processes cleanly.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import photo_bytes

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=60, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError("timed out")


@pytest.fixture
def marketplace_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CACHE_URL")}
    # No curation here: its default model would be fetched from the hub (tests never touch the network).
    env.update(
        {"VAR_DIR": str(tmp_path / "var"), "DEBUG": "true", "PYTHONUNBUFFERED": "1", "CURATION_ANALYSE_ON_READY": "0"}
    )
    env["LOCALSTRIPE_URL"] = f"http://127.0.0.1:{free_port()}"  # not 8420: `make run` may be using it
    if env.get("CELERY_BROKER_URL", "").startswith("redis://"):
        env["CELERY_BROKER_URL"] = env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + "/9"  # a queue of its own
    manage = [sys.executable, "manage.py"]
    for args in (["migrate", "--noinput", "-v", "0"], ["seed_demo"]):
        subprocess.run(manage + args, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    return env


def test_web_and_worker_process_an_upload_and_stop_on_ctrl_c(marketplace_env, tmp_path):
    port = free_port()
    log = open(tmp_path / "runall.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runall", "--addr", f"127.0.0.1:{port}", "--concurrency", "1"],
        cwd=ROOT, env=marketplace_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base))
        token = requests.post(
            f"{base}/api/auth/token/", data={"username": "creator", "password": "creator-demo-pass"}, timeout=10
        ).json()["token"]
        headers = {"Authorization": f"Token {token}"}
        created = requests.post(
            f"{base}/api/assets/", headers=headers, timeout=30,
            files={"file": ("fresh.jpg", photo_bytes("motorcycle", min_short_side=700))},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "processing"
        detail_url = f"{base}/api/assets/{created.json()['id']}/"
        ready = wait_for(lambda: _status(detail_url, headers) == "ready" and _status(detail_url, headers))
        assert ready == "ready"
        # The embedded fake Stripe runs beside them, serving Stripe.js to the checkout page.
        stripe_js = requests.get(marketplace_env["LOCALSTRIPE_URL"] + "/js.stripe.com/v3/", timeout=10)
        assert stripe_js.status_code == 200 and "confirmCardPayment" in stripe_js.text
    finally:
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=60)
        log.seek(0)
        output = log.read()
    assert returncode == 0, output
    assert "Stopped." in output
    assert "succeeded" in output  # the worker, not the web process, ran the task
    assert not _answers(base)
    assert not _answers(marketplace_env["LOCALSTRIPE_URL"] + "/js.stripe.com/v3")


def _answers(base) -> bool:
    try:
        return requests.get(base + "/", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _status(url, headers) -> str:
    return requests.get(url, headers=headers, timeout=10).json()["status"]
