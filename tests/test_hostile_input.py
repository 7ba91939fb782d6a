"""Hostile input through the public interface (issue 12, items 3, 6 and 7).

- Ids outside the database's range (1 to 2**63 - 1), zero, negative or not numbers, in URL paths, request
  bodies, forms and query strings: a 404 or a 400 that says the range, never a 500. Also on PostgreSQL:
  `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres pytest tests/test_hostile_input.py`.
- HTML and Markdown in user text (titles, tags, names, descriptions, prompts) shows as text in the generated
  documents as a buyer downloads them (DATASHEET.md, the zip's README.md, MODEL_CARD.md), rendered by a
  CommonMark renderer: no tag, link, image or heading of the user's own survives.
- Upload file names: kept readable and exact (`<`, `>`, `&`), normalised (NFC, no path, no control
  characters), refused with the limit when longer than 255 bytes.
"""

import html
import io
import zipfile
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse
from markdown_it import MarkdownIt
from rest_framework.test import APIClient

from marketplace.accounts.services import register_user
from marketplace.catalog.models import Asset
from marketplace.packs.models import Pack, PackExport, PackVersion
from tests.commerce_helpers import paid_licence
from tests.conftest import photo_bytes

MAX_ID = 2**63 - 1
RANGE = "9223372036854775807"
TOO_BIG = ["99999999999999999999", str(MAX_ID + 1), "1" + "0" * 30]


def page_client(user) -> Client:
    client = Client(raise_request_exception=False)  # a crash is a 500 to assert on, as a user gets it
    client.force_login(user)
    return client


def api_client(user) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    return client


def upload(client, data: bytes, filename: str):
    """A multipart upload written by hand: Django's test client would cut a long name to 255 characters and
    keep only its last path part before the server saw it; a browser or a script sends the name as it is."""
    boundary = "hostile-input-boundary"
    quoted = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")  # as browsers quote names
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return client.generic("POST", "/api/assets/", body, content_type=f"multipart/form-data; boundary={boundary}")


# --- ids in paths ------------------------------------------------------------------------------------


PAGE_PATHS = [
    "/assets/{}/",
    "/assets/{}/edit/",
    "/assets/{}/files/original/",
    "/curation/flags/{}/",
    "/curation/assets/{}/",
    "/staff/packs/{}/",
    "/packs/street/v{}/",
    "/packs/street/v1/thumbnails/{}/",
    "/orders/{}/",
    "/orders/{}/status/",
    "/buy/{}/",
    "/training/runs/{}/",
    "/training/runs/{}/status/",
    "/training/runs/{}/files/card/",
]
API_PATHS = [
    ("get", "/api/assets/{}/"),
    ("patch", "/api/assets/{}/"),
    ("post", "/api/assets/{}/withdraw/"),
    ("post", "/api/assets/{}/retry/"),
    ("post", "/api/assets/{}/takedown/"),
    ("post", "/api/assets/{}/reinstate/"),
    ("get", "/api/training-runs/{}/"),
    ("post", "/api/training-runs/{}/cancel/"),
]


@pytest.mark.parametrize("bad_id", [*TOO_BIG, "0", "-1", "abc", "1.5", "١٢"])
def test_an_id_outside_the_database_range_in_any_path_is_a_404(staff, bad_id):
    # Staff: every page lets them in, so only the id decides the answer.
    pages = page_client(staff)
    for path in PAGE_PATHS:
        assert pages.get(path.format(bad_id)).status_code == 404, path
    api = api_client(staff)
    for method, path in API_PATHS:
        response = getattr(api, method)(path.format(bad_id), {}, format="json")
        assert response.status_code == 404, (method, path, response.content[:200])
        assert response.json()["detail"]  # the API's JSON error shape, not an HTML page


# --- ids in bodies and forms -------------------------------------------------------------------------


@pytest.fixture
def alices_asset(alice) -> Asset:
    response = upload(api_client(alice), photo_bytes("astronaut"), "astronaut.jpg")
    assert response.status_code == 201, response.content
    return Asset.objects.get(pk=response.json()["id"])


