"""SDXL in the Django-free training engine (training/engine/) on CPU: a tiny SDXL pipeline built offline
(two text encoders, the "text_time" added conditions) and the real photos of the `shard` fixture. No database,
no network."""

import io
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from training.engine.families.sd import StableDiffusionXLFamily
from training.engine.tiny import build_tiny_sdxl_pipeline
from training.engine.train import Callbacks, ModelUnavailable, TrainConfig, _cover_crop, _Run, train

# diffusers' DPM-Solver builds its sigmas with a NumPy 2 copy-keyword deprecation: not ours.
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

PROMPT = "a photo of a cat"


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl")


def _config(base: Path, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(base),
        resolution=64,
        batch_size=2,
        max_steps=6,
        learning_rate=1e-3,
        checkpoint_every=2,
        validation_prompts=(PROMPT,),
        validation_steps=2,
    )
    return TrainConfig(**{**values, **overrides})


def _lora(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "pytorch_lora_weights.safetensors"))


def _pipeline(base: Path):
    """The base pipeline as a user loads it (the engine's previews use its own scheduler too)."""
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(str(base))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipeline, seed: int) -> torch.Tensor:
    """One image as the engine's previews make it (at the family's default guidance)."""
    generator = torch.Generator().manual_seed(seed)
    output = pipeline(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=StableDiffusionXLFamily.default_validation_guidance,
        generator=generator,
        output_type="np",
    )
    return torch.from_numpy(output.images[0])


