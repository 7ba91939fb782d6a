"""Every HTML page sends a strict Content-Security-Policy: scripts from us (and the payments script) only, inline
code only with the response's nonce, nothing may frame the page or post its forms elsewhere."""

import re
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from marketplace.commerce.models import Order, PackLicence
from marketplace.packs import services as packs
from tests.test_packs import exports_queued, licensees_told, new_pack  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("exports_queued", "licensees_told")


def policy_of(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def assert_strict(response, path):
    policy = policy_of(response)
    html = response.content.decode()
    scripts = policy["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts and "*" not in scripts, path
    assert "'self'" in scripts, path
    assert policy["default-src"] == ["'self'"], path
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'self'"], path
    assert policy["frame-ancestors"] == ["'none'"] and policy["form-action"] == ["'self'"], path
    assert "'unsafe-inline'" not in policy.get("style-src", []), path
    nonces = [value[len("'nonce-") : -1] for value in scripts if value.startswith("'nonce-")]
    for tag in re.findall(r"<script\b[^>]*>", html):
        if "src=" in tag or 'type="application/json"' in tag:
            continue
        # an inline script runs only when it carries this response's nonce
        assert nonces and f'nonce="{nonces[0]}"' in tag, f"{path}: inline script without the nonce: {tag}"
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), f"{path}: inline event handler"
    assert not re.search(r"<[^>]+\sstyle\s*=", html), f"{path}: inline style attribute"
    return policy


@pytest.fixture
def world(make_eligible_asset, alice, bob, carol, staff):
    """A published pack by two creators, a buyer with a pending order and a licence."""
    make_eligible_asset(alice, "astronaut", title="Moonwalk")
    make_eligible_asset(bob, "coffee", title="Morning cup")
    version = packs.publish_version(new_pack(staff), actor=staff)
    licensed = packs.publish_version(new_pack(staff, title="Everyday", slug="everyday"), actor=staff)
    pending = Order.objects.create(buyer=carol, version=version, amount_cents=version.price_cents, currency="usd")
    paid = Order.objects.create(
        buyer=carol, version=licensed, amount_cents=licensed.price_cents, currency="usd", status=Order.Status.PAID,
        paid_at=timezone.now(),
    )  # fmt: skip
    licence = PackLicence.objects.create(
        order=paid,
        buyer=carol,
        version=licensed,
        terms=licensed.licence_terms,
        manifest_sha256=licensed.manifest_sha256,
    )
    asset = alice.assets.first()
    return {"version": version, "pending": pending, "licence": licence, "asset": asset}


def pages_for(who, world) -> list[str]:
    version, asset = world["version"], world["asset"]
    public = ["/", "/packs/", f"/packs/{version.pack.slug}/v{version.number}/", "/licences/", "/api/docs/"]
    return {
        "anonymous": public + ["/accounts/login/", "/accounts/signup/", "/accounts/password-reset/"],
        "alice": public + ["/upload/", "/my/uploads/", f"/assets/{asset.pk}/", f"/assets/{asset.pk}/edit/",
                           "/my/earnings/", "/my/payouts/", "/accounts/me/"],
        "carol": public + [f"/buy/{version.pk}/", f"/orders/{world['pending'].pk}/", "/my/licences/",
                           f"/my/licences/{world['licence'].pk}/downloads/", f"/certificates/{world['licence'].pk}/",
                           "/training/runs/"],
        "staff": public + ["/curation/search/", "/curation/review/", "/staff/packs/", "/staff/packs/new/",
                           "/training/runs/", "/training/runs/new/", "/admin/", f"/curation/assets/{asset.pk}/"],
    }[who]  # fmt: skip


@pytest.mark.parametrize("who", ["anonymous", "alice", "carol", "staff"])
def test_every_page_sends_a_strict_policy_with_nonce_only_inline_scripts(world, who, request):
    client = Client()
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    for path in pages_for(who, world):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith("text/html"), path
        assert_strict(response, path)


def test_each_response_has_its_own_nonce_and_pages_with_inline_scripts_use_it(world, carol):
    client = Client()
    client.force_login(carol)
    first, second = (client.get(f"/orders/{world['pending'].pk}/") for _ in range(2))
    nonces = [re.search(r"'nonce-([^']+)'", r["Content-Security-Policy"]).group(1) for r in (first, second)]
    assert nonces[0] != nonces[1]
    assert f'<script nonce="{nonces[0]}">' in first.content.decode()  # the order page polls its status inline


def test_the_checkout_page_allows_exactly_the_payments_origin(world, carol, settings):
    settings.STRIPE_JS_URL = "http://stripe.staging.internal:8420/js.stripe.com/v3/"  # a staging site's fake Stripe
    settings.STRIPE_API_BASE = "http://stripe.staging.internal:8420"
    client = Client()
    client.force_login(carol)
    response = client.get(f"/buy/{world['version'].pk}/")
    assert '<script src="http://stripe.staging.internal:8420/js.stripe.com/v3/">' in response.content.decode()
    policy = assert_strict(response, "checkout")
    # the fake Stripe serves Stripe.js and its API from one origin, and draws the card field in the page
    assert [v for v in policy["script-src"] if v.startswith("http")] == ["http://stripe.staging.internal:8420"]
    assert [v for v in policy["connect-src"] if v.startswith("http")] == ["http://stripe.staging.internal:8420"]
    assert policy["frame-src"] == ["'none'"]


def test_files_keep_their_own_sandboxing_policy(world, alice):
    client = Client()
    client.force_login(alice)
    response = client.get(f"/assets/{world['asset'].pk}/files/thumbnail/")
    assert response["Content-Security-Policy"] == "default-src 'none'; img-src 'self'; sandbox"


def production_policy(tmp_path, **env) -> dict[str, list[str]]:
    """The policy a production site sends (with its API schema: a response that needs no database nor collected
    static files)."""
    from tests.test_settings import PRODUCTION, run_manage

    script = (
        "from django.test import Client; "
        "r = Client(HTTP_HOST='market.example.com').get('/api/schema/', secure=True); "
        "print(r.status_code, r['Content-Security-Policy'])"
    )
    result = run_manage("shell", "-v", "0", "-c", script, env_overrides={**PRODUCTION, **env}, tmp_path=tmp_path)
    status, _, header = result.stdout.strip().partition(" ")
    assert status == "200", result.stderr + result.stdout
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def test_production_allows_stripe_and_the_media_bucket(tmp_path):
    policy = production_policy(tmp_path)
    assert policy["script-src"] == ["'self'", "https://js.stripe.com"]
    assert policy["connect-src"] == ["'self'", "https://api.stripe.com"]
    assert policy["frame-src"] == ["https://js.stripe.com", "https://hooks.stripe.com"]  # card field, 3-D Secure
    assert policy["img-src"] == ["'self'", "data:", "https://market-media.s3.amazonaws.com"]  # presigned redirects
    minio = production_policy(tmp_path, MEDIA_S3_ENDPOINT_URL="https://s3.example.com:9000/")
    assert minio["img-src"] == ["'self'", "data:", "https://s3.example.com:9000"]


def test_no_template_has_inline_code_without_the_nonce():
    """Pages the walk above does not reach (a training run's live page, downloads being built) are held to the
    same rule at the source."""
    templates = [*ROOT.glob("templates/**/*.html"), *ROOT.glob("marketplace/*/templates/**/*.html"),
                 *ROOT.glob("training/templates/**/*.html")]  # fmt: skip
    assert len(templates) > 20
    for path in templates:
        text = path.read_text()
        for tag in re.findall(r"<(?:script|style)\b[^>]*>", text):
            if "src=" not in tag and "application/json" not in tag:
                assert 'nonce="{{ request.csp_nonce }}"' in tag, f"{path}: {tag}"
        assert not re.search(r"<[^>]+\s(on[a-z]+|style)\s*=", text), path
