"""The upload page and the batch editor in a real browser (Debian's Chromium through Playwright).

Each test drives the pages a creator uses against pytest-django's live server. Celery is
eager in tests, so an upload's processing runs when the upload request commits.

When Chromium cannot start these tests are skipped with the reason, unless REQUIRE_BROWSER=1
(as in CI), where they fail. A failing test leaves a screenshot in test-artifacts/.
"""

import base64
import os
import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.catalog import services
from marketplace.catalog.models import Asset, AssetEvent
from tests.conftest import photo_bytes

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "correct horse battery"  # what tests/conftest.py gives every user
LICENCE_CODE = "mkt-ai-commercial-1.0"
LICENCE_NAME = "Marketplace AI Training Licence, Commercial 1.0"
TIMEOUT_MS = 15_000

# XMP with the PLUS Data Mining property set to "prohibited for AI/ML training" (as in test_upload_flow.py).
PROHIBITING_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" '
    b'plus:DataMining="http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING"/></rdf:RDF></x:xmpmeta>'
)


# --- Browser fixtures ---------------------------------------------------------------


def _unavailable(reason: str):
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but the browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason} (set REQUIRE_BROWSER=1 to make this a failure)")


_REPORTS = pytest.StashKey[dict]()


class _OutcomeKeeper:
    """Keeps each phase's report on the test item, so that fixtures can tell a failed test."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        item.stash.setdefault(_REPORTS, {})[report.when] = report
        return report


@pytest.fixture(scope="module")
def browser(pytestconfig):
    # Playwright's sync API runs an event loop in this thread; Django refuses ORM calls from a
    # thread with a running loop unless told that this is safe (it is: nothing here is async).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    keeper = _OutcomeKeeper()
    pytestconfig.pluginmanager.register(keeper)
    playwright = None
    try:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as error:
            _unavailable(f"the playwright package is not installed ({error})")
        if not Path(CHROMIUM).exists():
            _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        try:
            playwright = sync_playwright().start()
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as error:  # noqa: BLE001 - any launch problem means "no browser here"
            _unavailable(f"Chromium did not start: {type(error).__name__}: {str(error).strip()[:500]}")
        yield chromium
        chromium.close()
    finally:
        if playwright is not None:
            playwright.stop()
        pytestconfig.pluginmanager.unregister(keeper)
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, request):
    """A fresh browser context (no cookies) per test; a screenshot is kept when the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.js_errors = errors
    # Chromium reports what the pages' Content-Security-Policy blocked on the console: every browser test also
    # checks that the site works within its policy. A test that provokes a violation on purpose clears the list.
    violations: list[str] = []
    tab.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    tab.csp_violations = violations
    yield tab
    reports = request.node.stash.get(_REPORTS, {})
    if violations and not any(report.failed for report in reports.values()):
        context.close()
        pytest.fail("the page's Content-Security-Policy blocked:\n" + "\n".join(violations), pytrace=False)
    if any(report.failed for report in reports.values()):
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        try:
            tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            (ARTIFACTS / f"{name}.html").write_text(tab.content())
        except Exception as error:  # noqa: BLE001 - a missing screenshot must not hide the failure
            print(f"could not save a screenshot: {error}")
    context.close()


@pytest.fixture
def expect(browser):
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect


@pytest.fixture
def server(live_server, transactional_db):
    """The live server; its threads run requests in parallel (the SQLite test database is a file)."""
    return live_server


# --- Helpers --------------------------------------------------------------------------


def log_in(page, live_server, expect, username="alice", next_path="/upload/"):
    """Through the real login form."""
    page.goto(f"{live_server.url}/accounts/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server.url}{next_path}")
    page.wait_for_load_state("load")  # the page's scripts have run: their listeners are in place


def write_photos(directory: Path, names, **photo_args) -> list[Path]:
    paths = []
    for name in names:
        path = directory / f"{name}.jpg"
        path.write_bytes(photo_bytes(name, **photo_args))
        paths.append(path)
    return paths


def drop_files(page, selector: str, paths: list[Path], expect) -> None:
    """A true drag and drop: a DataTransfer holding File objects, dispatched as drag events."""
    files = [
        {"name": path.name, "type": "image/jpeg", "data": base64.b64encode(path.read_bytes()).decode()}
        for path in paths
    ]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const file of files) {
                const binary = atob(file.data);
                const bytes = new Uint8Array(binary.length);
                for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
                transfer.items.add(new File([bytes], file.name, { type: file.type }));
            }
            return transfer;
        }""",
        files,
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    expect(page.locator(selector)).to_have_class(re.compile(r"\bover\b"))
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})
    expect(page.locator(selector)).not_to_have_class(re.compile(r"\bover\b"))
    transfer.dispose()


def upload_row(page, filename: str):
    return page.locator("#upload-list li.upload-item").filter(
        has=page.locator(".name").get_by_text(filename, exact=True)
    )


def watch_progress(page) -> None:
    """Record every value each row's percentage shows, to check it climbs to 100 %."""
    page.evaluate(
        """() => {
            window.progressSeen = {};
            const record = (row) => {
                const name = row.querySelector(".name").textContent;
                const seen = (window.progressSeen[name] ||= []);
                const text = row.querySelector(".percent").textContent;
                if (seen[seen.length - 1] !== text) seen.push(text);
            };
            new MutationObserver((mutations) => {
                for (const mutation of mutations) {
                    const row = (mutation.target.nodeType === 1 ? mutation.target : mutation.target.parentElement)
                        .closest("li.upload-item");
                    if (row) record(row);
                    for (const node of mutation.addedNodes) {
                        if (node.matches && node.matches("li.upload-item")) record(node);
                    }
                }
            }).observe(document.getElementById("upload-list"), { childList: true, subtree: true, characterData: true });
        }"""
    )


