"""A tiny Stable Diffusion 1.x-style pipeline built offline from small configs (random weights).

It is saved with `StableDiffusionPipeline.save_pretrained`, so the engine loads it through the same
`from_pretrained(folder)` path as a real base model. Used by the demo run and the tests: it trains on a
2-core CPU at a few steps per second at 64 px.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .tokenizer import END_TOKEN, MODEL_MAX_LENGTH, START_TOKEN, VOCAB_SIZE, write_clip_tokenizer_files

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Bump when the configs below change, so that an existing folder of the old shape is rebuilt.
TINY_VERSION = 2
_MARKER = "tiny_pipeline.json"


def _is_complete(folder: Path) -> bool:
    marker = folder / _MARKER
    if not (folder / "model_index.json").is_file() or not marker.is_file():
        return False
    try:
        if json.loads(marker.read_text()).get("version") != TINY_VERSION:
            return False
    except (OSError, ValueError):
        return False
    return all((folder / name).is_dir() for name in COMPONENTS)


def build_tiny_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Build (or reuse, when already complete) a tiny SD 1.x pipeline in `folder`; returns `folder`.

    The folder appears complete or not at all: the pipeline is saved into a sibling temporary folder
    which is then renamed into place.
    """
    folder = Path(folder)
    if _is_complete(folder):
        return folder

    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_clip_tokenizer_files(scratch / "tokenizer-src")
        tokenizer = CLIPTokenizer.from_pretrained(str(scratch / "tokenizer-src"))
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            unet = UNet2DConditionModel(
                block_out_channels=(32, 64),
                layers_per_block=2,
                sample_size=32,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
                norm_num_groups=32,
            )
            vae = AutoencoderKL(
                block_out_channels=[32, 64],
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
                latent_channels=4,
                norm_num_groups=32,
                sample_size=64,
            )
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=VOCAB_SIZE,
                    hidden_size=32,
                    intermediate_size=37,
                    num_hidden_layers=5,
                    num_attention_heads=4,
                    max_position_embeddings=MODEL_MAX_LENGTH,
                    projection_dim=32,
                    bos_token_id=tokenizer.convert_tokens_to_ids(START_TOKEN),
                    eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
                    pad_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
                )
            )
        finally:
            torch.random.set_rng_state(generator_state)
        scheduler = DDPMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            prediction_type="epsilon",
            steps_offset=1,
        )
        pipeline = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        target = scratch / "pipeline"
        pipeline.save_pretrained(str(target), safe_serialization=True)
        (target / _MARKER).write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
        if folder.exists():  # an incomplete or outdated earlier attempt
            shutil.rmtree(folder)
        os.replace(target, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
