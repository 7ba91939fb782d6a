"""A tiny FLUX.2 [klein] pipeline (Flux2KleinPipeline), built offline with random weights.

Shaped like FLUX.2 klein: a Qwen3 causal LM whose hidden states after layers 9, 18 and 27 (the pipeline's
default `text_encoder_out_layers`) are stacked into the prompt embedding, so the pipeline works on it with its
defaults; AutoencoderKLFlux2 with an 8x downscale and batch-norm statistics over its 2x2-patchified latents (set
to non-trivial values, so that a family which forgets to normalise is caught); Flux2Transformer2DModel without
a guidance embedding (klein has none: the base model uses true CFG, the distilled one no guidance); and the
klein scheduler config (dynamic shifting; the pipeline computes its own mu). `variant="distilled"` builds the
step-distilled flavour (`is_distilled` in model_index.json), otherwise the base model.
"""

from __future__ import annotations

from pathlib import Path

from ..families.flux2 import is_distilled
from . import _seeded, build_atomically, is_built

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
VERSION = 1
VARIANTS = (None, "base", "distilled")
TEXT_HIDDEN_SIZE = 16
TEXT_LAYERS = 27  # hidden_states[27] is the last one the pipeline stacks (9, 18, 27)
LATENT_CHANNELS = 4  # FLUX.2's VAE has 32; the transformer sees 4x as many after the 2x2 patchify


def build(folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Build (or reuse, when complete and of the same variant) the tiny klein pipeline in `folder`."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown FLUX.2 klein variant {variant!r}; known: base, distilled.")
    folder = Path(folder)
    distilled = variant == "distilled"
    if is_built(folder, COMPONENTS, VERSION, "flux2") and is_distilled(folder) == distilled:
        return folder

    def make(scratch: Path):
        import torch
        from diffusers import (
            AutoencoderKLFlux2,
            FlowMatchEulerDiscreteScheduler,
            Flux2KleinPipeline,
            Flux2Transformer2DModel,
        )
        from transformers import Qwen3Config, Qwen3ForCausalLM

        from ..tokenizer import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer(scratch / "tokenizer-src")
        with _seeded(seed):
            text_encoder = Qwen3ForCausalLM(
                Qwen3Config(
                    vocab_size=len(tokenizer),
                    hidden_size=TEXT_HIDDEN_SIZE,
                    intermediate_size=32,
                    num_hidden_layers=TEXT_LAYERS,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    head_dim=8,
                    max_position_embeddings=512,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    tie_word_embeddings=True,
                )
            ).eval()
            vae = AutoencoderKLFlux2(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(8, 16, 16, 16),
                layers_per_block=1,
                latent_channels=LATENT_CHANNELS,
                norm_num_groups=4,
                sample_size=64,
            )
            patched_channels = 4 * LATENT_CHANNELS
            # As if measured on real images: the pipeline un-normalises by these before decoding.
            vae.bn.running_mean.copy_(0.5 * torch.randn(patched_channels))
            vae.bn.running_var.copy_(torch.empty(patched_channels).uniform_(0.25, 4.0))
            transformer = Flux2Transformer2DModel(
                patch_size=1,
                in_channels=patched_channels,
                num_layers=1,
                num_single_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=3 * TEXT_HIDDEN_SIZE,
                timestep_guidance_channels=32,
                axes_dims_rope=(4, 4, 4, 4),
                guidance_embeds=False,
            )
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
            time_shift_type="exponential",
        )
        return Flux2KleinPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            is_distilled=distilled,
        )

    marker = {"version": VERSION, "family": "flux2", "seed": seed, "variant": "distilled" if distilled else "base"}
    return build_atomically(folder, marker, make)
