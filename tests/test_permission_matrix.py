"""Who may do what, on every page and endpoint: one table, every kind of user, every method each URL accepts.

The table is the contract. Each row is a URL (by its name in Django's URL resolver) and a method; each column
is a kind of user; each cell is the outcome class that user must get:

    ok      allowed: 2xx, or a redirect that is not to the log-in page
    bad     allowed past the permission check, but the request itself is refused (400): the row's body is
            deliberately incomplete where a complete one would start real work (a training run)
    login   sent to log in (302 to /accounts/login/)
    401     the API's "not signed in" (token or session)
    403     signed in, not allowed
    404     not found: the object exists, but not for this user (so nobody learns that it exists)
    405     this URL does not take this method
    409     refused because of the object's state (checkout: not a buyer account, or already licensed)
    410     gone (a sign-up confirmation link that is not, or no longer, valid)

Users: anon (not signed in), owner (alice: the creator of the images), other (bob: another creator),
buyer (carol: a buyer without a licence), licensee (lena: a buyer who bought the pack), staff (sam).

Every write that is refused (login, 401, 403, 404, 405) must leave the rights and the money as they were:
each image's licence, consent, withdrawal, takedown and title; orders, licences, ledger and payouts; pack
versions, training runs and flags. Each request runs in a savepoint that is rolled back, so that one row's
allowed write cannot change what the next row sees. A URL that the resolver knows and the table does not
fails the test: a new page or endpoint gets its row before it ships.
"""

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from marketplace.catalog.models import Asset
from marketplace.commerce import stripe_gateway
from marketplace.commerce.models import Order, PackLicence
from marketplace.curation.models import Flag
from marketplace.packs.models import PackVersion
from marketplace.royalties import services as royalties_services
from marketplace.royalties.models import Entry, Payout
from tests.conftest import photo_bytes
from tests.marketplace_world import build_world, make_licensee
from training.models import TrainingRun

USERS = ["anon", "owner", "other", "buyer", "licensee", "staff"]

