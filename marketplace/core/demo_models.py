"""The models the demo (`make run`) needs, built on this machine: nothing here is downloaded.

- A tiny Stable Diffusion pipeline for the demo training run (the base model "demo"), built from small configs
  and saved where TRAINING_DEMO_BASE_MODEL points; tiny pipelines of the other families (the "demo-<family>"
  base models) beside it, when built with `build_demo_model(family)`.
- Where the configured curation model's weights cannot be had (no model hub, nothing cached), a tiny CLIP
  trained in seconds on the demo photos stands in for it, so that the demo still curates and publishes its
  pack. Used only when DEMO_OFFLINE_MODELS is on (make run), and always announced.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings

STAND_IN_FOLDER = "curation-demo"


def demo_model_folder(family: str = "sd") -> Path:
    """Where the tiny pipeline of `family` is built: TRAINING_DEMO_BASE_MODEL for Stable Diffusion (the demo
    run's), `tiny-<family>` beside it for the other families."""
    folder = Path(settings.TRAINING_DEMO_BASE_MODEL)
    return folder if family == "sd" else folder.parent / f"tiny-{family}"


def tiny_model_built(folder: Path, family: str) -> bool:
    """Whether `folder` holds a complete tiny pipeline of `family` (reads its marker; imports no model library)."""
    from training.engine import tiny

    folder = Path(folder)
    if family == "sd":
        return tiny.is_tiny_pipeline_built(folder)  # also checks the current shape: an outdated one is rebuilt
    try:
        marker = json.loads((folder / tiny._MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("family") == family and (folder / "model_index.json").is_file()


def build_demo_model(family: str = "sd") -> Path:
    """The tiny pipeline of `family` for demo runs, built once in seconds. The SD one, once built, imports nothing
    (seed_demo calls this each time); the other families' builders reuse a complete folder of the current shape."""
    folder = demo_model_folder(family)
    if family == "sd" and tiny_model_built(folder, family):
        return folder
    from diffusers.utils import logging as diffusers_logging

    from training.engine.tiny import build_tiny

    diffusers_logging.disable_progress_bar()  # seed_demo's output stays readable
    return build_tiny(family, folder)


def build_demo_base_model() -> Path:
    """The tiny SD pipeline of the demo run (the base model "demo")."""
    return build_demo_model("sd")


def demo_base_model_ready() -> bool:
    return tiny_model_built(demo_model_folder("sd"), "sd")


def curation_model_problem() -> str | None:
    """Why the configured curation model cannot be loaded here, or None when its weights can be had."""
    from marketplace.curation import services
    from marketplace.curation.engine import clip

    try:
        clip.check_weights(services.model_spec())
    except clip.ModelUnavailable as error:
        return str(error)
    return None


def curation_stand_in() -> dict[str, str]:
    """Settings (as environment variables) for the tiny CLIP trained on the demo photos; trained once."""
    from marketplace.core.photos import PHOTOS, load_photo
    from marketplace.curation.engine.demo_model import PHOTO_CLIP, train_photo_clip

    photos = (load_photo(name) for name in PHOTOS)  # read only when the stand-in is not trained yet
    checkpoint = train_photo_clip(Path(settings.VAR_DIR) / "models" / STAND_IN_FOLDER, photos)
    return {"CURATION_CLIP_MODEL": PHOTO_CLIP, "CURATION_CLIP_PRETRAINED": str(checkpoint)}
