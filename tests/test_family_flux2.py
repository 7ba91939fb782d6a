"""FLUX.2 [klein] in the training engine (training/engine/families/flux2.py) on CPU: tiny klein pipelines built
offline (training/engine/tiny/flux2.py) and the real photos of the `shard` fixture. No database, no network."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from marketplace.core.photos import load_photo
from training.engine.families import ModelUnavailable, family_of_folder
from training.engine.families.flux2 import TEXT_ENCODER_OUT_LAYERS, Flux2Family
from training.engine.tiny import build_tiny
from training.engine.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a photo of a rocket"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """variant -> tiny klein pipeline folder: "base" (true CFG) and "distilled" (step-distilled, no guidance)."""
    root = tmp_path_factory.mktemp("tiny-flux2")
    return {
        "base": build_tiny("flux2", root / "base"),
        "distilled": build_tiny("flux2", root / "distilled", variant="distilled"),
    }


def _config(folder: Path, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(folder), resolution=64, batch_size=2, max_steps=8, learning_rate=1e-3, validation_steps=2
    )
    return TrainConfig(**{**values, **overrides})


def _loaded(folder: Path, **overrides) -> Flux2Family:
    family = family_of_folder(folder, str(folder))(folder, _config(folder, **overrides), CPU, torch.float32)
    family.load()
    return family


def _user_pipeline(folder: Path):
    from diffusers import Flux2KleinPipeline

    pipeline = Flux2KleinPipeline.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _photos(size=(64, 64)) -> torch.Tensor:
    """Two real photos as the loop hands them to encode_images: [2, 3, H, W] in [-1, 1]."""
    pixels = []
    for name in ("astronaut", "rocket"):
        image = load_photo(name).convert("RGB").resize(size)
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(pixels)


# --- the folder and its variants


def test_the_tiny_folders_are_klein_pipelines_of_both_variants(tiny):
    for variant, distilled in (("base", False), ("distilled", True)):
        index = json.loads((tiny[variant] / "model_index.json").read_text())
        assert index["_class_name"] == "Flux2KleinPipeline" and index["is_distilled"] is distilled
        assert family_of_folder(tiny[variant], "klein") is Flux2Family
    assert build_tiny("flux2", tiny["base"]) == tiny["base"]  # complete: reused
    with pytest.raises(ValueError, match="variant"):
        build_tiny("flux2", tiny["base"].parent / "other", variant="dev")
    # The previews' defaults are known before load(): the base model card's 50 steps at CFG 4, distilled 4 steps.
    base = Flux2Family(tiny["base"], _config(tiny["base"]), CPU, torch.float32)
    distilled = Flux2Family(tiny["distilled"], _config(tiny["distilled"]), CPU, torch.float32)
    assert (base.default_validation_steps, base.default_validation_guidance) == (50, 4.0)
    assert (distilled.default_validation_steps, distilled.default_validation_guidance) == (4, 1.0)


def test_loading_sizes_lora_targets_to_the_transformer_and_refuses_a_short_text_encoder(tiny, tmp_path):
    family = _loaded(tiny["base"])
    assert family.pixel_multiple == 16  # 8x VAE, then the 2x2 patchify
    single = [name for name in family.lora_targets if name.startswith("single_transformer_blocks.")]
    assert single == [f"single_transformer_blocks.{i}.attn.to_out" for i in range(2)]

    short = tmp_path / "short"
    shutil.copytree(tiny["base"], short)
    config_path = short / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = max(TEXT_ENCODER_OUT_LAYERS) - 1
    config["layer_types"] = config["layer_types"][: config["num_hidden_layers"]]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelUnavailable, match="base_model") as error:
        _loaded(short)
    assert "text_encoder" in str(error.value) and "27" in str(error.value)


# --- latents, prompts and the transformer call match the diffusers pipeline


def test_latents_are_patchified_and_batch_normalised_as_the_pipeline_does(tiny):

    family = _loaded(tiny["base"])
    pixels = _photos((64, 48))  # 48 rows, 64 columns: not square, so rows and columns must not be swapped
    latents = family.encode_images(pixels)
    assert latents.shape == (2, 16, 3, 4)
    pipeline = _user_pipeline(tiny["base"])
    expected = torch.cat([pipeline._encode_vae_image(image[None], generator=None) for image in pixels])
    assert torch.allclose(latents, expected, atol=1e-5)
    # The statistics matter: the tiny VAE's are not the identity.
    assert not torch.allclose(pipeline.vae.bn.running_var, torch.ones_like(pipeline.vae.bn.running_var))


def test_prompt_embeddings_and_the_transformer_call_match_the_pipeline(tiny):
    family = _loaded(tiny["base"])
    pipeline = _user_pipeline(tiny["base"])
    expected, _ = pipeline.encode_prompt(PROMPT)
    (item,) = family.encode_prompts([PROMPT])
    assert item["prompt_embeds"].shape == (512, 48)  # 512 tokens, 3 layers x 16 features
    assert torch.allclose(item["prompt_embeds"], expected[0], atol=1e-6)

    # The pipeline's first Euler step from known noise gives its velocity; predict() must give the same.
    prompt = family.collate_prompts([item])
    noise = torch.randn((1, 16, 3, 4), generator=torch.Generator().manual_seed(3))  # 48 x 64 px: not square
    first_step = {}

    def keep_first(_, step, timestep, tensors):
        first_step.setdefault("latents", tensors["latents"].clone())
        return {}

    pipeline(
        prompt_embeds=prompt["prompt_embeds"],
        latents=noise,
        height=48,
        width=64,
        num_inference_steps=3,
        guidance_scale=1.0,
        callback_on_step_end=keep_first,
        output_type="latent",
    )
    sigma, next_sigma = pipeline.scheduler.sigmas[:2]
    packed_noise = noise.flatten(2).transpose(1, 2)
    pipeline_velocity = (first_step["latents"] - packed_noise) / (next_sigma - sigma)
    with torch.no_grad():
        velocity = family.predict(noise, sigma.reshape(1), prompt, [])
    assert velocity.shape == noise.shape
    assert torch.allclose(velocity.flatten(2).transpose(1, 2), pipeline_velocity, atol=1e-4)


def test_training_sigmas_follow_the_pipelines_empirical_shift(tiny):
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    family = _loaded(tiny["base"])
    t = torch.tensor([0.25, 0.5, 0.75])
    small, large = torch.zeros(3, 16, 4, 4), torch.zeros(3, 16, 32, 32)
    mu = compute_empirical_mu(32 * 32, 50)
    assert torch.allclose(family.sigmas(t, large), np.exp(mu) / (np.exp(mu) + 1 / t - 1))
    assert (family.sigmas(t, large) > family.sigmas(t, small)).all()  # more tokens: noisier
    fixed = _loaded(tiny["base"], timestep_shift=1.0)
    assert torch.allclose(fixed.sigmas(t, large), t)


def test_previews_from_cached_embeddings_match_the_pipeline_given_the_text(tiny):
    family = _loaded(tiny["base"])
    prompt, negative = (family.collate_prompts([item]) for item in family.encode_prompts([PROMPT, ""]))
    family.release_text_encoders()  # previews run from the cached embeddings alone
    (preview,) = family.generate(
        family.pipeline(), prompt, negative, height=64, width=48, steps=3, guidance=4.0, generator=torch.manual_seed(7)
    )
    pipeline = _user_pipeline(tiny["base"])
    settings = dict(height=64, width=48, num_inference_steps=3)
    reference, unguided = (
        pipeline(prompt=PROMPT, guidance_scale=scale, generator=torch.manual_seed(7), **settings).images[0]
        for scale in (4.0, 1.0)
    )
    assert preview.size == reference.size == (48, 64)
    assert np.abs(np.asarray(preview, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1
    assert np.abs(np.asarray(unguided, dtype=int) - np.asarray(reference, dtype=int)).max() > 1  # CFG did act


# --- end to end through train()


def _image(pipeline, guidance: float) -> np.ndarray:
    output = pipeline(
        prompt=PROMPT,
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=guidance,
        generator=torch.manual_seed(0),
        output_type="np",
    )
    return output.images[0]


@pytest.mark.parametrize("variant", ["base", "distilled"])
def test_a_run_lowers_the_held_out_loss_and_its_lora_loads_into_the_pipeline(tiny, shard, tmp_path, variant):
    result = train(_config(tiny[variant]), [shard], tmp_path)
    assert result.family == "flux2"
    assert result.final_step == 8 and all(np.isfinite(result.losses))
    (first_step, first), *_, (last_step, last) = result.validation_losses
    assert first_step == 0 and last_step == 8 and last < first

    pipeline = _user_pipeline(tiny[variant])
    guidance = Flux2Family(tiny[variant], _config(tiny[variant]), CPU, torch.float32).default_validation_guidance
    before = _image(pipeline, guidance)
    pipeline.load_lora_weights(str(tmp_path))
    assert pipeline.get_list_adapters() == {"transformer": ["default_0"]}
    assert np.abs(_image(pipeline, guidance) - before).max() > 1e-3


def test_a_folder_without_its_text_encoder_is_refused_by_name(tiny, shard, tmp_path):
    broken = tmp_path / "no-qwen3"
    shutil.copytree(tiny["base"], broken, ignore=shutil.ignore_patterns("text_encoder"))
    with pytest.raises(ModelUnavailable, match="base_model") as error:
        train(_config(broken), [shard], tmp_path / "out")
    assert "text_encoder" in str(error.value) and "FLUX.2" in str(error.value)
