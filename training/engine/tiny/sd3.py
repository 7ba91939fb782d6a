"""A tiny Stable Diffusion 3.5 pipeline (random weights) shaped like the real one, built offline.

Like SD3.5: an MMDiT (SD3Transformer2DModel, patch 2, RMS q/k norms; the "medium" variant adds MMDiT-X's second
attention in its first block) over 16-channel latents of a VAE with SD3's shift and scaling factors and an 8x
downscale; two CLIP text encoders with projections (CLIP-L and CLIP-G, here of different widths so that their
concatenation is exercised) and a T5 encoder wider than both together (the CLIP states are zero-padded to its
width); the FlowMatchEulerDiscreteScheduler with SD3.5's static shift of 3.0.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tokenizer import END_TOKEN, MODEL_MAX_LENGTH, START_TOKEN, VOCAB_SIZE, build_t5_tokenizer
from . import _seeded, build_atomically, clip_tokenizer, is_built, tiny_latent16_vae

FAMILY = "sd3"
COMPONENTS = (
    "transformer",
    "vae",
    "scheduler",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
)
VARIANTS = ("large", "medium")  # None is "large"
TINY_VERSION = 1
_MARKER = "tiny_pipeline.json"

CLIP_L_WIDTH = 8  # real: 768
CLIP_G_WIDTH = 16  # real: 1280
T5_WIDTH = 64  # real: 4096; must be >= CLIP_L_WIDTH + CLIP_G_WIDTH
T5_MAX_LENGTH = 256  # the pipeline's default max_sequence_length
LATENT_CHANNELS = 16


def _clip_config(tokenizer, width: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=width,
        bos_token_id=tokenizer.convert_tokens_to_ids(START_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
        pad_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
    )


def _matches(folder: Path, variant: str) -> bool:
    if not is_built(folder, COMPONENTS, TINY_VERSION, FAMILY):
        return False
    try:
        return json.loads((folder / _MARKER).read_text()).get("variant") == variant
    except (OSError, ValueError):
        return False


def build(folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Build (or reuse, when complete) a tiny StableDiffusion3Pipeline in `folder`; returns `folder`.
    variant: "large" (the default: SD3.5 Large's block layout) or "medium" (MMDiT-X dual attention)."""
    variant = variant or "large"
    if variant not in VARIANTS:
        raise ValueError(f"No tiny SD3 variant {variant!r}; known: {', '.join(VARIANTS)}.")
    folder = Path(folder)
    if _matches(folder, variant):
        return folder

    def make(scratch: Path):
        from diffusers import (
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
            StableDiffusion3Pipeline,
        )
        from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

        tokenizer = clip_tokenizer(scratch)
        t5_tokenizer = build_t5_tokenizer(scratch / "t5-src", max_length=T5_MAX_LENGTH)
        with _seeded(seed):
            transformer = SD3Transformer2DModel(
                sample_size=32,
                patch_size=2,
                in_channels=LATENT_CHANNELS,
                out_channels=LATENT_CHANNELS,
                num_layers=2,
                attention_head_dim=8,
                num_attention_heads=4,
                caption_projection_dim=32,  # = the inner width, heads x head dim
                joint_attention_dim=T5_WIDTH,
                pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
                pos_embed_max_size=32,
                qk_norm="rms_norm",
                dual_attention_layers=(0,) if variant == "medium" else (),
            )
            vae = tiny_latent16_vae(scaling_factor=1.5305, shift_factor=0.0609)  # SD3.5's VAE
            text_encoder = CLIPTextModelWithProjection(_clip_config(tokenizer, CLIP_L_WIDTH))
            text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, CLIP_G_WIDTH))
            text_encoder_3 = T5EncoderModel(
                T5Config(
                    vocab_size=len(t5_tokenizer),
                    d_model=T5_WIDTH,
                    d_kv=16,
                    d_ff=96,
                    num_layers=2,
                    num_heads=4,
                    feed_forward_proj="gated-gelu",  # T5 v1.1, as SD3's T5-XXL
                    relative_attention_num_buckets=8,
                    pad_token_id=t5_tokenizer.pad_token_id,
                    eos_token_id=t5_tokenizer.eos_token_id,
                    decoder_start_token_id=t5_tokenizer.pad_token_id,
                )
            )
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer,
            text_encoder_3=text_encoder_3,
            tokenizer_3=t5_tokenizer,
        )

    marker = {"version": TINY_VERSION, "family": FAMILY, "variant": variant, "seed": seed}
    return build_atomically(folder, marker, make)
