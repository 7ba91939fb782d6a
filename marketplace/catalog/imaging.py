"""The post-upload image pipeline: checksum, display size, preview, thumbnail, pHash, delivery copy.

Built for speed on one core, because every upload goes through it:
- JPEGs are decoded with libjpeg's DCT-domain scaling (``Image.draft``) at the smallest 1/2,
  1/4 or 1/8 scale that still covers the preview, so a 12-megapixel photo is never decoded,
  resized or re-encoded at full size;
- the thumbnail is derived from the preview, and the perceptual hash from the thumbnail;
- the delivery copy is made by rewriting the container's metadata (see ``imagemeta``), without
  touching the compressed pixels, so it costs neither decoding nor quality;
- the upload is hashed once.
No Django imports.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

import imagehash
from PIL import Image, ImageCms, UnidentifiedImageError

from marketplace.catalog.imagemeta import EmbeddedMetadata, read_embedded_metadata, strip_location

__all__ = ["ImageProcessingError", "PreparedImage", "prepare_image"]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
_DERIVED_JPEG_QUALITY = 85
# After DCT scaling a JPEG preview is less than 2x smaller than what was decoded. Area averaging
# (Pillow's BOX when shrinking, OpenCV's INTER_AREA) does not alias and costs less than half of
# bicubic on one core, where this resample is the largest step after decoding.
_PREVIEW_RESAMPLE = Image.Resampling.BOX
# Thumbnails come from the preview by an integer box reduce() (1280 -> 320 is exactly 4x),
# then a resample over what remains: a few times cheaper than resampling the whole way.
_THUMBNAIL_REDUCING_GAP = 1.0
# The same mapping as PIL.ImageOps.exif_transpose, applied to the (small) preview only.
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SRGB = ImageCms.createProfile("sRGB")
_DAMAGED = "The image file is damaged or incomplete and could not be decoded."
# What Pillow raises on corrupt or truncated data, depending on where the damage is.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


class ImageProcessingError(Exception):
    """The upload cannot be processed; the message is written for the person who uploaded it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class PreparedImage:
    sha256: str  # hex digest of the uploaded bytes
    format: str  # "JPEG", "PNG" or "WEBP"
    width: int  # display size: EXIF orientation applied
    height: int
    byte_size: int
    thumbnail: bytes  # JPEG, longest side <= thumb_px, no metadata
    preview: bytes  # JPEG, longest side <= preview_px, no metadata
    delivery: bytes  # the original without location metadata
    delivery_lossless: bool  # True: the delivery copy has the original's compressed pixels
    removed_metadata: tuple[str, ...]
    phash: str  # 16 hex digits, imagehash.phash of the oriented image
    metadata: EmbeddedMetadata


def prepare_image(data: bytes, *, preview_px: int = 1280, thumb_px: int = 320) -> PreparedImage:
    """Everything the catalogue needs from one uploaded image; raises ImageProcessingError."""
    if preview_px < 1 or thumb_px < 1:
        raise ValueError("preview_px and thumb_px must be positive")
    metadata = read_embedded_metadata(data)
    image_format, (stored_width, stored_height), reduced = _decode_for_preview(data, preview_px)
    preview = _display_rgb(reduced, metadata.orientation, preview_px)
    thumbnail = preview.copy()
    thumbnail.thumbnail((thumb_px, thumb_px), reducing_gap=_THUMBNAIL_REDUCING_GAP)
    try:
        delivery = strip_location(data)
    except ValueError as error:
        raise ImageProcessingError(_DAMAGED) from error
    quarter_turn = metadata.orientation in (5, 6, 7, 8)
    return PreparedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        format=image_format,
        width=stored_height if quarter_turn else stored_width,
        height=stored_width if quarter_turn else stored_height,
        byte_size=len(data),
        thumbnail=_jpeg_bytes(thumbnail),
        preview=_jpeg_bytes(preview),
        delivery=delivery.data,
        delivery_lossless=delivery.lossless,
        removed_metadata=delivery.removed,
        # pHash looks at 32x32 pixels: from the thumbnail it equals the full image's (see bench).
        phash=str(imagehash.phash(thumbnail)),
        metadata=metadata,
    )


def _decode_for_preview(data: bytes, longest_side: int) -> tuple[str, tuple[int, int], Image.Image]:
    """(format, stored full size, pixels decoded at no less than the preview needs)."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        # Multi-picture JPEGs (some phones' photos) open as MPO; the first picture is a plain JPEG.
        image_format = "JPEG" if image.format == "MPO" else image.format
        full_size = image.size
        if image_format == "JPEG":
            image.draft("RGB", _fitted_size(full_size, longest_side))
        image.load()
    except UnidentifiedImageError as error:
        raise ImageProcessingError("This file is not a JPEG, PNG or WebP image.") from error
    except Image.DecompressionBombError as error:
        raise ImageProcessingError("This image has too many pixels to process.") from error
    except _DECODE_ERRORS as error:
        raise ImageProcessingError(_DAMAGED) from error
    return image_format, full_size, image


def _fitted_size(size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    scale = min(1.0, longest_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _display_rgb(image: Image.Image, orientation: int, longest_side: int) -> Image.Image:
    """The image as a viewer shows it: sRGB, no alpha, upright, at most longest_side."""
    icc_profile = image.info.get("icc_profile")
    image = _resizable(image)
    image.thumbnail((longest_side, longest_side), resample=_PREVIEW_RESAMPLE, reducing_gap=None)
    if icc_profile:
        image = _to_srgb(image, icc_profile)
    rgb = _on_white(image)
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    rgb.info = {}  # nothing from the original's metadata may reach the derived files
    return rgb


def _resizable(image: Image.Image) -> Image.Image:
    """A mode Pillow resamples properly (palette images would fall back to nearest-neighbour)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit greyscale PNG: scale, don't clip
        return image.convert("I").point(lambda value: value * (1 / 257)).convert("L")
    if "transparency" in image.info or image.mode in ("PA", "P", "1"):
        return image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    return image


def _on_white(image: Image.Image) -> Image.Image:
    if image.mode not in ("RGBA", "LA", "RGBa", "La"):
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    """Derived files carry no profile, so wide-gamut originals are converted rather than mislabelled."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, source, _SRGB, outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # an unreadable profile: showing the pixels as sRGB is the best guess


def _jpeg_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=_DERIVED_JPEG_QUALITY)
    return out.getvalue()
