"""A tiny FLUX.1 pipeline (random weights) shaped like the real ones, built offline.

Like FLUX.1: a FluxTransformer2DModel (double-stream then single-stream blocks, 3-axis RoPE) over 16-channel
latents packed 2x2 into 64-channel tokens, of a VAE with FLUX's shift and scaling factors and an 8x downscale
(no quant convs); CLIP-L (its pooled embedding) and T5 (its sequence) as text encoders; FluxPipeline's
FlowMatchEulerDiscreteScheduler. Variants as the two FLUX.1 releases differ: "schnell" (the default: no
guidance embedding, a static shift of 1.0, as FLUX.1-schnell's scheduler) and "dev" (guidance-distilled: a
guidance embedding, and the resolution-dependent shift of FLUX.1-dev's scheduler).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tokenizer import build_t5_tokenizer
from . import _seeded, _tiny_text_config, build_atomically, clip_tokenizer, is_built, tiny_latent16_vae

FAMILY = "flux"
COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
VARIANTS = ("schnell", "dev")  # None is "schnell"
TINY_VERSION = 1
_MARKER = "tiny_pipeline.json"

LATENT_CHANNELS = 16  # as FLUX.1's VAE; the transformer sees 4x as many per packed token
T5_WIDTH = 32  # real: 4096 (joint_attention_dim)
T5_MAX_LENGTH = 32  # real: 512; short, so the tiny transformer attends over few text tokens
SCHEDULER_SHIFT = {  # FLUX.1-schnell's and FLUX.1-dev's scheduler configs (besides num_train_timesteps=1000)
    "schnell": dict(shift=1.0, use_dynamic_shifting=False),
    "dev": dict(shift=3.0, use_dynamic_shifting=True),
}


def tiny_vae():
    """FLUX.1's VAE in miniature: 16 latent channels, 8x downscale, no quant convs, its shift/scaling factors."""

    return tiny_latent16_vae(scaling_factor=0.3611, shift_factor=0.1159)  # FLUX.1's VAE


def tiny_t5(tokenizer):
    """A T5 v1.1-style encoder (gated GELU) sized to the tokenizer's vocabulary."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=T5_WIDTH,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def tiny_scheduler(variant: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
        **SCHEDULER_SHIFT[variant],
    )


def matches(folder: Path, family: str, components: tuple[str, ...], version: int, variant: str) -> bool:
    """Whether `folder` holds a complete tiny pipeline of `family`, `version` and `variant`."""
    if not is_built(folder, components, version, family):
        return False
    try:
        return json.loads((Path(folder) / _MARKER).read_text()).get("variant") == variant
    except (OSError, ValueError):
        return False


def build(folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Build (or reuse, when complete) a tiny FluxPipeline in `folder`; returns `folder`.
    variant: "schnell" (the default) or "dev" (with FLUX.1-dev's guidance embedding and shift)."""
    variant = variant or "schnell"
    if variant not in VARIANTS:
        raise ValueError(f"No tiny FLUX.1 variant {variant!r}; known: {', '.join(VARIANTS)}.")
    folder = Path(folder)
    if matches(folder, FAMILY, COMPONENTS, TINY_VERSION, variant):
        return folder

    def make(scratch: Path):
        from diffusers import FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextModel

        tokenizer = clip_tokenizer(scratch)
        t5_tokenizer = build_t5_tokenizer(scratch / "t5-src", max_length=T5_MAX_LENGTH)
        clip_config = _tiny_text_config(tokenizer)
        with _seeded(seed):
            transformer = FluxTransformer2DModel(
                patch_size=1,  # FLUX packs 2x2 latent patches outside the model (FluxPipeline._pack_latents)
                in_channels=4 * LATENT_CHANNELS,
                num_layers=1,
                num_single_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=T5_WIDTH,
                pooled_projection_dim=clip_config.hidden_size,  # CLIPTextModel's pooler output
                guidance_embeds=variant == "dev",
                axes_dims_rope=[4, 6, 6],  # sums to attention_head_dim
            )
            vae = tiny_vae()
            text_encoder = CLIPTextModel(clip_config)
            text_encoder_2 = tiny_t5(t5_tokenizer)
        return FluxPipeline(
            transformer=transformer,
            scheduler=tiny_scheduler(variant),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=t5_tokenizer,
        )

    marker = {"version": TINY_VERSION, "family": FAMILY, "variant": variant, "seed": seed}
    return build_atomically(folder, marker, make)
