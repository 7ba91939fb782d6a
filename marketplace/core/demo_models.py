"""The models the demo (`make run`) needs, built on this machine: nothing here is downloaded.

- A tiny Stable Diffusion pipeline for the demo training run (the "Demo" preset), built from small configs
  and saved where TRAINING_DEMO_BASE_MODEL points.
- Where the configured curation model's weights cannot be had (no model hub, nothing cached), a tiny CLIP
  trained in seconds on the demo photos stands in for it, so that the demo still curates and publishes its
  pack. Used only when DEMO_OFFLINE_MODELS is on (make run), and always announced.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

STAND_IN_FOLDER = "curation-demo"


def build_demo_base_model() -> Path:
    """The tiny SD pipeline for demo runs (built once, in a few seconds; after that, nothing is imported)."""
    folder = Path(settings.TRAINING_DEMO_BASE_MODEL)
    if demo_base_model_ready():
        return folder
    from diffusers.utils import logging as diffusers_logging

    from training.engine.tiny import build_tiny_pipeline

    diffusers_logging.disable_progress_bar()  # seed_demo's output stays readable
    return build_tiny_pipeline(folder)


def demo_base_model_ready() -> bool:
    from training.engine.tiny import is_tiny_pipeline_built

    return is_tiny_pipeline_built(Path(settings.TRAINING_DEMO_BASE_MODEL))


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
