"""Production smoke test (`make smoke`): the deployed shape of the product, driven over HTTP only.

gunicorn with DEBUG off, one Celery worker per queue (default, curation, exports, training), PostgreSQL,
Redis as broker and cache, media on an S3 API server (moto's, a separate process), and the fake Stripe,
all on loopback and configured only from the environment. A creator signs up and uploads real photos
through the API; the curation worker analyses them with a tiny CLIP given as CURATION_CLIP_PRETRAINED (the
path an offline site uses); staff build and publish a pack in the staff pages; a buyer pays with a test
card, the fake Stripe's signed webhook fulfils the order, and the buyer downloads the files through
presigned S3 redirects, each checked against the manifest's SHA-256.
"""

import hashlib
import json
import re
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.smoke.stack import QUEUES, ROOT, Stack, answers

pytestmark = pytest.mark.skipif(
    not (answers(5432) and answers(6379)), reason="the smoke test needs PostgreSQL on :5432 and Redis on :6379"
)

PHOTOS = (("astronaut", "Astronaut portrait"), ("coffee", "Morning coffee"), ("rocket", "Rocket on the launch pad"))
PASSWORD = "smoke-test-pass-9271"


@pytest.fixture(scope="module")
def tiny_clip_env(tmp_path_factory):
    """The tiny CLIP trained on the demo photos, handed to the workers as an offline site hands its own."""
    from marketplace.core.photos import PHOTOS as DEMO_PHOTOS
    from marketplace.core.photos import load_photo
    from marketplace.curation.engine.demo_model import PHOTO_CLIP, train_photo_clip

    checkpoint = train_photo_clip(tmp_path_factory.mktemp("smoke-models"), [load_photo(n) for n in DEMO_PHOTOS])
    return {"CURATION_CLIP_MODEL": PHOTO_CLIP, "CURATION_CLIP_PRETRAINED": str(checkpoint)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_clip_env):
    import boto3

    from marketplace.commerce import embedded

    stack = Stack(tmp_path_factory.mktemp("smoke"), tiny_clip_env)
    stack.create_database()
    stack.flush_redis()
    try:
        stack.start(
            "s3", [str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", stack.s3_url.rsplit(":", 1)[1]]
        )
        stack.wait_for("s3", stack.s3_url)
        boto3.client(
            "s3", endpoint_url=stack.s3_url, region_name="us-east-1",
            aws_access_key_id="smoke-key", aws_secret_access_key="smoke-secret",
        ).create_bucket(Bucket=stack.bucket)  # fmt: skip
        stack.processes["stripe"] = embedded.start_localstripe(
            stack.stripe_url, data_file=stack.folder / "localstripe.pickle", cwd=ROOT, env=stack.env
        )
        stack.processes["stripe"].log_file = open(stack.logs / "stripe.log", "wb")  # noqa: SIM115
        embedded.wait_until_up(stack.stripe_url)
        embedded.register_webhook(
            stack.stripe_url, webhook_url=f"{stack.web_url}/stripe/webhook/", secret=stack.env["STRIPE_WEBHOOK_SECRET"]
        )

        stack.manage("migrate", "--noinput")
        stack.manage("collectstatic", "--noinput")
        stack.env.update(DJANGO_SUPERUSER_PASSWORD=PASSWORD)
        stack.manage("createsuperuser", "--noinput", "--username", "sam", "--email", "sam@example.com")

        port = stack.web_url.rsplit(":", 1)[1]
        # Two gunicorn workers add up their metrics through files in a folder of the web's own, empty at start.
        web_metrics = stack.folder / "web-metrics"
        web_metrics.mkdir()
        stack.start(
            "web",
            [PYTHON_GUNICORN, "marketplace.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--timeout", "120", "--access-logfile", "-"],
            PROMETHEUS_MULTIPROC_DIR=str(web_metrics),
        )  # fmt: skip
        for queue in QUEUES:
            stack.start(
                f"worker-{queue}",
                [str(ROOT / ".venv/bin/python"), "-m", "celery", "-A", "marketplace", "worker", "-Q", queue,
                 "-n", f"{queue}@smoke", "--concurrency", "1", "--loglevel", "INFO"],
            )  # fmt: skip
        stack.wait_for("web", f"{stack.web_url}/")
        yield stack
    finally:
        stack.stop()
        stack.drop_database()
        stack.flush_redis()


PYTHON_GUNICORN = str(ROOT / ".venv/bin/gunicorn")


class Browser(requests.Session):
    """A user's session against the site: keeps cookies, sends the CSRF token as the site's forms do.

    The site marks its cookies Secure (DEBUG is off); TLS ends at the load balancer, which this test
    plays, so the cookies are sent over the loopback's plain HTTP as the balancer would forward them."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base

    def request(self, *args, **kwargs):
        for cookie in self.cookies:
            cookie.secure = False
        return super().request(*args, **kwargs)

    def page(self, path: str) -> requests.Response:
        response = self.get(self.base + path, timeout=30)
        assert response.status_code == 200, f"GET {path}: {response.status_code}\n{response.text[:2000]}"
        return response

    def submit(self, path: str, fields: dict, *, form_page: str | None = None) -> requests.Response:
        """POST a form the way a browser does after loading its page (CSRF cookie and hidden field)."""
        self.page(form_page or path)
        token = self.cookies.get("csrftoken")
        return self.post(
            self.base + path,
            data={**fields, "csrfmiddlewaretoken": token},
            headers={"Referer": self.base + (form_page or path)},
            allow_redirects=False,
            timeout=60,
        )


def sign_up(stack: Stack, username: str, **roles) -> Browser:
    """Sign up as a person does: the form, the confirmation mail (the console email backend prints it into the web
    log), and the mailed link's page, where the password is chosen. Returns the session, logged in."""
    user = Browser(stack.web_url)
    email = f"{username}@example.com"
    response = user.submit("/accounts/signup/", {"username": username, "email": email, **dict.fromkeys(roles, "on")})
    assert response.status_code == 302, response.text[:2000]
    assert "Check your email" in user.page(response.headers["Location"]).text
    link = eventually(
        lambda: confirmation_link(stack.log_text("web"), email), timeout=10, what=f"the mail to {email}", stack=stack
    )
    assert "Create my account" in user.page(link).text
    response = user.submit(link, {"password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302, response.text[:2000]
    account = user.page("/accounts/me/")  # logged in as the new account, not sent to the log-in page
    assert account.url.endswith("/accounts/me/") and f"{username} · {email}" in account.text
    return user


def confirmation_link(web_log: str, email: str) -> str | None:
    """The path of the sign-up link mailed to `email`, from the mails the console backend printed (each ends with a
    line of 79 dashes; the access log's lines between them hold such links too, as Referer, never on a line alone)."""
    for mail in reversed(web_log.split("-" * 79)):
        found = re.search(r"^https?://[^/\s]+(/accounts/signup/confirm/[\w.:-]+/)$", mail, re.MULTILINE)
        if found and re.search(rf"^To: {re.escape(email)}$", mail, re.MULTILINE):
            return found.group(1)
    return None


def log_in(base: str, username: str) -> Browser:
    user = Browser(base)
    response = user.submit("/accounts/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.text[:2000]
    return user


def api_token(base: str, username: str) -> dict:
    response = requests.post(f"{base}/api/auth/token/", data={"username": username, "password": PASSWORD}, timeout=30)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Token {response.json()['token']}"}


def eventually(check, *, timeout: float, what: str, stack: Stack):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{stack.all_log_tails()}")
        time.sleep(1)


def test_upload_curate_publish_buy_and_download_on_the_production_stack(stack):
    from marketplace.core.management.commands.seed_demo import demo_jpeg

    base = stack.web_url
    stack.manage("check", "--deploy")  # the running configuration, as the operator would check it
    # The load balancer's probes: alive, and ready because PostgreSQL, Redis, S3 and the payments API answer.
    assert requests.get(f"{base}/healthz", timeout=30).status_code == 200
    ready = requests.get(f"{base}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text
    assert set(ready.json()["checks"]) == {"database", "broker", "storage", "payments"}

    # A creator signs up in the browser pages and uploads real photos through the API.
    alice_pages = sign_up(stack, "alice", is_creator=True)
    alice = api_token(base, "alice")
    asset_ids = []
    for photo, title in PHOTOS:
        response = requests.post(
            f"{base}/api/assets/",
            headers=alice,
            files={"file": (f"{photo}.jpg", demo_jpeg(photo, with_gps=False), "image/jpeg")},
            data={"title": title, "licence": "mkt-ai-commercial-1.0", "ai_training_consent": "true"},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        asset_ids.append(response.json()["id"])

    def all_ready():
        states = [requests.get(f"{base}/api/assets/{pk}/", headers=alice, timeout=30).json() for pk in asset_ids]
        failed = [s for s in states if s["status"] == "failed"]
        assert not failed, failed
        return all(s["status"] == "ready" for s in states) and states

    states = eventually(all_ready, timeout=120, what="uploads processed by the default worker", stack=stack)
    thumbnail = alice_pages.page(states[0]["files"]["thumbnail"])
    assert thumbnail.headers["Content-Type"] == "image/jpeg" and thumbnail.content[:3] == b"\xff\xd8\xff"  # from S3

    # Staff build a pack once curation has analysed every photo, and publish it.
    staff = log_in(base, "sam")
    created = staff.submit(
        "/staff/packs/new/",
        {"title": "Smoke pack", "slug": "smoke-pack", "description": "Three photos.", "use": "commercial",
         "price": "25.00", "is_listed": "on"},
    )  # fmt: skip
    assert created.status_code == 302, created.text[:3000]
    pack_path = urlparse(created.headers["Location"]).path

    def selection_complete():
        html = staff.page(pack_path).text
        return sorted(map(int, re.findall(r'data-asset-id="(\d+)"', html))) == sorted(asset_ids)

    eventually(selection_complete, timeout=240, what="the curation worker analysed every upload", stack=stack)
    published = staff.submit(f"{pack_path}publish/", {}, form_page=pack_path)
    assert published.status_code == 302 and urlparse(published.headers["Location"]).path == "/packs/smoke-pack/v1/"

    # A buyer pays with a test card through the fake Stripe, as Stripe.js does it.
    carol = sign_up(stack, "carol", is_buyer=True)
    version_page = carol.page("/packs/smoke-pack/v1/").text
    checkout_path = re.search(r'href="(/buy/\d+/)"', version_page).group(1)
    carol.page(checkout_path)
    started = carol.post(
        base + checkout_path,
        data={"agree": "yes"},
        headers={"X-CSRFToken": carol.cookies.get("csrftoken"), "Referer": base + checkout_path},
        timeout=60,
    )
    assert started.status_code == 200, started.text
    client_secret, order_url = started.json()["client_secret"], started.json()["order_url"]
    publishable = re.search(r"pk_test_\w+", carol.page(checkout_path).text).group(0)
    method = requests.post(
        f"{stack.stripe_url}/v1/payment_methods",
        params={"key": publishable},
        data={"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "12", "card[exp_year]": "34",
              "card[cvc]": "123"},
        timeout=30,
    ).json()  # fmt: skip
    intent_id = client_secret.split("_secret_")[0]
    confirmed = requests.post(
        f"{stack.stripe_url}/v1/payment_intents/{intent_id}/confirm",
        params={"key": publishable},
        data={"payment_method": method["id"], "client_secret": client_secret},
        timeout=30,
    )
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text

    def paid():
        status = carol.page(f"{order_url}status/").json()
        assert status["status"] != "failed", status
        return status["status"] == "paid" and status["licence_url"]

    eventually(paid, timeout=60, what="the signed webhook fulfilled the order", stack=stack)

    # The buyer's script lists the licence and downloads every file through a presigned S3 redirect.
    token = api_token(base, "carol")
    licence = requests.get(f"{base}/api/pack-licences/", headers=token, timeout=30).json()["results"][0]

    def exports_ready():
        rows = requests.get(licence["downloads_url"], headers=token, timeout=30).json()
        assert not [row for row in rows if row["status"] == "failed"], rows
        return rows and all(row["status"] == "ready" and row["files"] for row in rows) and rows

    rows = eventually(exports_ready, timeout=180, what="the exports worker built the downloads", stack=stack)
    manifest = None
    for row in rows:
        for listed in row["files"]:
            redirect = requests.get(listed["url"], allow_redirects=False, timeout=30)
            assert redirect.status_code == 302, (listed, redirect.status_code, redirect.text[:500])
            location = redirect.headers["Location"]
            assert location.startswith(f"{stack.s3_url}/{stack.bucket}/")
            query = parse_qs(urlparse(location).query)
            assert "X-Amz-Signature" in query and int(query["X-Amz-Expires"][0]) <= 3600
            data = requests.get(location, timeout=60)
            assert data.status_code == 200
            assert hashlib.sha256(data.content).hexdigest() == listed["sha256"] and len(data.content) == listed["bytes"]
            if listed["name"] == "manifest.json":
                manifest = data.content
    assert manifest is not None and hashlib.sha256(manifest).hexdigest() == licence["manifest_sha256"]
    assert {item["title"] for item in json.loads(manifest)["items"]} == {title for _, title in PHOTOS}

    # Each kind of work ran on its own worker (Celery logs "Task <name>[<id>] received"), and nothing is left
    # waiting in the queues.
    def ran(task: str, worker: str) -> bool:
        return f"{task}[" in stack.log_text(f"worker-{worker}")

    expected = {
        "celery": "marketplace.catalog.tasks.prepare_asset",
        "curation": "marketplace.curation.tasks.analyse_pending",
        "exports": "marketplace.packs.tasks.build_export",
    }
    for queue, task in expected.items():
        assert ran(task, queue) and not any(ran(task, other) for other in QUEUES if other != queue), task
    assert "ready" in stack.log_text("worker-training")  # the GPU queue's worker is up and consuming
    assert stack.queue_depths() == dict.fromkeys(QUEUES, 0)
    # Prometheus, scraping from the loopback, sees both gunicorn workers' counts and the empty queues.
    metrics = requests.get(f"{base}/metrics", timeout=30)
    assert metrics.status_code == 200
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.text.splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    assert samples["marketplace_uploads_total"] == len(PHOTOS)
    assert samples['marketplace_sales_total{currency="usd"}'] == 1
    assert all(samples[f'celery_queue_length{{queue="{queue}"}}'] == 0 for queue in QUEUES)
    # A production log carries no DEBUG pages or tracebacks.
    for name in stack.processes:
        assert "Traceback" not in stack.log_text(name), f"{name}:\n{stack.log_tail(name)}"