@pytest.mark.parametrize("bad_id", [10**30, MAX_ID + 1, 0, -1, "abc", "", True, 1.5, "12abc", "1" * 5000])
def test_bulk_refuses_an_id_outside_the_range_with_a_message_that_gives_the_range(alice, alices_asset, bad_id):
    api = api_client(alice)
    response = api.post("/api/assets/bulk/", {"ids": [alices_asset.pk, bad_id], "title": "New"}, format="json")
    assert response.status_code == 400
    (message,) = response.json()["ids"]
    assert RANGE in message and len(message) < 200  # a 5000-digit id is quoted short
    alices_asset.refresh_from_db()
    assert alices_asset.title != "New"  # all or nothing


def test_the_batch_editors_form_post_refuses_a_huge_id_too(alice, alices_asset):
    # The batch editor (static/js/batch-edit.js) sends repeated form fields, not JSON.
    response = api_client(alice).post(
        "/api/assets/bulk/", {"ids": [str(alices_asset.pk), TOO_BIG[0]], "title": "New"}, format="multipart"
    )
    assert response.status_code == 400 and RANGE in response.json()["ids"][0]
    ok = api_client(alice).post("/api/assets/bulk/", {"ids": [str(alices_asset.pk)], "title": "New"})
    assert ok.status_code == 200 and ok.json()[0]["title"] == "New"


def test_staff_pack_picks_outside_the_range_are_a_form_error(staff):
    form = {
        "title": "Street",
        "slug": "street",
        "description": "",
        "use": Pack.Use.COMMERCIAL,
        "price": "49.00",
        "picks": TOO_BIG[0],
        "removals": "",
        "is_listed": "on",
    }
    response = page_client(staff).post(reverse("packs:staff-new"), form)
    assert response.status_code == 200
    assert RANGE in " ".join(response.context["form"].errors["picks"])
    assert not Pack.objects.exists()


# --- query strings -----------------------------------------------------------------------------------

QUERY_FILTERS = {
    "/api/assets/": ["status", "licence", "consent", "tag", "q", "page"],
    "/api/training-runs/": ["status", "pack", "buyer", "page"],
    "/api/pack-licences/": ["page"],
    "/my/uploads/": ["status", "licence", "consent", "tag", "q", "page"],
    "/curation/search/": ["q", "creator", "tag", "licence", "min_short_side"],
    "/curation/review/": ["kind"],
    "/training/runs/": ["status", "pack", "buyer"],
    "/training/runs/new/": ["licence", "preset"],
    "/packs/": ["page"],
}


@pytest.mark.parametrize("value", [TOO_BIG[0], "-1", "0", "\x00", "a\x00b", "<script>", "%", "a" * 5000])
def test_query_string_filters_with_hostile_values_are_answered_never_a_500(staff, value):
    # PostgreSQL refuses a NUL character in a text parameter: that was a 500 on every filtered list there.
    client = page_client(staff)
    for path, names in QUERY_FILTERS.items():
        for name in names:
            response = client.get(path, {name: value})
            assert response.status_code < 500, (path, name, response.status_code)
            if "\x00" in value:
                assert response.status_code == 400, (path, name)
                if path.startswith("/api/"):
                    assert "NUL" in response.json()["detail"]


# --- user text in generated documents ----------------------------------------------------------------

HOSTILE_TITLE = "Street <img src=x onerror=alert(1)> [win](http://evil.example) *now*"
HOSTILE_DESCRIPTION = (
    "# Injected heading\n<script>alert(1)</script>\n| col | umn |\n![tracker](http://evil.example/t.png)\n"
    "- not a list\n1. not a list either\n&lt;entity&gt; and `code` and <b>bold</b>"
)
HOSTILE_NAME = "<b>Eve</b> | [me](http://evil.example)"
HOSTILE_ASSET_TITLE = "**Sunset** <i>x</i> | ~~y~~ [z](http://evil.example)"
HOSTILE_TAG = "<u>tag</u>"
ALLOWED_TAGS = {"h1", "h2", "p", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "code", "strong", "br"}


class _Rendered(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def rendered(markdown: str) -> _Rendered:
    """The document as a Markdown viewer shows it (CommonMark with GFM tables and strike-through)."""
    parser = _Rendered()
    parser.feed(MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown))
    return parser


