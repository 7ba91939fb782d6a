"""Tiny pipelines of every trained family, built offline from small configs (random weights).

This module holds Stable Diffusion 1.x and SDXL; each other family's builder is `tiny/<family>.py`, exposing
`build(folder, *, seed=0, variant=None) -> Path` (use `build_tiny(family, folder)`). They are saved with the
pipeline's `save_pretrained`, so the engine loads them through the same
`from_pretrained(folder)` path as a real base model. Used by the demo run and the tests: they train on a
2-core CPU at a few steps per second at 64 px.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from ..tokenizer import END_TOKEN, MODEL_MAX_LENGTH, START_TOKEN, VOCAB_SIZE, write_clip_tokenizer_files

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = (*COMPONENTS, "text_encoder_2", "tokenizer_2")
# Bump when the configs below change, so that an existing folder of the old shape is rebuilt.
TINY_VERSION = 2
TINY_SDXL_VERSION = 1
_MARKER = "tiny_pipeline.json"
TEXT_HIDDEN_SIZE = 32  # of each tiny text encoder; SDXL's UNet attends to both: 2 * 32
TIME_EMBED_DIM = 8  # SDXL's addition_time_embed_dim; six time ids (original size, crop, target size)


def _is_complete(folder: Path, components: tuple[str, ...], version: int, family: str) -> bool:
    marker = folder / _MARKER
    if not (folder / "model_index.json").is_file() or not marker.is_file():
        return False
    try:
        written = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if written.get("version") != version or written.get("family", "sd") != family:
        return False
    return all((folder / name).is_dir() for name in components)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch for the random initialisations inside, leaving the caller's RNG state as it was."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _tiny_vae(**overrides):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        **overrides,
    )


def tiny_latent16_vae(*, scaling_factor: float, shift_factor: float):
    """The 16-channel, 8x-downscaling VAE of FLUX.1, SD3 and Z-Image in miniature (no quant convs), with the real
    model's shift and scaling factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def _tiny_text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=32,
        bos_token_id=tokenizer.convert_tokens_to_ids(START_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
        pad_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
    )


def build_atomically(folder: Path, marker: dict, make_pipeline) -> Path:
    """Save `make_pipeline(scratch)` into `folder` with `marker` (version, family, seed...); the folder appears
    complete or not at all: the pipeline is saved into a sibling temporary folder which is then renamed into
    place. `scratch` is a temporary folder the maker may write tokenizer files into (and load them from)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        scratch.mkdir()
        pipeline = make_pipeline(scratch)
        target = scratch / "pipeline"
        pipeline.save_pretrained(str(target), safe_serialization=True)
        (target / _MARKER).write_text(json.dumps(marker))
        if folder.exists():  # an incomplete or outdated earlier attempt
            shutil.rmtree(folder)
        os.replace(target, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def is_built(folder: Path, components: tuple[str, ...], version: int, family: str) -> bool:
    """Whether `folder` holds a complete tiny pipeline of `family` at `version` (no model library import)."""
    return _is_complete(Path(folder), components, version, family)


def clip_tokenizer(scratch: Path):
    """The CLIP tokenizer rebuilt from open_clip's vocabulary, loaded from files under `scratch`."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(scratch / "tokenizer-src")
    return CLIPTokenizer.from_pretrained(str(scratch / "tokenizer-src"))


def _build_atomically(folder: Path, marker: dict, make_pipeline) -> Path:
    """build_atomically with the CLIP tokenizer handed to `make_pipeline(tokenizer)` (SD and SDXL)."""
    return build_atomically(folder, marker, lambda scratch: make_pipeline(clip_tokenizer(scratch)))


def build_tiny(family: str, folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Build (or reuse) the tiny pipeline of `family` ("sd", "sdxl", or a module of this package) in `folder`."""
    import importlib

    if family == "sd":
        return build_tiny_pipeline(folder, seed=seed)
    if family == "sdxl":
        return build_tiny_sdxl_pipeline(folder, seed=seed)
    try:
        module = importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as error:
        raise ValueError(f"No tiny pipeline of the family {family!r}.") from error
    return module.build(folder, seed=seed, variant=variant)


def is_tiny_pipeline_built(folder: Path) -> bool:
    """Whether `folder` holds a complete tiny SD pipeline of the current shape (cheap: no model library import)."""
    return _is_complete(Path(folder), COMPONENTS, TINY_VERSION, "sd")


def build_tiny_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Build (or reuse, when already complete) a tiny SD 1.x pipeline in `folder`; returns `folder`.

    The folder appears complete or not at all: the pipeline is saved into a sibling temporary folder
    which is then renamed into place.
    """
    folder = Path(folder)
    if is_tiny_pipeline_built(folder):
        return folder

    def make(tokenizer):
        from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel

        with _seeded(seed):
            unet = UNet2DConditionModel(
                block_out_channels=(32, 64),
                layers_per_block=2,
                sample_size=32,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=TEXT_HIDDEN_SIZE,
                attention_head_dim=8,
                norm_num_groups=32,
            )
            vae = _tiny_vae()
            text_encoder = CLIPTextModel(_tiny_text_config(tokenizer))
        scheduler = DDPMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            prediction_type="epsilon",
            steps_offset=1,
        )
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    return _build_atomically(folder, {"version": TINY_VERSION, "seed": seed}, make)


def build_tiny_sdxl_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Build (or reuse, when already complete) a tiny SDXL pipeline in `folder`; returns `folder`.

    Shaped like SDXL base (the UNet of diffusers' own SDXL tests): two text encoders (a CLIPTextModel and a
    CLIPTextModelWithProjection) whose penultimate hidden states the UNet attends to side by side, a
    "text_time" added embedding of the pooled text embedding and the six size/crop ids, SDXL's VAE scaling
    factor and its Euler scheduler config. Both tokenizers are the CLIP tokenizer rebuilt from open_clip's
    vocabulary. Atomic like `build_tiny_pipeline`.
    """
    folder = Path(folder)
    if _is_complete(folder, SDXL_COMPONENTS, TINY_SDXL_VERSION, "sdxl"):
        return folder

    def make(tokenizer):
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        text_config = _tiny_text_config(tokenizer)
        with _seeded(seed):
            unet = UNet2DConditionModel(
                block_out_channels=(32, 64),
                layers_per_block=2,
                sample_size=32,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=TIME_EMBED_DIM,
                transformer_layers_per_block=(1, 2),
                projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + text_config.projection_dim,
                cross_attention_dim=2 * TEXT_HIDDEN_SIZE,
                norm_num_groups=32,
            )
            vae = _tiny_vae(scaling_factor=0.13025, force_upcast=True)
            text_encoder = CLIPTextModel(text_config)
            text_encoder_2 = CLIPTextModelWithProjection(text_config)
        scheduler = EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
            use_karras_sigmas=False,
        )
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )

    return _build_atomically(folder, {"version": TINY_SDXL_VERSION, "family": "sdxl", "seed": seed}, make)
