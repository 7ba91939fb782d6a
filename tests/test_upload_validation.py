"""Every kind of bad upload is refused with a clear reason and leaves nothing behind."""

import io
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from marketplace.catalog.models import Asset, AssetEvent
from tests.conftest import photo_bytes, stored_files

UPLOAD_URL = "/api/assets/"


@pytest.fixture
def client(alice):
    api = APIClient()
    api.force_authenticate(alice)
    return api


def upload(client, data: bytes, name="photo.jpg", content_type="image/jpeg"):
    return client.post(UPLOAD_URL, {"file": SimpleUploadedFile(name, data, content_type=content_type)})


def assert_nothing_stored(media_root):
    assert Asset.objects.count() == 0
    assert AssetEvent.objects.count() == 0
    assert stored_files(media_root) == []


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (800, 800), "red").save(buffer, "GIF")
    return buffer.getvalue()


def _pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


SVG = (
    b'<?xml version="1.0"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="800" height="800"><script>alert(1)</script></svg>'
)
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


@pytest.mark.parametrize(
    "data, name, content_type, code, words",
    [
        (SVG, "vector.svg", "image/svg+xml", "unsupported_type", "SVG files are not accepted"),
        (SVG, "disguised.jpg", "image/jpeg", "unsupported_type", "SVG files are not accepted"),
        (_gif(), "anim.gif", "image/gif", "unsupported_type", "GIF files are not accepted"),
        (_pdf(), "doc.pdf", "application/pdf", "unsupported_type", "PDF files are not accepted"),
        (HTML, "page.png", "image/png", "unsupported_type", "HTML files are not accepted"),
        (b"just some text, named like a photo", "photo.jpg", "image/jpeg", "unsupported_type", "not an image"),
        (b"", "empty.jpg", "image/jpeg", "empty", "empty"),
    ],
    ids=["svg", "svg-named-jpg", "gif", "pdf", "html-named-png", "text-named-jpg", "empty"],
)
def test_files_that_are_not_accepted_images_are_refused(client, media_root, data, name, content_type, code, words):
    response = upload(client, data, name, content_type)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert words in response.json()["detail"]
    assert_nothing_stored(media_root)


def test_a_truncated_jpeg_is_refused(client, media_root):
    data = photo_bytes("astronaut", "JPEG")
    response = upload(client, data[: len(data) * 2 // 3])
    assert response.status_code == 400
    assert response.json() == {
        "code": "corrupt",
        "detail": "The JPEG file is damaged or incomplete.",
        "file": ["The JPEG file is damaged or incomplete."],
    }
    assert_nothing_stored(media_root)


def test_a_png_with_corrupt_image_data_is_refused(client, media_root):
    data = bytearray(photo_bytes("coffee", "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 400] = b"\x00" * 360  # scramble compressed pixels
    response = upload(client, bytes(data), "coffee.png", "image/png")
    assert response.status_code == 400
    assert response.json()["code"] == "corrupt"
    assert_nothing_stored(media_root)


def test_content_decides_the_type_not_the_extension(client, media_root):
    response = upload(client, photo_bytes("astronaut", "PNG"), "really-a-png.jpg", "image/jpeg")
    assert response.status_code == 201
    assert response.json()["format"] == "PNG"


def test_webp_is_accepted(client):
    response = upload(client, photo_bytes("rocket", "WEBP", quality=90), "rocket.webp", "image/webp")
    assert response.status_code == 201, response.json()
    assert response.json()["format"] == "WEBP"


def test_an_image_over_the_pixel_limit_is_refused(client, media_root, settings):
    settings.UPLOAD_MAX_PIXELS = 500_000
    response = upload(client, photo_bytes("astronaut", size=(1000, 800)))
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_pixels"
    assert "1000×800 px; the limit is 0.5 megapixels" in response.json()["detail"]
    assert_nothing_stored(media_root)


def test_pillows_decompression_bomb_warning_is_a_rejection(client, media_root, monkeypatch):
    # Even if our own limit were higher, Pillow's bomb warning is never ignored.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600_000)
    response = upload(client, photo_bytes("astronaut", size=(1000, 800)))
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_pixels"
    assert_nothing_stored(media_root)


def test_a_decompression_bomb_png_is_refused_without_decoding_it(client, media_root):
    # A 30000×30000 PNG header with a tiny body: refused from the header alone.
    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = (30000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    response = upload(client, bomb, "bomb.png", "image/png")
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_pixels"
    assert_nothing_stored(media_root)


def test_a_file_over_the_size_limit_is_refused(client, media_root, settings):
    settings.UPLOAD_MAX_BYTES = 50_000
    response = upload(client, photo_bytes("astronaut"))
    assert response.status_code == 400
    assert response.json()["code"] == "too_large"
    assert "the limit is 0.1 MB" in response.json()["detail"]
    assert_nothing_stored(media_root)


def test_an_image_under_the_minimum_resolution_is_refused(client, media_root):
    response = upload(client, photo_bytes("chelsea", min_short_side=0))  # 451×300
    assert response.status_code == 400
    assert response.json()["detail"] == "The image is 451×300 px; its shorter side must be at least 512 px."
    assert_nothing_stored(media_root)


def test_the_minimum_resolution_is_a_setting(client, settings):
    settings.UPLOAD_MIN_SHORT_SIDE = 256
    assert upload(client, photo_bytes("chelsea", min_short_side=0)).status_code == 201


def test_an_animated_webp_is_refused(client, media_root):
    frames = [Image.new("RGB", (600, 600), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
    response = upload(client, buffer.getvalue(), "anim.webp", "image/webp")
    assert response.status_code == 400
    assert response.json()["code"] == "animated"
    assert_nothing_stored(media_root)


def test_an_exact_duplicate_of_my_own_image_is_refused_with_a_link(client, media_root):
    data = photo_bytes("rocket")
    first = upload(client, data)
    assert first.status_code == 201
    files_before = stored_files(media_root)
    again = upload(client, data, "renamed.jpg")
    assert again.status_code == 409
    body = again.json()
    assert body["code"] == "duplicate"
    assert body["existing"] == {"id": first.json()["id"], "page_url": f"/assets/{first.json()['id']}/"}
    assert Asset.objects.count() == 1
    assert stored_files(media_root) == files_before


def test_the_same_image_from_another_creator_is_not_an_upload_duplicate(client, bob):
    data = photo_bytes("rocket")
    assert upload(client, data).status_code == 201
    other = APIClient()
    other.force_authenticate(bob)
    assert upload(other, data).status_code == 201  # cross-creator duplicates are curation's job


def test_no_file_at_all(client, media_root):
    response = client.post(UPLOAD_URL, {"title": "nothing"})
    assert response.status_code == 400
    assert response.json()["file"] == ["No file was sent."]
    assert_nothing_stored(media_root)
