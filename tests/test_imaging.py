"""The post-upload pipeline on real photos: sizes, derived files, delivery copy, failures (no Django)."""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageCms
from skimage import data as skdata

from marketplace.catalog.imaging import ImageProcessingError, prepare_image

GPS_IFD, EXIF_IFD = 0x8825, 0x8769


def photo(name: str = "astronaut") -> Image.Image:
    return Image.fromarray(getattr(skdata, name)())


def large_photo() -> Image.Image:
    """3000x2000 (6 MP) from real photos, big enough that JPEG decoding is scaled down."""
    canvas = Image.new("RGB", (3000, 2000))
    for index, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")):
        canvas.paste(photo(name).resize((1000, 1000)), ((index % 3) * 1000, (index // 3) * 1000))
    return canvas


def camera_exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Nikon", "Z 8", orientation
    sub_ifd = exif.get_ifd(EXIF_IFD)
    sub_ifd[0x9003], sub_ifd[0xA434] = "2023:08:01 09:30:00", "NIKKOR Z 24-70mm f/4 S"
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2], gps[3], gps[4] = "N", (51.0, 30.0, 26.0), "W", (0.0, 7.0, 39.0)
    return exif.tobytes()


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **options)
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_has_no_metadata(jpeg_bytes: bytes) -> None:
    image = opened(jpeg_bytes)
    assert image.format == "JPEG"
    assert not image.getexif()
    assert not {"exif", "xmp", "icc_profile", "comment", "photoshop"} & set(image.info)
    assert [marker for marker, _ in image.applist] == ["APP0"]  # the bare JFIF header only


def assert_no_gps(data: bytes) -> None:
    exif = opened(data).getexif()
    assert GPS_IFD not in exif and exif.get_ifd(GPS_IFD) == {}


@pytest.fixture(scope="module")
def upload() -> bytes:
    return encoded(large_photo(), "JPEG", quality=92, exif=camera_exif())


@pytest.fixture(scope="module")
def prepared(upload):
    return prepare_image(upload)


def test_jpeg_upload_gets_derived_files_and_a_lossless_location_free_copy(upload, prepared):
    assert prepared.format == "JPEG"
    assert (prepared.width, prepared.height) == (3000, 2000)
    assert prepared.byte_size == len(upload) and prepared.sha256 == hashlib.sha256(upload).hexdigest()
    assert opened(prepared.preview).size == (1280, 853)  # scaled decoding still fills the preview
    assert opened(prepared.thumbnail).size == (320, 213)
    assert_has_no_metadata(prepared.preview)
    assert_has_no_metadata(prepared.thumbnail)

    assert prepared.delivery_lossless is True and "EXIF GPS position" in prepared.removed_metadata
    assert_no_gps(prepared.delivery)
    assert np.array_equal(np.asarray(opened(prepared.delivery)), np.asarray(opened(upload)))
    assert prepared.delivery[prepared.delivery.index(b"\xff\xda") :] == upload[upload.index(b"\xff\xda") :]


def test_camera_metadata_is_reported_and_kept_in_the_delivery_copy(prepared):
    assert (prepared.metadata.camera_make, prepared.metadata.camera_model) == ("Nikon", "Z 8")
    assert prepared.metadata.lens_model == "NIKKOR Z 24-70mm f/4 S"
    assert prepared.metadata.has_location is True  # what the upload had, before stripping
    sub_ifd = opened(prepared.delivery).getexif().get_ifd(EXIF_IFD)
    assert sub_ifd[0x9003] == "2023:08:01 09:30:00" and sub_ifd[0xA434] == "NIKKOR Z 24-70mm f/4 S"


def test_derived_files_look_like_the_original(upload, prepared):
    original = opened(upload).convert("RGB")
    expected = np.asarray(original.resize((320, 213), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(opened(prepared.thumbnail), dtype=float) - expected).mean() < 8  # of 255

    phash = imagehash.hex_to_hash(prepared.phash)
    assert len(prepared.phash) == 16
    assert phash - imagehash.phash(original) <= 4  # duplicates are found against full-size hashes


def test_orientation_6_gives_portrait_size_and_upright_thumbnail():
    landscape = photo("chelsea")  # 451x300, stored sideways: the camera was turned
    upload = encoded(landscape, "JPEG", quality=95, exif=camera_exif(orientation=6))

    prepared = prepare_image(upload)

    assert prepared.metadata.orientation == 6
    assert (prepared.width, prepared.height) == (300, 451)
    thumbnail = np.asarray(opened(prepared.thumbnail), dtype=float)
    assert thumbnail.shape[:2] == (320, 213)
    upright = np.asarray(landscape.transpose(Image.Transpose.ROTATE_270).resize((213, 320)), dtype=float)
    sideways = np.asarray(landscape.resize((213, 320)), dtype=float)
    assert np.abs(thumbnail - upright).mean() < 8 < np.abs(thumbnail - sideways).mean()
    assert prepared.delivery_lossless and opened(prepared.delivery).getexif()[0x0112] == 6  # viewers rotate it


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_png_and_webp_with_transparency_get_white_backgrounds_and_no_gps(image_format):
    rgba = photo("coffee").convert("RGBA")  # 600x400
    alpha = np.full((400, 600), 255, dtype=np.uint8)
    alpha[:, :100] = 0  # a fully transparent left band
    rgba.putalpha(Image.fromarray(alpha))
    options = {"lossless": True} if image_format == "WEBP" else {}
    upload = encoded(rgba, image_format, exif=camera_exif(), **options)

    prepared = prepare_image(upload, preview_px=300, thumb_px=150)

    assert prepared.format == image_format and (prepared.width, prepared.height) == (600, 400)
    preview, thumbnail = opened(prepared.preview), opened(prepared.thumbnail)
    assert preview.size == (300, 200) and thumbnail.size == (150, 100)
    assert np.asarray(thumbnail)[:, :20].min() > 240  # transparent became white, not black
    assert_has_no_metadata(prepared.preview)
    assert prepared.delivery_lossless and prepared.removed_metadata == ("EXIF GPS position",)
    assert_no_gps(prepared.delivery)
    assert np.array_equal(np.asarray(opened(prepared.delivery)), np.asarray(opened(upload)))


def test_palette_png_with_transparency_is_composited():
    palette = photo("astronaut").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0

    prepared = prepare_image(encoded(palette, "PNG", transparency=0), thumb_px=64)

    assert opened(prepared.thumbnail).mode == "RGB" and opened(prepared.thumbnail).size == (64, 64)


def test_16_bit_greyscale_png_keeps_its_tones():
    tones = np.asarray(photo("camera"), dtype=np.uint16) * 257  # 8-bit photo spread over 16 bits
    upload = encoded(Image.fromarray(tones), "PNG")

    preview = np.asarray(opened(prepare_image(upload, preview_px=512).preview).convert("L"), dtype=float)

    assert abs(preview.mean() - np.asarray(photo("camera")).mean()) < 3  # not clipped to white


def test_small_images_are_not_upscaled():
    prepared = prepare_image(encoded(photo("chelsea"), "JPEG"))

    assert opened(prepared.preview).size == (451, 300)
    assert opened(prepared.thumbnail).size == (320, 213)


def test_embedded_colour_profile_is_applied_not_copied():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

    prepared = prepare_image(encoded(photo("coffee"), "JPEG", icc_profile=srgb))

    assert_has_no_metadata(prepared.preview)
    assert opened(prepared.delivery).info["icc_profile"] == srgb  # the delivery copy keeps it


def test_truncated_upload_is_reported_as_damaged(upload):
    with pytest.raises(ImageProcessingError, match="damaged or incomplete") as caught:
        prepare_image(upload[: len(upload) // 2])
    assert caught.value.message == str(caught.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is text", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "text", "jpeg-header-only", "png-signature-only"],
)
def test_bytes_that_are_no_image_raise_a_readable_error(data):
    with pytest.raises(ImageProcessingError) as caught:
        prepare_image(data)
    assert caught.value.message.startswith(("This file is not", "The image file is damaged"))


def test_other_image_formats_are_refused():
    with pytest.raises(ImageProcessingError, match="not a JPEG, PNG or WebP"):
        prepare_image(encoded(photo("chelsea"), "GIF"))


def test_orientation_values_outside_the_standard_are_ignored():
    upload = encoded(photo("chelsea"), "JPEG", exif=camera_exif(orientation=9))

    prepared = prepare_image(upload)

    assert (prepared.width, prepared.height) == (451, 300) and prepared.metadata.orientation == 1


def test_sizes_must_be_positive(upload):
    with pytest.raises(ValueError):
        prepare_image(upload, thumb_px=0)
