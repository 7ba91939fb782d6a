"""Qwen-Image in the training engine (training/engine/families/qwen_image.py) on CPU: a tiny Qwen-Image pipeline
built offline (training/engine/tiny/qwen_image.py) and the real photos of the `shard` fixture. No database, no
network."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from marketplace.core.photos import load_photo
from training.engine.families import ModelUnavailable, family_of_folder
from training.engine.families.qwen_image import QwenImageFamily
from training.engine.tiny import build_tiny
from training.engine.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a photo of a rocket"
LONG_PROMPT = "a long caption: a photo of a red rocket on a launch pad at night, under the stars"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny("qwen_image", tmp_path_factory.mktemp("tiny-qwen-image") / "qwen-image")


def _config(folder: Path, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(folder), resolution=64, batch_size=2, max_steps=8, learning_rate=1e-3, validation_steps=2
    )
    return TrainConfig(**{**values, **overrides})


def _loaded(folder: Path, **overrides) -> QwenImageFamily:
    family = family_of_folder(folder, str(folder))(folder, _config(folder, **overrides), CPU, torch.float32)
    family.load()
    return family


def _user_pipeline(folder: Path):
    from diffusers import QwenImagePipeline

    pipeline = QwenImagePipeline.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _photos(size=(64, 64)) -> torch.Tensor:
    """Two real photos as the loop hands them to encode_images: [2, 3, H, W] in [-1, 1]."""
    pixels = []
    for name in ("astronaut", "rocket"):
        image = load_photo(name).convert("RGB").resize(size)
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(pixels)


def test_the_tiny_folder_is_a_qwen_image_pipeline_built_once(tiny):
    assert json.loads((tiny / "model_index.json").read_text())["_class_name"] == "QwenImagePipeline"
    assert family_of_folder(tiny, "qwen") is QwenImageFamily
    assert build_tiny("qwen_image", tiny) == tiny  # complete: reused
    with pytest.raises(ValueError, match="variant"):
        build_tiny("qwen_image", tiny.parent / "other", variant="edit")
    family = _loaded(tiny)
    assert family.pixel_multiple == 16  # the VAE's 8x downscale times the 2x2 packing
    assert (family.default_validation_steps, family.default_validation_guidance) == (50, 4.0)


# --- latents, prompts and the transformer call match the diffusers pipeline


def test_latents_are_one_frame_normalised_by_the_vaes_channel_statistics(tiny):
    family = _loaded(tiny)
    pixels = _photos((64, 48))  # 48 rows, 64 columns: not square, so rows and columns must not be swapped
    latents = family.encode_images(pixels)
    assert latents.shape == (2, 4, 6, 8)
    vae = _user_pipeline(tiny).vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert not torch.allclose(std, torch.ones_like(std))  # the statistics matter in the tiny VAE
    with torch.no_grad():
        expected = (vae.encode(pixels[:, :, None]).latent_dist.mode() - mean) / std
    assert torch.allclose(latents, expected[:, :, 0], atol=1e-5)


def test_prompts_keep_their_own_tokens_and_a_batch_masks_its_padding(tiny):
    family = _loaded(tiny)
    pipeline = _user_pipeline(tiny)
    texts = [PROMPT, LONG_PROMPT]
    expected, expected_mask = pipeline.encode_prompt(texts)
    items = family.encode_prompts(texts)
    lengths = [len(item["prompt_embeds"]) for item in items]
    assert lengths == expected_mask.sum(dim=1).tolist() and lengths[0] < lengths[1]
    for row, item in enumerate(items):
        assert torch.allclose(item["prompt_embeds"], expected[row, : lengths[row]], atol=1e-6)

    batch = family.collate_prompts(items)
    assert batch["prompt_embeds_mask"].tolist() == expected_mask.tolist()
    latents = family.encode_images(_photos())
    sigmas = torch.tensor([0.4, 0.4])
    with torch.no_grad():
        together = family.predict(latents, sigmas, batch, [])
        alone = [family.predict(latents[i : i + 1], sigmas[:1], family.collate_prompts([items[i]]), []) for i in (0, 1)]
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)  # the padding changes nothing


def test_the_transformer_call_matches_the_pipelines_first_step(tiny):
    from diffusers import QwenImagePipeline

    family = _loaded(tiny)
    prompt = family.collate_prompts(family.encode_prompts([PROMPT]))
    noise = torch.randn((1, 4, 6, 8), generator=torch.Generator().manual_seed(3))  # 48 x 64 px: not square
    packed_noise = QwenImagePipeline._pack_latents(noise, 1, 4, 6, 8)
    first_step = {}

    def keep_first(_, step, timestep, tensors):
        first_step.setdefault("latents", tensors["latents"].clone())
        return {}

    pipeline = _user_pipeline(tiny)
    pipeline(
        prompt_embeds=prompt["prompt_embeds"],
        prompt_embeds_mask=prompt["prompt_embeds_mask"],
        latents=packed_noise,
        height=48,
        width=64,
        num_inference_steps=3,
        true_cfg_scale=1.0,
        callback_on_step_end=keep_first,
        output_type="latent",
    )
    sigma, next_sigma = pipeline.scheduler.sigmas[:2]
    pipeline_velocity = (first_step["latents"] - packed_noise) / (next_sigma - sigma)
    with torch.no_grad():
        velocity = family.predict(noise, sigma.reshape(1), prompt, [])
    assert velocity.shape == noise.shape
    assert torch.allclose(QwenImagePipeline._pack_latents(velocity, 1, 4, 6, 8), pipeline_velocity, atol=1e-4)


def test_training_sigmas_follow_the_schedulers_resolution_dependent_shift(tiny):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    family = _loaded(tiny)
    scheduler = family.scheduler.config
    t = torch.tensor([0.25, 0.5, 0.75])
    large = torch.zeros(3, 4, 128, 128)  # 1024 px: 4096 tokens
    mu = calculate_shift(
        64 * 64,
        scheduler.base_image_seq_len,
        scheduler.max_image_seq_len,
        scheduler.base_shift,
        scheduler.max_shift,
    )
    assert torch.allclose(family.sigmas(t, large), np.exp(mu) / (np.exp(mu) + 1 / t - 1))
    assert (family.sigmas(t, large) > family.sigmas(t, torch.zeros(3, 4, 8, 8))).all()


def test_previews_from_cached_embeddings_match_the_pipeline_with_true_cfg(tiny):
    family = _loaded(tiny)
    prompt, negative = (family.collate_prompts([item]) for item in family.encode_prompts([PROMPT, ""]))
    family.release_text_encoders()  # previews run from the cached embeddings alone
    # A strong scale: the tiny model's prompts differ in a few tokens of a long template, so that CFG at 4 moves
    # its pixels by only about two 8-bit levels, hardly above the comparison's tolerance.
    scale = 20.0
    (preview,) = family.generate(
        family.pipeline(),
        prompt,
        negative,
        height=64,
        width=48,
        steps=3,
        guidance=scale,
        generator=torch.manual_seed(7),
    )
    pipeline = _user_pipeline(tiny)
    settings = dict(height=64, width=48, num_inference_steps=3)
    reference, unguided = (
        pipeline(
            prompt=PROMPT, negative_prompt="", true_cfg_scale=value, generator=torch.manual_seed(7), **settings
        ).images[0]
        for value in (scale, 1.0)
    )
    assert preview.size == reference.size == (48, 64)
    assert np.abs(np.asarray(preview, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1
    assert np.abs(np.asarray(unguided, dtype=int) - np.asarray(reference, dtype=int)).max() > 1  # CFG did act


# --- end to end through train()


def _image(pipeline) -> np.ndarray:
    output = pipeline(
        prompt=PROMPT,
        negative_prompt="",
        true_cfg_scale=QwenImageFamily.default_validation_guidance,
        height=64,
        width=64,
        num_inference_steps=3,
        generator=torch.manual_seed(0),
        output_type="np",
    )
    return output.images[0]


def test_a_run_lowers_the_held_out_loss_and_its_lora_loads_into_the_pipeline(tiny, shard, tmp_path):
    result = train(_config(tiny), [shard], tmp_path)
    assert result.family == "qwen_image"
    assert result.final_step == 8 and all(np.isfinite(result.losses))
    (first_step, first), *_, (last_step, last) = result.validation_losses
    assert first_step == 0 and last_step == 8 and last < first

    pipeline = _user_pipeline(tiny)
    before = _image(pipeline)
    pipeline.load_lora_weights(str(tmp_path))
    assert pipeline.get_list_adapters() == {"transformer": ["default_0"]}
    assert np.abs(_image(pipeline) - before).max() > 1e-3


def test_a_folder_without_its_vae_is_refused_by_name(tiny, shard, tmp_path):
    broken = tmp_path / "no-vae"
    shutil.copytree(tiny, broken, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(ModelUnavailable, match="base_model") as error:
        train(_config(broken), [shard], tmp_path / "out")
    assert "vae" in str(error.value) and "Qwen-Image" in str(error.value)