def test_sdxl_run_writes_a_lora_that_loads_and_changes_the_output(tiny_sdxl, shard, tmp_path):
    index = json.loads((tiny_sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    started = time.perf_counter()
    assert build_tiny_sdxl_pipeline(tiny_sdxl) == tiny_sdxl  # complete: reused, not rebuilt
    assert time.perf_counter() - started < 1
    validations, logs = [], []
    callbacks = Callbacks(on_validation=lambda step, images: validations.append((step, images)), log=logs.append)
    config = _config(tiny_sdxl, alpha=8)
    result = train(config, [shard], tmp_path / "run", callbacks=callbacks)

    assert result.final_step == 6 and not result.stopped
    assert len(result.losses) == 6 and all(math.isfinite(loss) and loss > 0 for loss in result.losses)
    assert max(result.usage.values()) - min(result.usage.values()) <= 1
    assert result.family == "sdxl" and any("(Stable Diffusion XL)" in line for line in logs)
    assert result.sample_grid_path == tmp_path / "run" / "samples.png"
    with Image.open(result.sample_grid_path) as grid:
        assert grid.size == (2 * 64, 2 * 64)  # prompts: PROMPT and the held-out caption; base | LoRA
    weights = _lora(tmp_path / "run")
    assert weights and all(name.startswith("unet.") for name in weights)

    pipeline = _pipeline(tiny_sdxl)
    before = _generate(pipeline, 0)
    pipeline.load_lora_weights(str(result.lora_path.parent))
    assert pipeline.get_list_adapters() == {"unet": ["default_0"]}
    after = _generate(pipeline, 0)
    assert not torch.allclose(before, after, atol=1e-4)
    # The loaded pipeline reproduces the engine's own final validation image (alpha 8 != rank 16 included).
    engine_image = torch.from_numpy(np.asarray(validations[-1][1][0], dtype=np.float32) / 255)
    assert (_generate(pipeline, config.seed) - engine_image).abs().max() < 2 / 255


def test_sdxl_time_ids_are_each_images_size_and_crop(tiny_sdxl, shard):
    run = _Run(_config(tiny_sdxl), [shard], Path("/nonexistent"), None)
    run.setup()
    cropped = 0
    for sample, bucket, geometry in zip(run.samples, run.sample_bucket, run.sample_geometry, strict=True):
        with Image.open(io.BytesIO(sample.image_bytes)) as image:
            image.load()
        (original_height, original_width), (top, left), (target_height, target_width) = (
            geometry.original,
            geometry.crop_top_left,
            geometry.target,
        )
        assert (original_width, original_height) == image.size
        assert (target_width, target_height) == bucket
        # The crop's top-left corner is where the cover-crop that made the cached latent cut the resized image.
        scale = max(bucket[0] / image.width, bucket[1] / image.height)
        resized = image.convert("RGB").resize(
            (max(bucket[0], round(image.width * scale)), max(bucket[1], round(image.height * scale))),
            Image.Resampling.BICUBIC,
        )
        expected = resized.crop((left, top, left + bucket[0], top + bucket[1]))
        assert np.array_equal(np.asarray(_cover_crop(image, bucket)), np.asarray(expected)), sample.key
        cropped += (top, left) != (0, 0)
    assert cropped  # the photos' aspect ratios differ from their buckets': some crops are off the corner


@pytest.fixture(scope="module")
def uninterrupted(tiny_sdxl, shard, tmp_path_factory):
    """Reference runs, one without and one with the text encoders' LoRA."""
    runs = {}
    for train_text_encoder in (False, True):
        output = tmp_path_factory.mktemp(f"sdxl-reference-{train_text_encoder}")
        result = train(_config(tiny_sdxl, train_text_encoder=train_text_encoder), [shard], output)
        runs[train_text_encoder] = result, _lora(output)
    return runs


@pytest.mark.parametrize("train_text_encoder", [False, True], ids=["unet", "unet+text-encoders"])
def test_sdxl_resume_after_cancel_matches_an_uninterrupted_run(
    tiny_sdxl, shard, tmp_path, uninterrupted, train_text_encoder
):
    config = _config(tiny_sdxl, train_text_encoder=train_text_encoder)
    seen = []
    stop_after = Callbacks(on_step=lambda step, *_: seen.append(step), should_stop=lambda: len(seen) >= 3)
    stopped = train(config, [shard], tmp_path, callbacks=stop_after)
    assert stopped.stopped and stopped.final_step == 3 and stopped.lora_path is None
    checkpoint = load_file(str(tmp_path / "checkpoints" / "checkpoint-00000003" / "lora.safetensors"))
    assert any(name.startswith("text_encoder_2.") for name in checkpoint) == train_text_encoder

    logs = []
    resumed = train(config, [shard], tmp_path, callbacks=Callbacks(log=logs.append))
    assert not resumed.stopped
    assert any("Resumed from checkpoint-00000003" in line for line in logs)
    assert any("Reused" in line and "latents" in line for line in logs)  # the cache is not recomputed
    reference, reference_weights = uninterrupted[train_text_encoder]
    assert resumed.final_step == reference.final_step == 6
    assert resumed.usage == reference.usage
    assert resumed.losses == pytest.approx(reference.losses, abs=1e-6)
    weights = _lora(tmp_path)
    assert set(weights) == set(reference_weights)
    for name, tensor in weights.items():
        assert torch.allclose(tensor, reference_weights[name], rtol=0, atol=1e-6), name


def test_sdxl_text_encoder_lora_covers_both_text_encoders(tiny_sdxl, shard, tmp_path):
    config = _config(tiny_sdxl, max_steps=2, train_text_encoder=True, gradient_checkpointing=True, snr_gamma=None)
    result = train(config, [shard], tmp_path)
    assert result.final_step == 2
    weights = _lora(tmp_path)
    for prefix in ("unet.", "text_encoder.", "text_encoder_2."):
        assert any(name.startswith(prefix) for name in weights), prefix
    pipeline = _pipeline(tiny_sdxl)
    pipeline.load_lora_weights(str(tmp_path))
    assert pipeline.get_list_adapters() == {
        "unet": ["default_0"],
        "text_encoder": ["default_0"],
        "text_encoder_2": ["default_0"],
    }


def test_an_sdxl_folder_without_its_second_text_encoder_is_refused(tiny_sdxl, shard, tmp_path):
    broken = tmp_path / "broken-sdxl"
    shutil.copytree(tiny_sdxl, broken, ignore=shutil.ignore_patterns("text_encoder_2"))
    with pytest.raises(ModelUnavailable, match="base_model") as error:
        train(_config(broken), [shard], tmp_path / "out")
    assert str(broken) in str(error.value) and "text_encoder_2" in str(error.value)
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()
