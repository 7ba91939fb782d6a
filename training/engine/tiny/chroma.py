"""A tiny Chroma pipeline (random weights) shaped like the real one, built offline.

Like Chroma1: a ChromaTransformer2DModel (FLUX.1-schnell's blocks without per-block modulation layers, which a
small "distilled guidance" approximator network replaces; no pooled text embedding, no guidance embedding) over
FLUX's 16-channel latents packed 2x2; the tiny FLUX VAE; T5 as the only text encoder; a FlowMatchEulerDiscrete
scheduler with FLUX.1-dev's resolution-dependent shift (the family shifts as any folder's scheduler says).
"""

from __future__ import annotations

from pathlib import Path

from ..tokenizer import build_t5_tokenizer
from . import _seeded, build_atomically
from .flux import LATENT_CHANNELS, T5_MAX_LENGTH, T5_WIDTH, matches, tiny_scheduler, tiny_t5, tiny_vae

FAMILY = "chroma"
COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
TINY_VERSION = 1
VARIANT = "base"  # Chroma has one architecture (Chroma1-Base, -HD and the flash variants share it)


def build(folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Build (or reuse, when complete) a tiny ChromaPipeline in `folder`; returns `folder`."""
    if variant not in (None, VARIANT):
        raise ValueError(f"No tiny Chroma variant {variant!r}; Chroma has one: {VARIANT!r} (or None).")
    folder = Path(folder)
    if matches(folder, FAMILY, COMPONENTS, TINY_VERSION, VARIANT):
        return folder

    def make(scratch: Path):
        from diffusers import ChromaPipeline, ChromaTransformer2DModel

        tokenizer = build_t5_tokenizer(scratch / "t5-src", max_length=T5_MAX_LENGTH)
        with _seeded(seed):
            transformer = ChromaTransformer2DModel(
                patch_size=1,  # packed 2x2 outside the model, as FLUX
                in_channels=4 * LATENT_CHANNELS,
                num_layers=1,
                num_single_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=T5_WIDTH,
                axes_dims_rope=[4, 6, 6],
                approximator_hidden_dim=32,
                approximator_layers=1,
                approximator_num_channels=16,
            )
            vae = tiny_vae()
            text_encoder = tiny_t5(tokenizer)
        return ChromaPipeline(
            transformer=transformer,
            scheduler=tiny_scheduler("dev"),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )

    marker = {"version": TINY_VERSION, "family": FAMILY, "variant": VARIANT, "seed": seed}
    return build_atomically(folder, marker, make)