def assert_progress_reached_100(page, filenames) -> None:
    seen = page.evaluate("() => window.progressSeen")
    for filename in filenames:
        values = [int(text.rstrip(" %")) for text in seen.get(filename, [])]
        assert values and values[-1] == 100, (filename, values)
        assert values == sorted(values), f"{filename}: progress went backwards: {values}"
        row = upload_row(page, filename)
        assert row.locator("progress").evaluate("(bar) => [bar.value, bar.max]") == [100, 100]


def summary_of(*, files: int, accepted: int, ready: int) -> re.Pattern:
    """The upload summary's counts (its wording around them may change)."""
    return re.compile(rf"^{files} file\(s\): {accepted} accepted\b.*\b{ready} ready\b")


def upload_with_service(owner, filename: str, data: bytes) -> Asset:
    asset = services.upload_asset(owner=owner, uploaded_file=SimpleUploadedFile(filename, data))
    asset.refresh_from_db()  # processed on commit (eager Celery)
    assert asset.status == Asset.Status.READY
    return asset


# --- Tests ----------------------------------------------------------------------------


def test_drop_three_photos_watch_them_become_ready_and_batch_edit_them(server, alice, page, expect, tmp_path):
    names = ["astronaut.jpg", "coffee.jpg", "rocket.jpg"]
    paths = write_photos(tmp_path, ["astronaut", "coffee", "rocket"])

    log_in(page, server, expect)
    expect(page.get_by_role("heading", name="Upload images")).to_be_visible()
    expect(page.locator("#batch-editor")).to_be_hidden()  # nothing selected yet
    watch_progress(page)
    drop_files(page, "#drop-zone", paths, expect)

    for filename in names:
        row = upload_row(page, filename)
        expect(row).to_have_count(1)
        expect(row).to_have_attribute("data-status", "ready")
        expect(row.locator(".percent")).to_have_text("100 %")
        expect(row.locator(".message")).to_contain_text("Ready")
        expect(row.locator("[data-asset-select]")).to_be_checked()
        expect(row.get_by_role("button", name="Retry")).to_be_hidden()
    assert_progress_reached_100(page, names)
    expect(page.locator(".upload-summary")).to_have_text(summary_of(files=3, accepted=3, ready=3))

    # One batch edit for all three.
    editor = page.locator("#batch-editor")
    expect(editor).to_be_visible()
    expect(editor.locator("[data-selected-count]")).to_have_text("3")
    page.fill("#batch-title", "Studio test shoot")
    page.fill("#batch-tags", "Studio, test shoot")
    page.select_option("#batch-licence", LICENCE_CODE)
    page.check("#batch-consent")
    page.click("#batch-apply")
    expect(editor.locator(".batch-result")).to_have_text("Saved for 3 images.")
    expect(editor.locator(".batch-result")).to_have_class(re.compile(r"\bok\b"))

    page.goto(f"{server.url}/my/uploads/")
    cards = page.locator("#asset-grid li.card")
    expect(cards).to_have_count(3)
    for index in range(3):
        card = cards.nth(index)
        expect(card).to_have_attribute("data-status", "ready")
        expect(card.locator(".badge.ready")).to_have_text("ready")
        expect(card.locator(".badge.consent")).to_be_visible()
        expect(card.locator(".card-title")).to_have_text("Studio test shoot")
        expect(card).to_contain_text(LICENCE_NAME)
        expect(card).to_contain_text("studio, test shoot")
        thumbnail = card.locator("img")
        expect(thumbnail).to_have_js_property("complete", True)
        assert thumbnail.evaluate("(img) => img.naturalWidth") > 0  # the thumbnail was made and served

    assets = list(Asset.objects.filter(owner=alice).order_by("original_filename"))
    assert [a.original_filename for a in assets] == names
    for asset in assets:
        assert asset.status == Asset.Status.READY
        assert asset.title == "Studio test shoot"
        assert asset.licence == LICENCE_CODE
        assert asset.ai_training_consent is True
        assert asset.consent_given_at is not None
        assert asset.tag_names == ["studio", "test shoot"]
    assert page.js_errors == []


