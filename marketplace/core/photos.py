"""Real photographs shipped by scikit-image, for demo data, tests and benchmarks.

Several are smaller than the upload minimum, so they are enlarged (Lanczos) to a
chosen short side; the content stays a real photo.
"""

from pathlib import Path

from PIL import Image

# name -> file in skimage/data
PHOTOS = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "hubble": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
}


def _data_dir() -> Path:
    try:
        import skimage
    except ImportError as error:  # pragma: no cover - declared in the demo/test extras
        raise RuntimeError("Real photos come from scikit-image: pip install '.[demo]'") from error
    return Path(skimage.__file__).parent / "data"


def load_photo(name: str, *, min_short_side: int = 0) -> Image.Image:
    """An RGB photo, enlarged so that its shorter side is at least min_short_side."""
    image = Image.open(_data_dir() / PHOTOS[name]).convert("RGB")
    short = min(image.size)
    if short < min_short_side:
        scale = min_short_side / short
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image