# fmt: off
TABLE = """
name                                method  anon    owner   other   buyer   licensee staff
core:home                           GET     ok      ok      ok      ok      ok      ok
accounts:signup                     GET     ok      ok      ok      ok      ok      ok
accounts:signup                     POST    ok      ok      ok      ok      ok      ok
accounts:signup-sent                GET     ok      ok      ok      ok      ok      ok
accounts:signup-confirm             GET     410     410     410     410     410     410
accounts:login                      GET     ok      ok      ok      ok      ok      ok
accounts:login                      POST    ok      ok      ok      ok      ok      ok
accounts:logout                     GET     405     405     405     405     405     405
accounts:logout                     POST    ok      ok      ok      ok      ok      ok
accounts:account                    GET     login   ok      ok      ok      ok      ok
accounts:account                    POST    login   ok      ok      ok      ok      ok
accounts:regenerate_token           GET     login   405     405     405     405     405
accounts:regenerate_token           POST    login   ok      ok      ok      ok      ok
accounts:password_reset             GET     ok      ok      ok      ok      ok      ok
accounts:password_reset             POST    ok      ok      ok      ok      ok      ok
accounts:password_reset_done        GET     ok      ok      ok      ok      ok      ok
accounts:password_reset_confirm     GET     ok      ok      ok      ok      ok      ok
accounts:password_reset_complete    GET     ok      ok      ok      ok      ok      ok
catalog:upload                      GET     login   ok      ok      403     403     403
catalog:upload                      POST    login   ok      ok      403     403     403
catalog:my-uploads                  GET     login   ok      ok      ok      ok      ok
catalog:asset                       GET     login   ok      404     404     404     ok
catalog:asset-edit                  GET     login   ok      404     404     404     ok
catalog:asset-edit                  POST    login   ok      404     404     404     403
catalog:asset-withdraw              GET     login   ok      404     404     404     403
catalog:asset-withdraw              POST    login   ok      404     404     404     403
catalog:asset-retry                 POST    login   ok      404     404     404     ok
catalog:asset-takedown              GET     login   403     404     404     404     ok
catalog:asset-takedown              POST    login   403     404     404     404     ok
catalog:asset-reinstate             POST    login   403     404     404     404     ok
catalog:asset-file                  GET     login   ok      404     404     404     ok
catalog:licences                    GET     ok      ok      ok      ok      ok      ok
curation:search                     GET     login   403     403     403     403     ok
curation:review                     GET     login   403     403     403     403     ok
curation:flag                       GET     login   403     403     403     403     ok
curation:flag                       POST    login   403     403     403     403     ok
curation:analysis                   GET     login   403     403     403     403     ok
packs:list                          GET     ok      ok      ok      ok      ok      ok
packs:detail                        GET     ok      ok      ok      ok      ok      ok
packs:version                       GET     ok      ok      ok      ok      ok      ok
packs:revocations                   GET     ok      ok      ok      ok      ok      ok
packs:thumbnail                     GET     ok      ok      ok      ok      ok      ok
packs:staff-list                    GET     login   403     403     403     403     ok
packs:staff-new                     GET     login   403     403     403     403     ok
packs:staff-new                     POST    login   403     403     403     403     ok
packs:staff-edit                    GET     login   403     403     403     403     ok
packs:staff-edit                    POST    login   403     403     403     403     ok
packs:staff-publish                 POST    login   403     403     403     403     ok
packs:staff-export-rebuild          POST    login   403     403     403     403     ok
commerce:checkout                   GET     login   ok      ok      ok      ok      ok
commerce:checkout                   POST    401     409     409     ok      409     409
commerce:order                      GET     login   404     404     404     ok      ok
commerce:order-status               GET     login   404     404     404     ok      ok
commerce:stripe-webhook             GET     405     405     405     405     405     405
commerce:stripe-webhook             POST    bad     bad     bad     bad     bad     bad
commerce:dashboard                  GET     login   ok      ok      ok      ok      ok
commerce:certificate                GET     ok      ok      ok      ok      ok      ok
commerce:downloads                  GET     login   404     404     404     ok      404
commerce:download-file              GET     ok      403     403     403     ok      403
royalties:earnings                  GET     login   ok      ok      403     403     403
royalties:statement                 GET     login   ok      ok      403     403     403
royalties:payouts                   GET     login   ok      ok      403     403     403
royalties:connect                   POST    login   ok      ok      403     403     403
royalties:connect-return            GET     login   ok      ok      403     403     403
training:list                       GET     login   ok      ok      ok      ok      ok
training:launch                     GET     login   403     403     403     403     ok
training:launch                     POST    login   403     403     403     403     ok
training:memory                     GET     login   403     403     403     403     bad
training:detail                     GET     login   404     404     404     ok      ok
training:status                     GET     login   404     404     404     ok      ok
training:cancel                     POST    login   403     403     403     403     ok
training:file                       GET     login   404     404     404     ok      ok
training:sample                     GET     login   404     404     404     ok      ok
api-root                            GET     401     ok      ok      ok      ok      ok
api-token                           POST    bad     bad     bad     bad     bad     bad
api-schema                          GET     ok      ok      ok      ok      ok      ok
api-docs                            GET     ok      ok      ok      ok      ok      ok
asset-list                          GET     401     ok      ok      ok      ok      ok
asset-list                          POST    401     ok      ok      403     403     403
asset-detail                        GET     401     ok      404     404     404     ok
asset-detail                        PATCH   401     ok      404     404     404     403
asset-detail                        PUT     401     405     405     405     405     405
asset-detail                        DELETE  401     405     405     405     405     405
asset-bulk                          POST    401     ok      bad     bad     bad     403
asset-withdraw                      POST    401     ok      404     404     404     403
asset-retry                         POST    401     ok      404     404     404     ok
asset-takedown                      POST    401     403     404     404     404     ok
asset-reinstate                     POST    401     403     404     404     404     bad
licence-list                        GET     ok      ok      ok      ok      ok      ok
pack-licence-list                   GET     401     ok      ok      ok      ok      ok
pack-licence-detail                 GET     401     404     404     404     ok      404
pack-licence-downloads              GET     401     404     404     404     ok      404
training-run-list                   GET     401     ok      ok      ok      ok      ok
training-run-list                   POST    401     403     403     403     403     bad
training-run-detail                 GET     401     404     404     404     ok      ok
training-run-cancel                 POST    401     404     404     404     403     ok
admin:index                         GET     login   login   login   login   login   ok
"""
# fmt: on

