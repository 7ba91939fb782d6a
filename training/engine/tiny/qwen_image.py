"""A tiny Qwen-Image pipeline (QwenImagePipeline), built offline with random weights.

Shaped like Qwen-Image: a Qwen2.5-VL text encoder (a tiny Qwen2_5_VLForConditionalGeneration, vision tower
included as the real checkpoint has one), AutoencoderKLQwenImage (a causal video VAE: a frame axis, 8x spatial
downscale, per-channel latents_mean / latents_std, set to non-trivial values so that a family which forgets to
normalise is caught), QwenImageTransformer2DModel (2x2 patches, no guidance embedding) and Qwen-Image's scheduler
config: dynamic shifting from 256 to 8192 image tokens (shift 0.5 to 0.9) and a terminal sigma of 0.02.
"""

from __future__ import annotations

from pathlib import Path

from . import _seeded, build_atomically, is_built

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
VERSION = 1
TEXT_HIDDEN_SIZE = 16
Z_DIM = 4  # Qwen-Image's VAE has 16 latent channels
LATENTS_MEAN = [0.25, -0.5, 0.1, 0.75]
LATENTS_STD = [1.5, 0.8, 2.2, 1.1]


def build(folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Build (or reuse, when complete) the tiny Qwen-Image pipeline in `folder`. There are no variants."""
    if variant is not None:
        raise ValueError(f"The tiny Qwen-Image pipeline has no variant {variant!r}.")
    folder = Path(folder)
    if is_built(folder, COMPONENTS, VERSION, "qwen_image"):
        return folder

    def make(scratch: Path):
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            QwenImagePipeline,
            QwenImageTransformer2DModel,
        )
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        from ..tokenizer import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer(scratch / "tokenizer-src", max_length=1024)
        token_id = tokenizer.convert_tokens_to_ids
        with _seeded(seed):
            text_encoder = Qwen2_5_VLForConditionalGeneration(
                Qwen2_5_VLConfig(
                    text_config={
                        "vocab_size": len(tokenizer),
                        "hidden_size": TEXT_HIDDEN_SIZE,
                        "intermediate_size": 32,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 2,
                        "num_key_value_heads": 2,
                        "max_position_embeddings": 2048,
                        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                        "rope_theta": 1000000.0,
                        "bos_token_id": tokenizer.pad_token_id,  # <|endoftext|>, as in Qwen2.5
                        "pad_token_id": tokenizer.pad_token_id,
                        "eos_token_id": tokenizer.eos_token_id,
                    },
                    vision_config={
                        "depth": 1,
                        "hidden_size": 16,
                        "intermediate_size": 16,
                        "num_heads": 2,
                        "out_hidden_size": TEXT_HIDDEN_SIZE,
                    },
                    image_token_id=token_id("<|image_pad|>"),
                    vision_start_token_id=token_id("<|vision_start|>"),
                    vision_end_token_id=token_id("<|vision_end|>"),
                )
            ).eval()
            vae = AutoencoderKLQwenImage(
                base_dim=16,
                z_dim=Z_DIM,
                dim_mult=[1, 2, 2, 2],
                num_res_blocks=1,
                temperal_downsample=[False, True, True],
                latents_mean=LATENTS_MEAN,
                latents_std=LATENTS_STD,
            )
            transformer = QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=4 * Z_DIM,
                out_channels=Z_DIM,
                num_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=TEXT_HIDDEN_SIZE,
                guidance_embeds=False,
                axes_dims_rope=(8, 4, 4),
            )
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=0.9,
            base_image_seq_len=256,
            max_image_seq_len=8192,
            shift_terminal=0.02,
            time_shift_type="exponential",
        )
        return QwenImagePipeline(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
        )

    return build_atomically(folder, {"version": VERSION, "family": "qwen_image", "seed": seed}, make)
