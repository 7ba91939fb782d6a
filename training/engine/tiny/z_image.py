"""A tiny Z-Image pipeline (random weights) shaped like the real one, built offline.

Like Z-Image: the single-stream ZImageTransformer2DModel (noise and context refiner blocks, then joint layers,
3-axis RoPE) over 16-channel latents of a FLUX-style VAE (its shift and scaling factors, 8x downscale, no quant
convs); a Qwen3 text encoder (Qwen3Model, whose second-to-last hidden states are the caption features) with a
Qwen2 tokenizer carrying Qwen's chat template; the FlowMatchEulerDiscreteScheduler with Z-Image-Turbo's static
shift of 3.0.
"""

from __future__ import annotations

from pathlib import Path

from ..tokenizer import build_qwen_tokenizer
from . import _seeded, build_atomically, is_built, tiny_latent16_vae

FAMILY = "z_image"
COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
TINY_VERSION = 1
TEXT_WIDTH = 32  # the Qwen3 hidden size = the transformer's cap_feat_dim (real: 2560)
LATENT_CHANNELS = 16


def build(folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Build (or reuse, when complete) a tiny ZImagePipeline in `folder`; returns `folder`. No variants."""
    if variant is not None:
        raise ValueError(f"The tiny Z-Image pipeline has no variants (got {variant!r}).")
    folder = Path(folder)
    if is_built(folder, COMPONENTS, TINY_VERSION, FAMILY):
        return folder

    def make(scratch: Path):
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
        from transformers import Qwen3Config, Qwen3Model

        tokenizer = build_qwen_tokenizer(scratch / "qwen-src", max_length=512)
        with _seeded(seed):
            transformer = ZImageTransformer2DModel(
                all_patch_size=(2,),
                all_f_patch_size=(1,),
                in_channels=LATENT_CHANNELS,
                dim=32,
                n_layers=2,
                n_refiner_layers=1,
                n_heads=2,
                n_kv_heads=2,
                qk_norm=True,
                cap_feat_dim=TEXT_WIDTH,
                rope_theta=256.0,
                t_scale=1000.0,
                axes_dims=[8, 4, 4],  # sums to the head width, 32 / 2
                axes_lens=[1024, 64, 64],  # caption positions (up to 512 tokens) come first on axis 0
            )
            vae = tiny_latent16_vae(scaling_factor=0.3611, shift_factor=0.1159)  # the FLUX VAE's, which Z-Image uses
            text_encoder = Qwen3Model(
                Qwen3Config(
                    vocab_size=len(tokenizer),
                    hidden_size=TEXT_WIDTH,
                    intermediate_size=64,
                    num_hidden_layers=3,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    head_dim=16,
                    max_position_embeddings=512,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
        return ZImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )

    return build_atomically(folder, {"version": TINY_VERSION, "family": FAMILY, "seed": seed}, make)