def test_a_rejected_file_shows_its_reason_and_a_failed_upload_can_be_retried(server, alice, page, expect, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("This is a text file, not a photo.\n" * 20)
    coffee, rocket = write_photos(tmp_path, ["coffee", "rocket"])

    log_in(page, server, expect)
    watch_progress(page)
    page.set_input_files("#file-input", [str(fake), str(coffee)])

    rejected = upload_row(page, "fake.jpg")
    expect(rejected).to_have_attribute("data-status", "rejected")
    expect(rejected.locator(".message")).to_have_text(
        "Rejected: This file is not an image we can read. Upload a JPEG, PNG or WebP image."
    )
    expect(rejected.locator("[data-asset-select]")).to_be_disabled()
    expect(rejected.get_by_role("button", name="Retry")).to_be_hidden()  # it would be refused again
    accepted = upload_row(page, "coffee.jpg")
    expect(accepted).to_have_attribute("data-status", "ready")
    expect(accepted.locator("[data-asset-select]")).to_be_checked()
    expect(accepted.get_by_role("button", name="Retry")).to_be_hidden()
    assert_progress_reached_100(page, ["coffee.jpg"])
    expect(page.locator(".upload-summary")).to_have_text(summary_of(files=2, accepted=1, ready=1))

    # The network drops the next upload once; the file can then be sent again.
    posts = []

    def flaky_network(route):
        if route.request.method != "POST":
            return route.continue_()
        posts.append(route.request.url)
        return route.abort("connectionreset") if len(posts) == 1 else route.continue_()

    page.route("**/api/assets/", flaky_network)
    page.set_input_files("#file-input", [str(rocket)])
    retried = upload_row(page, "rocket.jpg")
    expect(retried).to_have_attribute("data-status", "failed")
    expect(retried.locator(".message")).to_have_text("The network failed. Retry this file.")
    expect(retried.locator("[data-asset-select]")).to_be_disabled()
    assert not Asset.objects.filter(original_filename="rocket.jpg").exists()

    retry = retried.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    retry.click()
    expect(retried).to_have_attribute("data-status", "ready")
    expect(retry).to_be_hidden()
    expect(retried.locator(".percent")).to_have_text("100 %")
    expect(retried.locator("[data-asset-select]")).to_be_checked()
    assert len(posts) == 2
    expect(page.locator(".upload-summary")).to_have_text(summary_of(files=3, accepted=2, ready=2))

    stored = Asset.objects.filter(owner=alice).order_by("original_filename")
    assert [(a.original_filename, a.status) for a in stored] == [
        ("coffee.jpg", Asset.Status.READY),
        ("rocket.jpg", Asset.Status.READY),
    ]
    assert page.js_errors == []


@pytest.mark.parametrize(
    "new_title",
    [
        "",
        "Should not be saved",
    ],
    ids=["without-title", "with-new-title"],
)
def test_a_batch_edit_error_names_the_image_and_changes_nothing(server, alice, page, expect, new_title):
    prohibited = upload_with_service(alice, "no-ai.jpg", photo_bytes("astronaut", xmp=PROHIBITING_XMP))
    normal = upload_with_service(alice, "coffee.jpg", photo_bytes("coffee"))
    assert prohibited.embedded_prohibits_ai_training and not normal.embedded_prohibits_ai_training
    events_before = AssetEvent.objects.count()

    log_in(page, server, expect, next_path="/my/uploads/")
    cards = page.locator("#asset-grid li.card")
    expect(cards).to_have_count(2)
    expect(page.locator(f'li.card[data-asset-id="{prohibited.pk}"] .badge.warn')).to_have_text("no-AI metadata")
    editor = page.locator("#batch-editor")
    expect(editor).to_be_hidden()
    for asset in (prohibited, normal):
        page.locator(f'li.card[data-asset-id="{asset.pk}"] [data-asset-select]').check()
    expect(editor).to_be_visible()
    expect(editor.locator("[data-selected-count]")).to_have_text("2")

    page.fill("#batch-title", new_title)
    page.fill("#batch-tags", "nope")
    page.select_option("#batch-licence", LICENCE_CODE)
    page.check("#batch-consent")
    page.click("#batch-apply")
    result = editor.locator(".batch-result")
    expect(result).to_have_class(re.compile(r"\berror\b"))
    message = result.text_content()
    assert message.startswith("Nothing was changed. ")
    assert "no-ai.jpg: The file's embedded metadata prohibits AI training (DMI-PROHIBITED-AIMLTRAINING)" in message
    assert "coffee.jpg" not in message

    for asset in (prohibited, normal):
        asset.refresh_from_db()
        assert (asset.title, asset.licence, asset.tag_names) == ("", "", [])
        assert asset.ai_training_consent is False and asset.consent_given_at is None
        assert asset.rights_override_confirmed_at is None
    assert AssetEvent.objects.count() == events_before

    page.reload(wait_until="load")
    expect(cards).to_have_count(2)
    expect(page.locator("#asset-grid .badge.consent")).to_have_count(0)
    for index in range(2):
        expect(cards.nth(index)).to_contain_text("No licence yet")
    assert page.js_errors == []