# The admin's model pages follow Django's own model permissions (staff here hold none); its index is the
# door, and the table says who gets through it. Every other admin URL is Django's, not ours.
NOT_IN_TABLE = {"admin"}


def parse(table: str) -> dict[tuple[str, str], dict[str, str]]:
    lines = [line.split() for line in table.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    assert header[2:] == USERS
    matrix = {}
    for name, method, *outcomes in rows:
        assert len(outcomes) == len(USERS), name
        assert (name, method) not in matrix, f"{name} {method} is in the table twice"
        matrix[(name, method)] = dict(zip(USERS, outcomes, strict=True))
    return matrix


MATRIX = parse(TABLE)


def url_names(patterns=None, namespace="") -> set[str]:
    """Every named URL Django resolves, as `namespace:name`."""
    names = set()
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            if pattern.namespace in NOT_IN_TABLE:
                continue
            names |= url_names(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(f"{namespace}{pattern.name}")
    return names


def url_for(name: str, world) -> str:
    asset = world.spare.pk  # alice's image in no pack: every change to it is allowed to its owner
    pack, version = world.pack, world.version
    args = {
        "accounts:signup-confirm": ["not-a-real-token"],
        "accounts:password_reset_confirm": ["MQ", "set-password"],
        "catalog:asset": [asset],
        "catalog:asset-edit": [asset],
        "catalog:asset-withdraw": [asset],
        "catalog:asset-retry": [asset],
        "catalog:asset-takedown": [asset],
        "catalog:asset-reinstate": [asset],
        "catalog:asset-file": [asset, "thumbnail"],
        "curation:flag": [world.flag.pk],
        "curation:analysis": [world.published.pk],
        "packs:detail": [pack.slug],
        "packs:version": [pack.slug, version.number],
        "packs:revocations": [pack.slug, version.number],
        "packs:thumbnail": [pack.slug, version.number, version.items.first().pk],
        "packs:staff-edit": [pack.pk],
        "packs:staff-publish": [pack.pk],
        "packs:staff-export-rebuild": [pack.pk, version.exports.first().pk],
        "commerce:checkout": [version.pk],
        "commerce:order": [world.order.pk],
        "commerce:order-status": [world.order.pk],
        "commerce:certificate": [world.licence.pk],
        "commerce:downloads": [world.licence.pk],
        "commerce:download-file": [world.download_token],
        "royalties:statement": [world.licence.granted_at.year, world.licence.granted_at.month],
        "training:detail": [world.run.pk],
        "training:status": [world.run.pk],
        "training:cancel": [world.run.pk],
        "training:file": [world.finished_run.pk, "lora"],  # files that exist: a refusal is the permission's
        "training:sample": [world.finished_run.pk, "sample", 0],
        "asset-detail": [asset],
        "asset-withdraw": [asset],
        "asset-retry": [asset],
        "asset-takedown": [asset],
        "asset-reinstate": [asset],
        "pack-licence-detail": [world.licence.pk],
        "pack-licence-downloads": [world.licence.pk],
        "training-run-detail": [world.run.pk],
        "training-run-cancel": [world.run.pk],
    }.get(name, [])
    return reverse(name, args=args)


def body_for(name: str, method: str, world) -> dict:
    """What each write sends: a change to the rights where the URL changes them, so a refusal is checked."""
    rights = {"licence": "cc0-1.0", "ai_training_consent": True, "title": "Changed by someone"}
    if method == "GET":
        return {}
    return {
        "catalog:asset-edit": {**rights, "ai_training_consent": "on", "tags": ""},
        "catalog:asset-takedown": {"reason": "Reported as not the uploader's own work."},
        "catalog:upload": {"file": SimpleUploadedFile("hubble.jpg", photo_bytes("hubble"))},
        "asset-list": {"file": SimpleUploadedFile("hubble.jpg", photo_bytes("hubble"))},
        "accounts:password_reset": {"email": "alice@example.com"},
        "curation:flag": {"action": "keep", "note": "Looked at it."},
        "commerce:checkout": {"agree": "yes"},
        "asset-detail": rights,
        "asset-bulk": {"ids": [world.spare.pk], **rights},
        "asset-takedown": {"reason": "Reported as not the uploader's own work."},
        "training-run-list": {"licence": str(uuid.uuid4()), "preset": "sd15"},  # no such licence: never trains
    }.get(name, {})


def outcome_of(response) -> str:
    status = response.status_code
    if status in (301, 302, 303) and response["Location"].split("?")[0] in ("/accounts/login/", "/admin/login/"):
        return "login"
    if status < 400:
        return "ok"
    return {400: "bad"}.get(status, str(status))


def rights_and_money() -> tuple:
    """What no refused request may change."""
    return (
        list(
            Asset.objects.order_by("pk").values_list(
                "pk", "licence", "ai_training_consent", "withdrawn_at", "taken_down_at", "title", "status"
            )
        ),
        list(Order.objects.order_by("pk").values_list("pk", "status", "amount_cents")),
        list(PackLicence.objects.order_by("pk").values_list("pk", "revoked_at")),
        list(Entry.objects.order_by("pk").values_list("pk", "amount_cents")),
        list(Payout.objects.order_by("pk").values_list("pk", "status", "amount_cents")),
        list(PackVersion.objects.order_by("pk").values_list("pk", "number")),
        list(TrainingRun.objects.order_by("pk").values_list("pk", "status", "cancel_requested_at")),
        list(Flag.objects.order_by("pk").values_list("pk", "status")),
    )


def stub_payments(monkeypatch) -> None:
    """Stripe as far as these pages reach it, without the network."""
    intent = stripe_gateway.Intent("pi_matrix", "pi_matrix_secret_x", "requires_payment_method", 5000, "usd")
    monkeypatch.setattr(stripe_gateway, "create_payment_intent", lambda **kwargs: intent)
    monkeypatch.setattr(stripe_gateway, "retrieve_payment_intent", lambda intent_id: intent)
    monkeypatch.setattr(royalties_services, "connect_account", lambda user: None)
    monkeypatch.setattr(royalties_services, "onboarding_url", lambda *a, **k: "https://connect.stripe.test/onboard")


def test_every_url_has_a_row_and_every_row_a_url():
    in_table = {name for name, _ in MATRIX}
    assert url_names() - in_table == set(), "new URLs: give each its row in TABLE"
    assert in_table - url_names() - {"admin:index"} == set(), "rows for URLs that no longer exist"


@pytest.mark.parametrize("who", USERS)
def test_each_user_gets_exactly_what_the_table_says(
    who, alice, bob, carol, staff, make_eligible_asset, django_capture_on_commit_callbacks, monkeypatch
):
    stub_payments(monkeypatch)
    licensee = make_licensee()
    world = build_world(
        alice=alice,
        bob=bob,
        staff=staff,
        licensee=licensee,
        make_eligible_asset=make_eligible_asset,
        capture_on_commit=django_capture_on_commit_callbacks,
    )
    user = {"anon": None, "owner": alice, "other": bob, "buyer": carol, "licensee": licensee, "staff": staff}[who]
    wrong = []
    for (name, method), expected in MATRIX.items():
        client = APIClient()  # afresh for each row: the log-out and log-in rows end their session
        if user is not None:
            client.force_login(user)
        url = url_for(name, world)
        api = url.startswith("/api/")
        before = rights_and_money()
        with transaction.atomic():
            savepoint = transaction.savepoint()
            send = getattr(client, method.lower())
            upload = (name, method) == ("asset-list", "POST")  # the upload is a multipart form; the rest is JSON
            response = send(url, body_for(name, method, world), format="json" if api and not upload else "multipart")
            changed = rights_and_money() != before
            transaction.savepoint_rollback(savepoint)
        got = outcome_of(response)
        if got != expected[who]:
            wrong.append(f"{method:6} {name:34} expected {expected[who]:5} got {got} ({response.status_code})")
        elif method != "GET" and got in ("login", "401", "403", "404", "405") and changed:
            wrong.append(f"{method:6} {name:34} was refused ({got}) but changed the rights or the money")
    assert not wrong, f"as {who}:\n" + "\n".join(wrong)
