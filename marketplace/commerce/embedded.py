"""The embedded set-up's Stripe: start our extended localstripe and register the webhook with it."""

import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# localstripe sends only the events registered: the ones we act on.
from marketplace.commerce.services import HANDLED_EVENTS as WEBHOOK_EVENTS


def start_localstripe(url: str, *, data_file: Path, cwd: Path, env: dict) -> subprocess.Popen:
    port = urllib.parse.urlsplit(url).port or 8420
    command = [sys.executable, "-m", "marketplace.commerce.localstripe_server", "--port", str(port)]
    command += ["--data-file", str(data_file)]
    return subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True)


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/js.stripe.com/v3/", timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"localstripe did not answer at {url}") from None
            time.sleep(0.3)


def register_webhook(url: str, *, webhook_url: str, secret: str) -> None:
    """localstripe keeps webhooks in memory: register ours each time it starts."""
    fields = [("url", webhook_url), ("secret", secret)] + [("events[]", event) for event in WEBHOOK_EVENTS]
    request = urllib.request.Request(
        f"{url}/_config/webhooks/marketplace", data=urllib.parse.urlencode(fields).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=10).close()