def assert_user_text_is_only_text(markdown: str, *texts: str) -> None:
    page = rendered(markdown)
    assert set(page.tags) <= ALLOWED_TAGS, set(page.tags) - ALLOWED_TAGS  # no <img>, <a>, <script>, <em>...
    assert page.tags.count("h1") == 1
    shown = " ".join(" ".join(page.text).split())
    for text in texts:
        for line in text.splitlines():
            assert " ".join(line.split()) in shown, line  # exactly as typed, nothing of it eaten by markup


@pytest.fixture
def eve(db):
    return register_user(
        username="eve", email="eve@example.com", password="x" * 12, is_creator=True, is_buyer=False,
        display_name=HOSTILE_NAME,
    )  # fmt: skip


@pytest.fixture
def hostile_version(make_eligible_asset, eve, staff, django_capture_on_commit_callbacks) -> PackVersion:
    make_eligible_asset(eve, "astronaut", title=HOSTILE_ASSET_TITLE, tags=f"{HOSTILE_TAG}, space")
    staff_pages = page_client(staff)
    form = {
        "title": HOSTILE_TITLE,
        "slug": "street",
        "description": HOSTILE_DESCRIPTION,
        "use": Pack.Use.COMMERCIAL,
        "price": "49.00",
        "is_listed": "on",
    }
    assert staff_pages.post(reverse("packs:staff-new"), form).status_code == 302
    pack = Pack.objects.get(slug="street")
    with django_capture_on_commit_callbacks(execute=True):  # the downloads are built by their tasks
        assert staff_pages.post(reverse("packs:staff-publish", args=[pack.pk])).status_code == 302
    version = pack.versions.get()
    assert set(version.exports.values_list("status", flat=True)) == {PackExport.Status.READY}
    return version


def test_html_and_markdown_in_user_text_do_not_survive_into_the_datasheet(hostile_version, carol):
    licence = paid_licence(hostile_version, carol)
    listing = api_client(carol).get(f"/api/pack-licences/{licence.pk}/downloads/").json()
    links = {file["name"]: file["url"] for export in listing for file in export["files"]}
    buyer = page_client(carol)

    def download(name: str) -> bytes:
        response = buyer.get(links[name])
        assert response.status_code == 200, name
        return b"".join(response.streaming_content)

    datasheet = download("DATASHEET.md").decode()
    assert_user_text_is_only_text(datasheet, HOSTILE_TITLE, HOSTILE_DESCRIPTION, HOSTILE_NAME, HOSTILE_TAG)
    with zipfile.ZipFile(io.BytesIO(download("street-v1.zip"))) as archive:
        readme = archive.read("README.md").decode()
    assert_user_text_is_only_text(readme.split("---\n", 2)[2], HOSTILE_TITLE, HOSTILE_DESCRIPTION, HOSTILE_NAME)

    # The pack page shows the same text as text (escaped HTML, and no Markdown escapes left showing).
    page = buyer.get(reverse("packs:version", args=["street", 1])).content.decode()
    section = page[page.index('id="datasheet"') :]
    assert "<script>alert" not in page and "<b>Eve</b>" not in page
    assert html.escape("<b>Eve</b> | [me](http://evil.example)", quote=False) in section
    assert html.escape("![tracker](http://evil.example/t.png)", quote=False) in section
    assert "\\[" not in section and "\\|" not in section  # no Markdown escapes left showing
    assert html.escape("&lt;entity&gt; and `code` and <b>bold</b>", quote=False) in section  # as typed


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_html_and_markdown_in_titles_names_and_prompts_do_not_survive_into_the_model_card(
    hostile_version, carol, staff, tiny_base, django_capture_on_commit_callbacks, settings, tmp_path
):
    settings.TRAINING_WORK_DIR = tmp_path / "training-work"
    settings.TRAINING_DEVICE = "cpu"
    licence = paid_licence(hostile_version, carol)
    prompt = "a cat | <script>x</script> [p](http://evil.example)"
    launch = {
        "licence": str(licence.pk),
        "base_model_key": "demo",  # the tiny SD pipeline, built where TRAINING_DEMO_BASE_MODEL points
        "hyperparameters": {
            "resolution": 64, "batch_size": 1, "max_steps": 1, "validation_every": 0, "validation_steps": 1,
            "num_validation_images": 1, "checkpoint_every": 1, "validation_prompts": [prompt],
        },
    }  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client(staff).post("/api/training-runs/", launch, format="json")
    assert response.status_code == 201, response.content
    run_id = response.json()["id"]
    card = page_client(carol).get(reverse("training:file", args=[run_id, "card"]))
    assert card.status_code == 200, api_client(staff).get(f"/api/training-runs/{run_id}/").json()["error"]
    text = b"".join(card.streaming_content).decode()
    assert_user_text_is_only_text(text, HOSTILE_TITLE, HOSTILE_NAME, HOSTILE_ASSET_TITLE, prompt)


