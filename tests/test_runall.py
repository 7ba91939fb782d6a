"""`make run`'s last step for real: web server and Celery worker as separate processes.

An image uploaded over HTTP is processed by the worker through the configured broker
(the filesystem broker by default, Redis when CELERY_BROKER_URL says so), and Ctrl-C
stops both processes cleanly.
"""

import signal
import subprocess
import sys

import pytest
import requests

from tests import process_helpers
from tests.conftest import photo_bytes
from tests.process_helpers import ROOT, free_port, wait_for


@pytest.fixture
def marketplace_env(tmp_path, demo_base_model_folder):
    # No curation here: its default model would be fetched from the hub (tests never touch the network).
    # The demo's tiny Stable Diffusion is the test run's (built once), not rebuilt in this var/.
    env = process_helpers.marketplace_env(
        tmp_path / "var", CURATION_ANALYSE_ON_READY="0", TRAINING_DEMO_BASE_MODEL=str(demo_base_model_folder)
    )
    for args in (["migrate", "--noinput", "-v", "0"], ["seed_demo"]):
        process_helpers.manage(env, *args)
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
