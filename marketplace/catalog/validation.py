"""What the server accepts: JPEG, PNG and WebP images, identified by their bytes.

Every rejection is an UploadRejected with a message a person understands and a
stable code that the API and tests use.
"""

import hashlib
import io
import re
import unicodedata
import warnings
from dataclasses import dataclass

from django.conf import settings
from PIL import Image

ACCEPTED = "Upload a JPEG, PNG or WebP image."

# Content signatures of formats people commonly try, so the message can name them.
_KNOWN_REJECTED = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF-", "PDF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"8BPS", "Photoshop (PSD)"),
)


class UploadRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class InspectedImage:
    format: str  # "JPEG", "PNG" or "WEBP"
    width: int  # as displayed, EXIF orientation applied
    height: int
    sha256: str
    byte_size: int


def sniff_format(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_unaccepted(head: bytes) -> str:
    for signature, name in _KNOWN_REJECTED:
        if head.startswith(signature):
            return f"{name} files are not accepted. {ACCEPTED}"
    text = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text or (text.startswith(b"<?xml") and b"svg" in text):
        return f"SVG files are not accepted. {ACCEPTED}"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return f"HTML files are not accepted. {ACCEPTED}"
    if text[:4] == b"ftyp" or head[4:8] == b"ftyp":
        return f"HEIC/AVIF and video files are not accepted. {ACCEPTED}"
    return f"This file is not an image we can read. {ACCEPTED}"


# --- file names ------------------------------------------------------------------------------

# As filesystems count (ext4, APFS, NTFS all stop near 255): longer names are refused, never cut short.
FILENAME_MAX_BYTES = 255
# Characters that change how text around them is displayed without being visible themselves: the
# bidirectional controls ("photo\u202egpj.exe" shows as "photoexe.jpg") and the byte-order mark.
_INVISIBLE = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"))
_PATH_SEPARATORS = re.compile(r"[/\\]")
# Browsers write a name's `"`, CR and LF as %22, %0D and %0A in a multipart form (the HTML standard's
# encoding); Django passes them on as typed.
_BROWSER_ESCAPES = re.compile(r"%22|%0D|%0A", re.IGNORECASE)


def filename_too_long(size: int | None = None) -> UploadRejected:
    length = f"{size} bytes long" if size else "too long"
    return UploadRejected(
        "name_too_long",
        f"The file name is {length}; the limit is {FILENAME_MAX_BYTES} bytes (UTF-8). Rename the file and upload it "
        "again.",
    )


def clean_filename(name: str | None) -> str:
    """An uploaded file's name as we keep and show it: the client's name, readable and exact where it is
    safe, or UploadRejected("name_too_long").

    The browsers' %22, %0D and %0A read back; Unicode NFC (macOS sends "é" decomposed); only the part
    after the last / or \\ (a path is not a name); control characters go, and white space of any kind (a
    tab, a newline: never into a header or a log line) becomes one space; invisible direction controls
    go. Everything else, `<`, `>`, `&` and quotes included, is kept as typed: it is data, escaped wherever
    it is shown (templates, Markdown).
    """
    text = _BROWSER_ESCAPES.sub(lambda match: '"' if match.group().upper() == "%22" else " ", name or "")
    text = unicodedata.normalize("NFC", text)
    text = _PATH_SEPARATORS.split(text)[-1].translate(_INVISIBLE)
    text = "".join(char for char in text if unicodedata.category(char) not in ("Cc", "Cs") or char.isspace())
    text = " ".join(text.split())  # every kind of white space (tab, newline, U+2028) as one space
    if text in ("", ".", ".."):
        return "upload"
    size = len(text.encode("utf-8"))
    if size > FILENAME_MAX_BYTES:
        raise filename_too_long(size)
    return text


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def check_size(size: int) -> None:
    if size == 0:
        raise UploadRejected("empty", "The file is empty.")
    if size > settings.UPLOAD_MAX_BYTES:
        raise UploadRejected(
            "too_large",
            f"The file is {_megabytes(size)}; the limit is {_megabytes(settings.UPLOAD_MAX_BYTES)}.",
        )


def inspect_image(data: bytes) -> InspectedImage:
    """Check an uploaded file against every rule; raise UploadRejected on the first failure."""
    size = len(data)
    check_size(size)
    kind = sniff_format(data[:32])
    if kind is None:
        raise UploadRejected("unsupported_type", _describe_unaccepted(data[:1024]))

    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse outright.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise _too_many_pixels(None) from None
        except Exception:
            raise UploadRejected("corrupt", f"The {_label(kind)} file is damaged or incomplete.") from None

        if width * height > settings.UPLOAD_MAX_PIXELS:
            raise _too_many_pixels((width, height))
        if getattr(image, "is_animated", False):
            raise UploadRejected(
                "animated", "Animated images are not accepted. Upload a still JPEG, PNG or WebP image."
            )
        short_side = min(width, height)
        if short_side < settings.UPLOAD_MIN_SHORT_SIDE:
            raise UploadRejected(
                "too_small",
                f"The image is {width}×{height} px; its shorter side must be at least "
                f"{settings.UPLOAD_MIN_SHORT_SIDE} px.",
            )
        try:
            if kind == "JPEG":
                # Decoding at 1/8 scale still reads every entropy-coded byte, so truncation
                # and corruption are found without the cost of a full-size decode.
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise _too_many_pixels((width, height)) from None
        except Exception:
            raise UploadRejected("corrupt", f"The {_label(kind)} file is damaged or incomplete.") from None

        orientation = image.getexif().get(0x0112, 1) if kind == "JPEG" else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return InspectedImage(
        format=kind, width=width, height=height, sha256=hashlib.sha256(data).hexdigest(), byte_size=size
    )


def _label(kind: str) -> str:
    return {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}[kind]


def _too_many_pixels(size: tuple[int, int] | None) -> UploadRejected:
    limit = settings.UPLOAD_MAX_PIXELS / 1_000_000
    detail = f"{size[0]}×{size[1]} px" if size else "too many pixels"
    return UploadRejected("too_many_pixels", f"The image is {detail}; the limit is {limit:g} megapixels.")


# Release documents (model and property releases): PDF or a scan as JPEG/PNG.
def inspect_release(data: bytes) -> str:
    """Return the file extension for a release document, or raise UploadRejected."""
    if not data:
        raise UploadRejected("empty", "The release file is empty.")
    if len(data) > settings.RELEASE_MAX_BYTES:
        raise UploadRejected(
            "too_large",
            f"The release file is {_megabytes(len(data))}; the limit is {_megabytes(settings.RELEASE_MAX_BYTES)}.",
        )
    if data.startswith(b"%PDF-"):
        return "pdf"
    kind = sniff_format(data[:32])
    if kind in ("JPEG", "PNG"):
        try:
            Image.open(io.BytesIO(data), formats=[kind]).verify()
        except Exception:
            raise UploadRejected("corrupt", "The release scan is damaged or incomplete.") from None
        return kind.lower().replace("jpeg", "jpg")
    raise UploadRejected("unsupported_type", "A release must be a PDF, or a scan as JPEG or PNG.")