# --- upload file names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("cat <3 dog>.jpg", "cat <3 dog>.jpg"),
        ('"quoted" & <b>bold<b>.jpg', '"quoted" & <b>bold<b>.jpg'),
        ("Tom &amp; Jerry.jpg", "Tom &amp; Jerry.jpg"),  # Django's parser decoded entities: "Tom & Jerry.jpg"
        ("tab\there\x01.jpg", "tab here.jpg"),  # ... and dropped the tab: "tabhere.jpg"
        ("line\nbreak.jpg", "line break.jpg"),
        ("cafe\u0301.jpg", "café.jpg"),  # NFC: macOS sends the accent as a combining character
        ("photo\u202egpj.jpg", "photogpj.jpg"),  # an invisible right-to-left override
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("C:\\fakepath\\holiday.jpg", "holiday.jpg"),
        ("..", "upload"),
    ],
)
def test_upload_file_names_are_kept_readable_and_exact_and_shown_escaped(alice, sent, kept):
    response = upload(api_client(alice), photo_bytes("coffee"), sent)
    assert response.status_code == 201, response.content
    asset = Asset.objects.get(pk=response.json()["id"])
    assert response.json()["original_filename"] == asset.original_filename == kept
    assert asset.original.name.startswith(f"originals/{alice.pk}/") and ".." not in asset.original.name
    pages = page_client(alice)
    page = pages.get(reverse("catalog:asset", args=[asset.pk])).content.decode()
    assert html.escape(kept) in page
    download = pages.get(reverse("catalog:asset-file", args=[asset.pk, "original"]))
    # The download's name is ours, never the client's text in a header.
    assert download["Content-Disposition"] == f'attachment; filename="asset-{asset.pk}-original.jpeg"'


@pytest.mark.parametrize(
    "name, size",
    [("a" * 296 + ".jpg", 300), ("é" * 126 + ".jpg", 256), ("b" * 996 + ".jpg", None), ("c" * 5000, None)],
)
def test_an_over_long_file_name_is_refused_with_a_message_that_names_the_limit(alice, name, size):
    response = upload(api_client(alice), photo_bytes("coffee"), name)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "name_too_long" and body["file"] == [body["detail"]]
    assert "255 bytes" in body["detail"] and "parse error" not in body["detail"]
    if size:
        assert f"{size} bytes long" in body["detail"]
    assert not Asset.objects.exists()


def test_a_name_of_exactly_255_bytes_is_accepted_whole(alice):
    name = "d" * 251 + ".jpg"
    response = upload(api_client(alice), photo_bytes("coffee"), name)
    assert response.status_code == 201 and response.json()["original_filename"] == name


def test_a_nul_character_in_training_hyperparameters_is_a_400_not_a_database_error(
    hostile_version, carol, staff, tiny_base
):
    """PostgreSQL's jsonb refuses NUL: on PostgreSQL this launch was a 500 and no answer."""
    from training.models import TrainingRun

    licence = paid_licence(hostile_version, carol)
    for hyperparameters in ({"validation_prompts": ["a\x00b"]}, {"note\x00": 1}, {"nested": {"deep": ["ok", "\x00"]}}):
        response = api_client(staff).post(
            "/api/training-runs/",
            {"licence": str(licence.pk), "base_model_key": "demo", "hyperparameters": hyperparameters},
            format="json",
        )
        assert response.status_code == 400, response.content
        assert "NUL" in str(response.json()["hyperparameters"])
    assert not TrainingRun.objects.exists()
