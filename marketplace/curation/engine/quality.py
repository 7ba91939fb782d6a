"""Image quality signals (PIL and numpy only): resolution, aspect ratio, sharpness, exposure, hashes.

Measured on a grayscale copy with its longest side at ANALYSIS_SIDE px, so figures compare across
upload sizes. The verdict is a review signal with readable reasons, not an automatic rejection.
"""

import io
from dataclasses import asdict, dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps

ANALYSIS_SIDE = 512
ORIENTATION_TAG = 0x0112
MIN_MEGAPIXELS = 0.25  # the upload floor is 512 px on the short side
MAX_ASPECT_RATIO = 3.0
# Sharpness is the 90th percentile of the Laplacian's variance over an 8x8 grid of tiles: a sharp subject
# on a plain backdrop (studio, sky) has sharp tiles, where the whole image's variance would call it blurry.
# Calibrated on scikit-image's photographs at 600-1280 px: sharp ones score 110 (moon, the softest) to
# 5600; Gaussian-blurred copies score 8-50 at radius 3 px and 30-160 at radius 2 px (printed text more).
SHARPNESS_GRID = 8
MIN_SHARPNESS = 100.0
# Exposure looks at luminance (0-1) quartiles. Overexposed: the median pixel is near white and so is the
# darker quarter of the frame. A product isolated on white keeps a darker quarter (its subject), so it
# passes; likewise, mirrored, for underexposure and subjects on black. Calibrated on scikit-image's
# photographs: none is flagged but the Hubble deep field (median 0.05); at 2.5x brightness most are
# overexposed, at 0.3x almost all are underexposed.
OVEREXPOSED_MEDIAN, OVEREXPOSED_P25 = 0.8, 0.3
UNDEREXPOSED_MEDIAN, UNDEREXPOSED_P75 = 0.2, 0.7
CLIPPED_DARK, CLIPPED_BRIGHT = 2 / 255, 253 / 255


@dataclass(frozen=True)
class Quality:
    width: int
    height: int
    megapixels: float
    aspect_ratio: float  # long side / short side
    sharpness: float
    luminance_p25: float  # luminance quartiles, 0-1
    luminance_median: float
    luminance_p75: float
    clipped_dark: float  # fraction of pixels at pure black
    clipped_bright: float  # fraction of pixels at pure white
    dhash: str  # the pHash comes from the ingest pipeline (catalog.imaging)
    reasons: tuple[str, ...]  # empty when the image looks fine

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons), "ok": self.ok}


def assess_quality(image: bytes | Image.Image, width: int | None = None, height: int | None = None) -> Quality:
    """Quality of an image (bytes or PIL). width and height are the original's, when `image` is a preview."""
    gray, size = _analysis_copy(image)
    width, height = (width, height) if width and height else size
    pixels = np.asarray(gray, dtype=np.float32)
    luminance = pixels / 255
    p25, median, p75 = (float(value) for value in np.percentile(luminance, [25, 50, 75]))
    megapixels = width * height / 1e6
    aspect_ratio = max(width, height) / min(width, height)
    sharpness = laplacian_sharpness(pixels)
    reasons = []
    if megapixels < MIN_MEGAPIXELS:
        reasons.append(f"low resolution: {megapixels:.2f} MP (under {MIN_MEGAPIXELS} MP)")
    if aspect_ratio > MAX_ASPECT_RATIO:
        reasons.append(f"extreme aspect ratio: {aspect_ratio:.1f}:1 (over {MAX_ASPECT_RATIO:g}:1)")
    if sharpness < MIN_SHARPNESS:
        reasons.append(f"blurry: sharpness {sharpness:.0f} (under {MIN_SHARPNESS:.0f})")
    if median > OVEREXPOSED_MEDIAN and p25 > OVEREXPOSED_P25:
        reasons.append(f"overexposed: half the image is above {median:.0%} brightness, three quarters above {p25:.0%}")
    if median < UNDEREXPOSED_MEDIAN and p75 < UNDEREXPOSED_P75:
        reasons.append(f"underexposed: half the image is below {median:.0%} brightness, three quarters below {p75:.0%}")
    return Quality(
        width=width,
        height=height,
        megapixels=round(megapixels, 3),
        aspect_ratio=round(aspect_ratio, 3),
        sharpness=round(sharpness, 1),
        luminance_p25=round(p25, 3),
        luminance_median=round(median, 3),
        luminance_p75=round(p75, 3),
        clipped_dark=round(float((luminance <= CLIPPED_DARK).mean()), 4),
        clipped_bright=round(float((luminance >= CLIPPED_BRIGHT).mean()), 4),
        dhash=str(imagehash.dhash(gray)),
        reasons=tuple(reasons),
    )


def _analysis_copy(image: bytes | Image.Image) -> tuple[Image.Image, tuple[int, int]]:
    """(upright grayscale with its longest side at ANALYSIS_SIDE px, upright full size).

    JPEGs decode at reduced DCT scale, no larger than the analysis needs."""
    if isinstance(image, Image.Image):
        gray = ImageOps.exif_transpose(image).convert("L")
        size = gray.size
    else:
        with Image.open(io.BytesIO(image)) as opened:
            quarter_turned = opened.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8)
            size = opened.size[::-1] if quarter_turned else opened.size
            opened.draft("L", (ANALYSIS_SIDE, ANALYSIS_SIDE))
            gray = ImageOps.exif_transpose(opened).convert("L")
    scale = ANALYSIS_SIDE / max(gray.size)
    reduced = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    return gray.resize(reduced, Image.Resampling.BOX), size


def laplacian_sharpness(pixels: np.ndarray) -> float:
    """90th percentile over a grid of tiles of the variance of the 4-neighbour Laplacian."""
    laplacian = pixels[1:-1, :-2] + pixels[1:-1, 2:] + pixels[:-2, 1:-1] + pixels[2:, 1:-1] - 4 * pixels[1:-1, 1:-1]
    variances = [
        tile.var()
        for band in np.array_split(laplacian, SHARPNESS_GRID, axis=0)
        for tile in np.array_split(band, SHARPNESS_GRID, axis=1)
        if tile.size
    ]
    return float(np.percentile(variances, 90)) if variances else 0.0
